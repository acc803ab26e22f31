#!/usr/bin/env bash
# Set up a Linux host's worker as docs/operators.md §3 says, as root:
#   sudo scripts/install-worker.sh --ledger ssh://trainledger@pi/srv/trainledger/ledger.git
#       [--wheel trainledger-X-py3-none-any.whl | --package SPEC] [--extras train]
#       [--name NAME] [--user USER] [--key PATH] [--store URL] [--slots N]
#       [--prefix /opt/trainledger] [--state-dir DIR] [--unit-dir /etc/systemd/system]
#       [--python python3] [--no-start]
# - the account that runs the worker (USER, default trainledger; created when missing);
# - the code in a root-owned venv at --prefix, with the training extras;
# - the host's own ssh key (USER's ~/.ssh/trainledger unless --key), printed with the
#   one command that enrolls it on the Pi;
# - the capability self-test (refuses to install a host that cannot train);
# - the systemd unit, started unless --no-start.
# Idempotent: a second run changes nothing and says so. pip reads PIP_* variables.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# Each option's default may also come from the environment (TL_NAME, TL_PREFIX, ...),
# the names docs/operators.md uses.
name=${TL_NAME:-$(hostname -s)}; ledger=${TL_LEDGER:-}; store=${TL_STORE:-}
user=${TL_WORKER_USER:-trainledger}; key=""; package=""; extras=${TL_EXTRAS:-train}
slots=${TL_SLOTS:-1}; prefix=${TL_PREFIX:-/opt/trainledger}; state_dir=${TL_STATE_DIR:-}
unit_dir=${TL_UNIT_DIR:-/etc/systemd/system}; python=${TL_PYTHON:-python3}; start=${TL_START:-1}
while [ $# -gt 0 ]; do
  case "$1" in
    --ledger) ledger=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --key) key=$2; shift 2 ;;
    --wheel|--package) package=$2; shift 2 ;;
    --extras) extras=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --state-dir) state_dir=$2; shift 2 ;;
    --unit-dir) unit_dir=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    *) echo "install-worker: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$ledger" ] || { echo "install-worker: --ledger URL is required" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "install-worker: run as root (it installs root-owned code)" >&2; exit 2; }
[ -n "$package" ] || package=$here
[ -n "$state_dir" ] || state_dir=/var/lib/trainledger/worker-$name
say() { echo "install-worker: $*"; }

# 1. the account that runs the worker
if id -u "$user" >/dev/null 2>&1; then
  say "user $user exists"
else
  useradd --system --user-group --home-dir "/var/lib/$user" --create-home --shell /bin/sh "$user"
  say "created system user $user"
fi
home=$(getent passwd "$user" | cut -d: -f6)
as_user() { runuser -u "$user" -- env HOME="$home" PATH="$prefix/bin:/usr/local/bin:/usr/bin:/bin" "$@"; }
[ -n "$key" ] || key=$home/.ssh/trainledger

# 2. root-owned code with the training extras
if [ -x "$prefix/bin/python" ]; then
  say "venv $prefix exists"
else
  "$python" -m venv "$prefix"
  say "created venv $prefix (root-owned)"
fi
spec=$package; [ -n "$extras" ] && spec="$package[$extras]"
before=$("$prefix/bin/python" -m pip freeze --all 2>/dev/null | sha256sum)
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
version=$("$prefix/bin/python" -m pip show trainledger | sed -n 's/^Version: //p')
if [ "$before" = "$("$prefix/bin/python" -m pip freeze --all | sha256sum)" ]; then
  say "trainledger $version with extras [$extras] already installed in $prefix"
else
  say "installed trainledger $version with extras [$extras] into $prefix"
fi

# 3. the host's key: one per host, no passphrase (the worker runs unattended)
if [ -f "$key" ]; then
  say "key $key exists"
else
  as_user install -d -m 0700 "$(dirname "$key")"
  as_user ssh-keygen -q -t ed25519 -N '' -C "trainledger $name" -f "$key"
  say "created key $key"
fi

# 4. can this host train?
echo "== capability of $(hostname)"
as_user "$prefix/bin/worker" capability || {
  echo "install-worker: capability self-test failed; not installing" >&2; exit 1; }

# 5. the service
install -d -o "$user" -m 0755 "$state_dir"
store_arg=""; [ -n "$store" ] && store_arg="--store $store"
unit="$unit_dir/trainledger-worker.service"
template=$("$prefix/bin/python" -c 'from reconciler.rules.resources import resource_dir; print(resource_dir("systemd"))')
rendered=$(sed -e "s|%NAME%|$name|g" -e "s|%BIN%|$prefix/bin|g" -e "s|%USER%|$user|g" \
    -e "s|%LEDGER%|$ledger|g" -e "s|%STORE_ARG%|$store_arg|g" -e "s|%STATE_DIR%|$state_dir|g" \
    -e "s|%SLOTS%|$slots|g" -e "s|%GIT_SSH_COMMAND%|ssh -i $key -o IdentitiesOnly=yes|g" \
    "$template/trainledger-worker.service.in")
if [ -f "$unit" ] && [ "$(cat "$unit")" = "$rendered" ]; then
  say "unit $unit up to date"
else
  install -d "$unit_dir"
  printf '%s\n' "$rendered" > "$unit"
  say "wrote $unit"
fi

# the same command for a host without systemd (WSL2: a Scheduled Task runs it, as root)
launcher="$prefix/bin/trainledger-worker-start"
exec_start=$(printf '%s\n' "$rendered" | sed -n 's/^ExecStart=//p')
wanted=$(printf '%s\n' "#!/bin/sh" \
  "# Written by install-worker.sh: what trainledger-worker.service runs, for a host" \
  "# without systemd (WSL2, started at boot by a Scheduled Task). Run it as root." \
  "exec runuser -u $user -- env HOME=$home GIT_SSH_COMMAND=\"ssh -i $key -o IdentitiesOnly=yes\" $exec_start")
if [ -f "$launcher" ] && [ "$(cat "$launcher")" = "$wanted" ]; then
  say "launcher $launcher up to date"
else
  printf '%s\n' "$wanted" > "$launcher"
  chmod 0755 "$launcher"
  say "wrote $launcher"
fi

# 6. enrollment happens on the Pi: the key decides who this host is
say "enroll this host on the Pi (copy $key.pub there as $name.pub):"
echo "  sudo -u trainledger /opt/trainledger/bin/reconciler enroll $name --pubkey $name.pub \\"
echo "      --ledger /srv/trainledger/ledger.git --authorized-keys /srv/trainledger/.ssh/authorized_keys"
echo "  (the paths of docs/operators.md; use your Pi's)"
echo "  $(cat "$key.pub")"
if [ "$start" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now trainledger-worker.service
  systemctl try-restart trainledger-worker.service
  say "trainledger-worker.service enabled and running"
fi
