#!/usr/bin/env bash
# Set up the Pi as docs/operators.md §1 says, as root:
#   sudo scripts/install-reconciler.sh [--wheel trainledger-X-py3-none-any.whl | --package SPEC]
#       [--user trainledger] [--home /srv/trainledger] [--prefix /opt/trainledger]
#       [--hooks /etc/trainledger/hooks] [--state-dir /var/lib/trainledger/reconciler]
#       [--unit-dir /etc/systemd/system] [--python python3] [--no-start]
# - the dedicated user (a system account with a real shell, home --home);
# - the code in a root-owned venv at --prefix, runtime dependencies only (no
#   torch, no training extras: the Pi does not train);
# - the ledger (--home/ledger.git) and store (--home/store), created by that user;
# - the pre-receive hook in the root-owned --hooks dir, core.hooksPath pointing there,
#   the ledger's own copy removed;
# - the systemd unit, started unless --no-start.
# Idempotent: a second run changes nothing and says so. pip reads PIP_* variables
# (e.g. PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR for a Pi without internet).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# Each option's default may also come from the environment (TL_USER, TL_HOME, ...),
# the names docs/operators.md uses.
package=""; user=${TL_USER:-trainledger}; home=${TL_HOME:-/srv/trainledger}
prefix=${TL_PREFIX:-/opt/trainledger}; hooks=${TL_HOOKS:-/etc/trainledger/hooks}
state_dir=${TL_STATE_DIR:-/var/lib/trainledger/reconciler}
unit_dir=${TL_UNIT_DIR:-/etc/systemd/system}; python=${TL_PYTHON:-python3}; start=${TL_START:-1}
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel|--package) package=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --home) home=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --hooks) hooks=$2; shift 2 ;;
    --state-dir) state_dir=$2; shift 2 ;;
    --unit-dir) unit_dir=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    --ledger) echo "install-reconciler: --ledger is now --home DIR (the ledger is DIR/ledger.git)" >&2; exit 2 ;;
    *) echo "install-reconciler: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "install-reconciler: run as root (it creates a user and root-owned code)" >&2; exit 2; }
[ -n "$package" ] || package=$here   # a checkout: installed as a package, not editable
ledger=$home/ledger.git; store=$home/store
say() { echo "install-reconciler: $*"; }
as_user() { runuser -u "$user" -- env HOME="$home" PATH="$prefix/bin:/usr/local/bin:/usr/bin:/bin" "$@"; }

# 1. the dedicated user
if id -u "$user" >/dev/null 2>&1; then
  say "user $user exists"
else
  install -d -m 0755 "$(dirname "$home")"
  useradd --system --user-group --home-dir "$home" --create-home --shell /bin/sh "$user"
  usermod -p '*' "$user"   # no password, but not "locked": sshd lets its keys in
  say "created system user $user (home $home, shell /bin/sh)"
fi
install -d -o "$user" -g "$(id -gn "$user")" -m 0755 "$home"

# 2. root-owned code, runtime dependencies only
if [ -x "$prefix/bin/python" ]; then
  say "venv $prefix exists"
else
  "$python" -m venv "$prefix"
  say "created venv $prefix (root-owned)"
fi
before=$("$prefix/bin/python" -m pip show trainledger 2>/dev/null | sed -n 's/^Version: //p' || true)
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check "$package"
after=$("$prefix/bin/python" -m pip show trainledger | sed -n 's/^Version: //p')
if [ "$before" = "$after" ]; then say "trainledger $after already installed in $prefix"
else say "installed trainledger $after into $prefix (was: ${before:-none})"; fi

# 3. the ledger and the store, created and owned by the ledger user
if [ -e "$ledger/HEAD" ]; then
  say "ledger $ledger exists"
else
  as_user "$prefix/bin/reconciler" init "$ledger" --store "$store"
  say "created ledger $ledger and store $store as $user"
fi

# 4. the hook in a root-owned core.hooksPath
install -d -o root -g root -m 0755 "$hooks"
if [ "$(as_user git -C "$ledger" config --get core.hooksPath || true)" = "$hooks" ]; then
  say "core.hooksPath is $hooks"
else
  as_user git -C "$ledger" config core.hooksPath "$hooks"
  say "set core.hooksPath of $ledger to $hooks"
fi
old_sum=$(cat "$hooks/pre-receive" 2>/dev/null | sha256sum || true)
"$prefix/bin/reconciler" install-hooks --server "$ledger" >/dev/null
chown root:root "$hooks/pre-receive"; chmod 0755 "$hooks/pre-receive"
if [ "$old_sum" = "$(sha256sum < "$hooks/pre-receive")" ]; then say "hook $hooks/pre-receive up to date"
else say "wrote $hooks/pre-receive (root-owned, runs $prefix/bin/python)"; fi
if [ -e "$ledger/hooks/pre-receive" ]; then
  rm -f "$ledger/hooks/pre-receive"
  say "removed the ledger's own copy $ledger/hooks/pre-receive"
fi

# 5. the service
install -d -o "$user" -m 0755 "$state_dir"
unit="$unit_dir/trainledger-reconciler.service"
template=$("$prefix/bin/python" -c 'from reconciler.rules.resources import resource_dir; print(resource_dir("systemd"))')
rendered=$(sed -e "s|%BIN%|$prefix/bin|g" -e "s|%USER%|$user|g" -e "s|%LEDGER%|$ledger|g" \
    -e "s|%STATE_DIR%|$state_dir|g" "$template/trainledger-reconciler.service.in")
if [ -f "$unit" ] && [ "$(cat "$unit")" = "$rendered" ]; then
  say "unit $unit up to date"
else
  install -d "$unit_dir"
  printf '%s\n' "$rendered" > "$unit"
  say "wrote $unit"
fi
if [ "$start" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now trainledger-reconciler.service
  systemctl try-restart trainledger-reconciler.service   # an upgrade runs the new code
  say "trainledger-reconciler.service enabled and running"
fi
