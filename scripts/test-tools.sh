#!/usr/bin/env bash
# scripts/test-tools.sh
#
# Makes sure the real HTTP clients that the server's tests drive are
# installed: curl, wget and aria2c (packages/server/test/real-clients.test.ts).
# Idempotent: when all three are there it does nothing and prints nothing.
#
# A missing one is installed when this runs as root with apt-get:
#   DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl wget aria2
# (quietly, its output in a log shown only on failure). `apt-get update` runs
# only when that install fails for lack of package lists (a fresh image
# without lists, or stale ones), and the install is tried once more.
# Without root or apt-get it prints, on one line, which tools are missing and
# why they were not installed; the tests that need them are then registered
# as skipped with that reason in their title (never counted as passing).
#
# Called by scripts/test.mjs (before turbo, so `pnpm test` on a fresh clone
# has the tools) and by packages/server's vitest globalSetup (package-level
# runs). Exit code: 0 when every tool is there (now), 1 when some are still
# missing; callers go on either way.
set -uo pipefail

readonly PROG='test-tools'
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }

readonly TOOLS=(curl wget aria2c)
declare -A PACKAGE_OF=([curl]=curl [wget]=wget [aria2c]=aria2)

missing_tools() {
  local tool
  for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || printf '%s\n' "$tool"
  done
}

mapfile -t missing < <(missing_tools)
if [[ ${#missing[@]} -eq 0 ]]; then exit 0; fi

packages=()
for tool in "${missing[@]}"; do packages+=("${PACKAGE_OF[$tool]}"); done
readonly skipped='the tests that need them are skipped'

if [[ "$(id -u)" != 0 ]]; then
  say "missing ${missing[*]}: not root, so not installing them (as root: apt-get install ${packages[*]}); $skipped"
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "missing ${missing[*]}: no apt-get to install them with (install ${packages[*]} with the system's package manager); $skipped"
  exit 1
fi

log="$(mktemp "${TMPDIR:-/tmp}/test-tools.XXXXXX")"
trap 'rm -f -- "$log"' EXIT

# Waits for another apt/dpkg run (e.g. test-filesystems.sh installing xfsprogs) instead of failing on its lock.
apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 "$@" >>"$log" 2>&1; }
install_packages() { apt_get install -y --no-install-recommends "${packages[@]}"; }

say "installing ${packages[*]} with apt-get (for ${missing[*]})"
if ! install_packages; then
  if grep -qE 'Unable to locate package|has no installation candidate|Failed to fetch|404 +Not Found' "$log"; then
    say "apt-get install failed for lack of package lists: running apt-get update and trying again"
    apt_get update || true
    install_packages || true
  fi
fi

mapfile -t still < <(missing_tools)
if [[ ${#still[@]} -gt 0 ]]; then
  say "still missing ${still[*]} after apt-get install ${packages[*]}; $skipped. apt-get said:"
  tail -n 5 -- "$log" | sed "s/^/$PROG:   /" >&2
  exit 1
fi
say "installed ${packages[*]}"
exit 0
