#!/usr/bin/env bash
# Install what byoi and its tests need on Debian 12, skipping whatever is already there.
#   bash scripts/install.sh          system packages (as root), then .venv with byoi and its test tools
# Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# nginx-light: the forward-auth gateway the tests run (docs/nginx-forward-auth.conf); wrk: bench/proxy.py;
# busybox: the Kubernetes build Job's context fetch (sh, wget, tar as in the BuildKit image) run for real.
PACKAGES=(docker.io docker-registry debootstrap postgresql apache2-utils skopeo python3-venv chromium nginx-light wrk busybox)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: these Debian packages are missing and need root: ${missing[*]}" >&2
    exit 1
  fi
  echo "==> apt-get install ${missing[*]}"
  apt-get update -qq
  # No package may start its service on install (nginx would listen on 0.0.0.0:80): the tests start what they
  # need themselves, on 127.0.0.1. policy-rc.d answering 101 is Debian's way to say so.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.byoi-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> pip install -e .[test]"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi

# axe-core: the accessibility checker the console's browser tests inject into each page (tests/support/console.py).
# Pinned; installed from npm into tests/.node (untracked), never fetched at test time.
AXE_VERSION=4.10.3
if [ ! -f "tests/.node/node_modules/axe-core/axe.min.js" ] || ! grep -q "\"version\": \"$AXE_VERSION\"" tests/.node/node_modules/axe-core/package.json 2>/dev/null; then
  if command -v npm >/dev/null; then
    echo "==> npm install axe-core@$AXE_VERSION (tests/.node)"
    npm install --prefix tests/.node --no-audit --no-fund --silent "axe-core@$AXE_VERSION" >/dev/null
  else
    echo "install.sh: npm is missing: the console's accessibility checks will be skipped (apt-get install npm)" >&2
  fi
fi
