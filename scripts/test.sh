#!/usr/bin/env bash
# One command: install what is missing, start the services the tests need, run the test suite.
#   bash scripts/test.sh                 the whole suite
#   bash scripts/test.sh -m "not slow"   the quick subset
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
services_env=$(bash scripts/services.sh)  # an assignment, so a failure stops here (set -e)
eval "$services_env"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
[ $rc -eq 5 ] && { echo "no tests collected" >&2; exit 1; }
exit $rc
