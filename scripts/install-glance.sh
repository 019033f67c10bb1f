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

if [[ ! -x "$PYTHON" ]]; then
  say "cannot install $PACKAGE: $PYTHON is missing (python3-glance needs Debian's python3)"
  exit 3
fi

# shellcheck source=lib/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt-install.sh"
APT_PROG="$PROG" APT_LOCK="$LOCK" APT_WHAT="$PACKAGE" \
  APT_ABOUT='about 200 packages, 260 MB; takes a minute' APT_NOT_ROOT='run: sudo bash scripts/install-glance.sh'
apt_install_once importable "$PACKAGE"
