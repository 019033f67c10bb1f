#!/usr/bin/env bash
# scripts/install-chromium.sh: makes Debian's headless-capable Chromium
# (/usr/bin/chromium) available for the status page's browser test
# (packages/server/test/status-page.test.ts, driven by playwright-core).
#
# Idempotent: when /usr/bin/chromium runs (`chromium --version`) it does
# nothing. Otherwise, as root with apt-get, it runs
#   DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-liberation
# (fonts-liberation: without any font the screenshot's text is blank boxes;
# apt-get update first only when apt knows no candidate, or once more when
# the install fails), waiting for other apt/dpkg runs instead of failing.
# Concurrent calls are serialized with flock, so apt runs once.
#
# Exit status: 0 when chromium runs at the end; 1 when an install was tried
# and failed; 3 when it cannot be installed here (not root, no apt-get). The
# last line on stderr says why in every non-zero case (the test puts it into
# its skip reason).
#
# Measured on the project's machine (Debian 12, 2 cores, shared): see the
# "Status page" section of packages/server/README.md for the figures.
set -euo pipefail

readonly PROG='install-chromium'
readonly CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
readonly PACKAGES=(chromium fonts-liberation)
readonly LOCK="${INSTALL_CHROMIUM_LOCK:-/tmp/image-cache-install-chromium.lock}"

# shellcheck source=lib/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt-install.sh"

runs() { [[ -x "$CHROMIUM" ]] && "$CHROMIUM" --version >/dev/null 2>&1; }

APT_PROG="$PROG" APT_LOCK="$LOCK" APT_WHAT='chromium' \
  APT_ABOUT='about 25 packages, ~350 MB on disk; takes a minute or two' \
  APT_NO_APT='install it and set CHROMIUM_PATH' APT_NOT_ROOT='run: sudo bash scripts/install-chromium.sh'
apt_install_once runs "${PACKAGES[@]}"
