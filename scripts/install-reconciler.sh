#!/usr/bin/env bash
# Install the trainledger reconciler as a systemd service on the Pi.
#   scripts/install-reconciler.sh --ledger /srv/trainledger/ledger.git [--user trainledger]
#       [--unit-dir /etc/systemd/system] [--no-start]
# Creates the ledger with `reconciler init` when it does not exist yet.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ledger=""; user=$(id -un); unit_dir=/etc/systemd/system; start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --ledger) ledger=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --unit-dir) unit_dir=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    *) echo "install-reconciler: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$ledger" ] || { echo "install-reconciler: --ledger PATH is required" >&2; exit 2; }
make -C "$here" venv >/dev/null
echo "== capability of $(hostname)"
"$here/.venv/bin/worker" capability || { echo "install-reconciler: capability self-test failed" >&2; exit 1; }
if [ ! -e "$ledger/HEAD" ]; then
  "$here/.venv/bin/reconciler" init "$ledger"
fi
state_dir="/var/lib/trainledger/reconciler"
mkdir -p "$state_dir" && chown "$user" "$state_dir"
unit="$unit_dir/trainledger-reconciler.service"
sed -e "s|%PREFIX%|$here|g" -e "s|%USER%|$user|g" -e "s|%LEDGER%|$ledger|g" \
    -e "s|%STATE_DIR%|$state_dir|g" \
    "$here/scripts/systemd/trainledger-reconciler.service.in" > "$unit"
echo "wrote $unit"
if [ "$start" = 1 ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
  systemctl enable --now trainledger-reconciler.service
  systemctl --no-pager status trainledger-reconciler.service | head -5
fi
