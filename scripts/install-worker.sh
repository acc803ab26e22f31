#!/usr/bin/env bash
# Install a trainledger worker as a systemd service on this Linux host.
#   scripts/install-worker.sh --ledger ssh://pi/srv/trainledger/ledger.git [--name NAME]
#       [--store ssh://pi/srv/trainledger/store] [--user USER] [--key ~/.ssh/trainledger]
#       [--unit-dir /etc/systemd/system] [--no-start]
# Prints the host's capability first and refuses to install when its self-test fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
name=$(hostname -s); ledger=""; store=""; user=$(id -un); key=""; unit_dir=/etc/systemd/system
start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --ledger) ledger=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --key) key=$2; shift 2 ;;
    --unit-dir) unit_dir=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    *) echo "install-worker: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$ledger" ] || { echo "install-worker: --ledger URL is required" >&2; exit 2; }
make -C "$here" venv >/dev/null
echo "== capability of $(hostname)"
"$here/.venv/bin/worker" capability || { echo "install-worker: capability self-test failed; not installing" >&2; exit 1; }
state_dir="/var/lib/trainledger/worker-$name"
mkdir -p "$state_dir" && chown "$user" "$state_dir"
ssh_cmd="ssh"
[ -n "$key" ] && ssh_cmd="ssh -i $key -o IdentitiesOnly=yes"
store_arg=""
[ -n "$store" ] && store_arg="--store $store"
unit="$unit_dir/trainledger-worker.service"
sed -e "s|%NAME%|$name|g" -e "s|%PREFIX%|$here|g" -e "s|%USER%|$user|g" \
    -e "s|%LEDGER%|$ledger|g" -e "s|%STORE_ARG%|$store_arg|g" -e "s|%STATE_DIR%|$state_dir|g" \
    -e "s|%GIT_SSH_COMMAND%|$ssh_cmd|g" \
    "$here/scripts/systemd/trainledger-worker.service.in" > "$unit"
echo "wrote $unit"
echo "enroll this host on the Pi with:  reconciler enroll $name --pubkey ${key:-~/.ssh/id_ed25519}.pub"
if [ "$start" = 1 ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
  systemctl enable --now trainledger-worker.service
  systemctl --no-pager status trainledger-worker.service | head -5
fi
