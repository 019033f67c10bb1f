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

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }

runs() { [[ -x "$CHROMIUM" ]] && "$CHROMIUM" --version >/dev/null 2>&1; }

if runs; then exit 0; fi

if ! command -v apt-get >/dev/null 2>&1; then
  say "cannot install chromium: no apt-get (not a Debian/Ubuntu system); install it and set CHROMIUM_PATH"
  exit 3
fi
if [[ "$(id -u)" != 0 ]]; then
  say "cannot install chromium: not root (run: sudo bash scripts/install-chromium.sh)"
  exit 3
fi

exec 9>"$LOCK"
flock 9
if runs; then exit 0; fi

export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -q -o DPkg::Lock::Timeout=600)
log="$(mktemp "${TMPDIR:-/tmp}/install-chromium.XXXXXX.log")"
trap 'rm -f -- "$log"' EXIT

start=$(date +%s)
say "installing ${PACKAGES[*]} with apt-get (about 25 packages, ~350 MB on disk; takes a minute or two)"
policy="$(apt-cache policy chromium 2>/dev/null || true)"
if [[ "$policy" != *'Candidate: '[0-9]* ]]; then
  say "apt knows no candidate for chromium: running apt-get update first"
  "${APT[@]}" update >>"$log" 2>&1 || true
fi
if ! "${APT[@]}" install -y --no-install-recommends "${PACKAGES[@]}" >>"$log" 2>&1; then
  say "apt-get install failed; running apt-get update and trying once more"
  "${APT[@]}" update >>"$log" 2>&1 || true
  "${APT[@]}" install -y --no-install-recommends "${PACKAGES[@]}" >>"$log" 2>&1 || true
fi
if ! runs; then
  tail -n 5 -- "$log" | sed "s/^/$PROG:   apt-get: /" >&2 || true
  why="$(grep -E '^(E|W): ' -- "$log" | tail -n 1 || true)"
  say "could not install chromium with apt-get${why:+: $why}"
  exit 1
fi
version="$(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo '?')"
say "installed chromium $version in $(($(date +%s) - start)) s"
