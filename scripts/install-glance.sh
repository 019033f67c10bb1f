#!/usr/bin/env bash
# scripts/install-glance.sh: makes OpenStack Glance's own image-cache code
# (Debian's python3-glance) importable by Debian's /usr/bin/python3, so the
# driver packages' interop tests can run Glance's real sqlite and xattr
# drivers against our cache directories.
#
# Idempotent: when `import glance.image_cache.drivers.sqlite` already works it
# does nothing (a few tens of ms). Otherwise, as root with apt-get, it runs
#   DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-glance
# (apt-get update first only when apt knows no candidate, or once more when
# the install fails), waiting for other apt/dpkg runs instead of failing.
# Concurrent calls (two test packages at once) are serialized with flock, so
# apt runs once and the second caller finds Glance installed.
#
# Exit status: 0 when Glance is importable at the end; 1 when an install was
# tried and failed; 3 when it cannot be installed here (not root, no apt-get,
# no /usr/bin/python3). The last line on stderr says why in every non-zero
# case (the tests put it into their skip reason).
#
# Measured on the project's machine (Debian 12, 2 cores, busy): 197 packages
# (8 of them upgrades), 260 MB on disk, 179 s including an apt-get update;
# a later call that finds Glance installed takes 1-3 s (the import check).
set -euo pipefail

readonly PROG='install-glance'
readonly PYTHON='/usr/bin/python3' # Debian's python3, where python3-glance installs (not a pyenv one on PATH)
readonly PACKAGE='python3-glance'
readonly LOCK="${INSTALL_GLANCE_LOCK:-/tmp/image-cache-install-glance.lock}"

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }

importable() {
  [[ -x "$PYTHON" ]] && "$PYTHON" -c 'import glance.image_cache.drivers.sqlite, glance.image_cache.drivers.xattr' >/dev/null 2>&1
}

if importable; then exit 0; fi

if [[ ! -x "$PYTHON" ]]; then
  say "cannot install $PACKAGE: $PYTHON is missing (python3-glance needs Debian's python3)"
  exit 3
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "cannot install $PACKAGE: no apt-get (not a Debian/Ubuntu system)"
  exit 3
fi
if [[ "$(id -u)" != 0 ]]; then
  say "cannot install $PACKAGE: not root (run: sudo bash scripts/install-glance.sh)"
  exit 3
fi

# One installer at a time; whoever waited finds Glance installed.
exec 9>"$LOCK"
flock 9
if importable; then exit 0; fi

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt-get or dpkg (another engineer's run, unattended upgrades) instead of failing at once.
APT=(apt-get -q -o DPkg::Lock::Timeout=600)
log="$(mktemp "${TMPDIR:-/tmp}/install-glance.XXXXXX.log")"
trap 'rm -f -- "$log"' EXIT

start=$(date +%s)
say "installing $PACKAGE with apt-get (about 200 packages, 260 MB; takes a minute)"
# (Captured first: `grep -q` quitting early would fail the pipe under pipefail.)
policy="$(apt-cache policy "$PACKAGE" 2>/dev/null || true)"
if [[ "$policy" != *'Candidate: '[0-9]* ]]; then
  say "apt knows no candidate for $PACKAGE: running apt-get update first"
  "${APT[@]}" update >>"$log" 2>&1 || true
fi
if ! "${APT[@]}" install -y --no-install-recommends "$PACKAGE" >>"$log" 2>&1; then
  say "apt-get install failed; running apt-get update and trying once more"
  "${APT[@]}" update >>"$log" 2>&1 || true
  "${APT[@]}" install -y --no-install-recommends "$PACKAGE" >>"$log" 2>&1 || true
fi
if ! importable; then
  tail -n 5 -- "$log" | sed "s/^/$PROG:   apt-get: /" >&2 || true
  why="$(grep -E '^(E|W): ' -- "$log" | tail -n 1 || true)"
  say "could not install $PACKAGE with apt-get${why:+: $why}"
  exit 1
fi
version="$(dpkg-query -W -f='${Version}' "$PACKAGE" 2>/dev/null || echo '?')"
say "installed $PACKAGE $version in $(($(date +%s) - start)) s"
