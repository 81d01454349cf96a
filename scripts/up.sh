#!/usr/bin/env bash
# One command for a single machine: install what is missing, start Docker Engine, then run byoi with a local
# registry.
#   bash scripts/up.sh [byoi up options...]      (Ctrl-C stops byoi and its registry; Docker Engine keeps running)
# Docker Engine is started when it is installed and we are root; otherwise this stops at once with the exact
# command to run (scripts/start-docker.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/start-docker.sh
exec .venv/bin/byoi up "$@"
