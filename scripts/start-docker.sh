#!/usr/bin/env bash
# Make sure Docker Engine answers: the one place byoi's scripts start it (scripts/up.sh for a person,
# scripts/services.sh for the tests and CI).
#   bash scripts/start-docker.sh
# Exit 0 when Docker Engine answers: it was running already (nothing is started), or it was installed and not
# running and we are root, so it was started here and waited for. Otherwise exit 1 at once, saying the exact
# command that fixes it (install it, or start it as root). Exit 2 when dockerd was started but did not answer
# (its log says why). Messages go to stderr: stdout stays free for the callers' own output.
#
# Where it logs, and what it runs (the test suite sets these to exercise every path without touching the real
# daemon):
#   BYOI_DOCKERD_LOG   dockerd's log (default /var/log/byoi-dockerd.log)
#   BYOI_DOCKERD       the dockerd command (default: dockerd on PATH)
#   BYOI_DOCKER        the docker CLI that checks whether the Engine answers (default: docker on PATH)
#   BYOI_UID           the user id taken as ours (default: id -u; 0 is root)
#   BYOI_DOCKER_WAIT   seconds to wait for a started dockerd to answer (default 120)
set -euo pipefail

DOCKER=${BYOI_DOCKER:-docker}
DOCKERD=${BYOI_DOCKERD:-dockerd}
LOG=${BYOI_DOCKERD_LOG:-/var/log/byoi-dockerd.log}
UID_NOW=${BYOI_UID:-$(id -u)}
WAIT=${BYOI_DOCKER_WAIT:-120}
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

say() { echo "start-docker.sh: $*" >&2; }
answers() { "$DOCKER" info >/dev/null 2>&1; }
as_root() { if [ "$UID_NOW" = 0 ]; then echo "$*"; else echo "sudo $*"; fi; }

if answers; then
  say "Docker Engine is running (${DOCKER_HOST:-unix:///var/run/docker.sock}); nothing to start"
  exit 0
fi

# A DOCKER_HOST that is not this machine's default socket names an Engine this script cannot start.
if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != unix:///var/run/docker.sock ] && [ "$DOCKER_HOST" != unix:///run/docker.sock ]; then
  say "Docker Engine at DOCKER_HOST=$DOCKER_HOST does not answer: start it there, or run: unset DOCKER_HOST"
  exit 1
fi

if ! command -v "$DOCKERD" >/dev/null 2>&1; then
  say "Docker Engine is not installed. Run: $(as_root apt-get install docker.io)"
  exit 1
fi

if [ "$UID_NOW" != 0 ]; then
  if [ -d /run/systemd/system ]; then
    say "Docker Engine is installed but not running, and starting it needs root. Run: sudo systemctl start docker"
  else
    say "Docker Engine is installed but not running, and starting it needs root. Run: sudo bash $SELF"
  fi
  exit 1
fi

# Root, installed, not running. Under systemd, its docker service (unless a test names its own dockerd).
if [ -z "${BYOI_DOCKERD:-}" ] && [ -d /run/systemd/system ] && systemctl cat docker.service >/dev/null 2>&1; then
  say "starting Docker Engine: systemctl start docker (log: journalctl -u docker)"
  systemctl start docker
  for _ in $(seq 1 $((WAIT * 2))); do answers && { say "Docker Engine started"; exit 0; }; sleep 0.5; done
  say "Docker Engine did not answer within ${WAIT}s after systemctl start docker; see: journalctl -u docker"
  exit 2
fi

# Otherwise dockerd in its own session (a Ctrl-C in this terminal must not stop it), detached from this
# script's input and output, with its log in one known place.
mkdir -p "$(dirname "$LOG")"
say "starting Docker Engine (log: $LOG)"
setsid "$DOCKERD" >"$LOG" 2>&1 </dev/null &
pid=$!
deadline=$((SECONDS + WAIT))
until answers; do
  if ! kill -0 "$pid" 2>/dev/null; then
    say "dockerd exited before it answered; the end of $LOG:"
    tail -n 20 "$LOG" >&2 || true
    exit 2
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "dockerd (pid $pid) did not answer within ${WAIT}s; see $LOG"
    exit 2
  fi
  sleep 0.5
done
say "Docker Engine started (pid $pid, log: $LOG)"
