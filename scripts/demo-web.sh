#!/usr/bin/env bash
# beatleader's web demo: the dashboard (beatleader web) of 3 beat instances and 1 worker against a
# local ZooKeeper, on http://127.0.0.1:8642/; the leader is killed after 30 s. Installs what is
# missing first (scripts/install-deps.sh). Options go to scripts/demo_web.py, e.g.
# scripts/demo-web.sh --port 9000 --kill-leader-after 0, or --screenshots docs/img (then exits).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec python3 scripts/demo_web.py "$@"
