# scripts/lib/apt-install.sh: sourced (not run) by the scripts that install a
# Debian package the tests or the bench need (install-chromium.sh,
# install-glance.sh, test-tools.sh). One way to do it, written once:
#
#   apt_install_once CHECK PACKAGE...
#
# CHECK is a command (a shell function) that succeeds when what is needed is
# there. When it succeeds at once, nothing else happens. Otherwise, as root
# with apt-get, under an flock on $APT_LOCK (concurrent callers install once;
# whoever waited finds it installed), it runs
#   DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends PACKAGE...
# waiting for other apt/dpkg runs instead of failing on their lock, with
# `apt-get update` first only when apt knows no candidate for the first
# package, and once more (then a second install) when the install fails.
# apt's output goes to a log shown (its tail) only on failure.
#
# Settings, as variables set before the call:
#   APT_PROG        prefix of every message (the calling script's name)
#   APT_LOCK        the lock file
#   APT_WHAT        what is installed, for messages (e.g. "chromium")
#   APT_ABOUT       optional: size/time note printed when the install starts
#   APT_NO_APT      optional: advice added when there is no apt-get
#   APT_NOT_ROOT    optional: advice added when not root
#
# Returns 0 when CHECK succeeds at the end; 1 when an install was tried and
# failed; 3 when it cannot be installed here (not root, no apt-get). The last
# line on stderr says why in every non-zero case.

apt_say() { printf '%s: %s\n' "${APT_PROG:-apt-install}" "$*" >&2; }

apt_install_once() {
  local check="$1"
  shift
  local packages=("$@")
  if "$check"; then return 0; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    apt_say "cannot install ${APT_WHAT}: no apt-get (not a Debian/Ubuntu system)${APT_NO_APT:+; $APT_NO_APT}"
    return 3
  fi
  if [[ "$(id -u)" != 0 ]]; then
    apt_say "cannot install ${APT_WHAT}: not root${APT_NOT_ROOT:+ ($APT_NOT_ROOT)}"
    return 3
  fi
  local fd
  exec {fd}>"$APT_LOCK"
  flock "$fd"
  if "$check"; then
    exec {fd}>&-
    return 0
  fi
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600)
  local log start policy status=0
  log="$(mktemp "${TMPDIR:-/tmp}/${APT_PROG:-apt-install}.XXXXXX.log")"
  start=$(date +%s)
  apt_say "installing ${packages[*]} with apt-get${APT_ABOUT:+ ($APT_ABOUT)}"
  # (Captured first: `grep -q` quitting early would fail the pipe under pipefail.)
  policy="$(apt-cache policy "${packages[0]}" 2>/dev/null || true)"
  if [[ "$policy" != *'Candidate: '[0-9]* ]]; then
    apt_say "apt knows no candidate for ${packages[0]}: running apt-get update first"
    "${apt[@]}" update >>"$log" 2>&1 || true
  fi
  if ! "${apt[@]}" install -y --no-install-recommends "${packages[@]}" >>"$log" 2>&1; then
    apt_say "apt-get install failed; running apt-get update and trying once more"
    "${apt[@]}" update >>"$log" 2>&1 || true
    "${apt[@]}" install -y --no-install-recommends "${packages[@]}" >>"$log" 2>&1 || true
  fi
  if ! "$check"; then
    tail -n 5 -- "$log" | sed "s/^/${APT_PROG:-apt-install}:   apt-get: /" >&2 || true
    local why
    why="$(grep -E '^(E|W): ' -- "$log" | tail -n 1 || true)"
    apt_say "could not install ${APT_WHAT} with apt-get${why:+: $why}"
    status=1
  else
    local version
    version="$(dpkg-query -W -f='${Version}' "${packages[0]}" 2>/dev/null || echo '?')"
    apt_say "installed ${packages[*]} (${packages[0]} $version) in $(($(date +%s) - start)) s"
  fi
  rm -f -- "$log"
  exec {fd}>&-
  return "$status"
}
