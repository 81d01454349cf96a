#!/usr/bin/env bash
# Make the Debian base image the test images build FROM (no public registry can be pulled from here):
#   debootstrap --variant=minbase --no-merged-usr bookworm DIR  ->  tar -C DIR -c . | docker import - TAG
# Idempotent: when the image already exists it is reused and nothing is rebuilt.
# Usage: scripts/make-base-image.sh [TAG]   (default byoi-test/debian:bookworm)
set -euo pipefail
TAG=${1:-${BYOI_BASE_IMAGE:-byoi-test/debian:bookworm}}
DOCKER=${DOCKER:-/usr/bin/docker}
[ -x "$DOCKER" ] || DOCKER=docker

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG already exists: reused ($("$DOCKER" image inspect -f '{{.Id}}' "$TAG"))"
  exit 0
fi

command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }

DIR=$(mktemp -d /tmp/byoi-debootstrap.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
echo "debootstrap bookworm into $DIR (minbase) ..."
# --no-merged-usr: with merged /usr debootstrap fails here with "file already exists".
debootstrap --variant=minbase --no-merged-usr bookworm "$DIR" >"$DIR.log" 2>&1 || {
  echo "debootstrap failed; last lines of $DIR.log:" >&2; tail -n 20 "$DIR.log" >&2; exit 1; }
rm -f "$DIR.log"
# Keep the image small and apt usable inside builds.
rm -rf "$DIR"/var/cache/apt/archives/*.deb "$DIR"/var/lib/apt/lists/*
tar -C "$DIR" -c . | "$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$TAG" >/dev/null
echo "base image $TAG created ($("$DOCKER" image inspect -f '{{.Id}}' "$TAG"))"
