#!/usr/bin/env bash
# One command for a single machine: install what is missing, then run byoi with a local registry.
#   bash scripts/up.sh [byoi up options...]      (Ctrl-C stops both)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/byoi up "$@"
