#!/usr/bin/env bash
# scripts/test-filesystems.sh [--] COMMAND [ARGS...]
#
# Runs COMMAND with CACHE_TEST_FILESYSTEMS pointing at a matrix of freshly
# mounted test filesystems, so the conformance kit runs every driver on each:
#
#   tmpfs               tmpfs, default options, size 512m
#   tmpfs-strictatime   tmpfs -o strictatime, size 256m (every read updates atime)
#   ext4                ext4 on a loop device (512 MiB sparse image), default options
#   xfs                 xfs on a loop device (512 MiB sparse image), default options
#   ext4-noatime        ext4 on a loop device, -o noatime
#   ramfs               ramfs (no user xattrs)
#
# Everything lives in one `mktemp -d /tmp/test-filesystems.XXXXXX` directory.
# On exit (success, failure, Ctrl-C, SIGTERM, SIGHUP) everything is unmounted
# (umount, falling back to umount -l), the loop devices are detached and the
# directory is removed. Returns COMMAND's exit code (128+N after signal N).
#
# Needs root, mount and loop devices. Without them, with CACHE_TEST_MATRIX=0,
# or when CACHE_TEST_FILESYSTEMS is already set, it says why on one line and
# runs COMMAND as it is (the kit then uses the OS temp dir, or the caller's
# CACHE_TEST_FILESYSTEMS). A filesystem that cannot be set up (e.g. xfs when
# xfsprogs cannot be installed) is reported loudly and left out; the matrix
# prints the filesystems it has.

# The cleanup functions run from traps, which shellcheck cannot see.
# shellcheck disable=SC2317
set -euo pipefail

readonly PROG='test-filesystems'
readonly PREFIX='/tmp/test-filesystems.'
readonly IMAGE_SIZE='512M'

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
warn() {
  printf '%s: WARNING: %s\n' "$PROG" "$*" >&2
}

usage() {
  printf 'usage: %s [--] COMMAND [ARGS...]\n' "$0" >&2
  printf '  runs COMMAND with CACHE_TEST_FILESYSTEMS set to a matrix of tmpfs/ext4/xfs/ramfs mounts (root only)\n' >&2
  printf '  CACHE_TEST_MATRIX=0 skips the matrix\n' >&2
  exit 2
}

if [[ "${1:-}" == '--' ]]; then shift; fi
if [[ $# -eq 0 ]]; then usage; fi

# ---------------------------------------------------------------------------
# State, cleanup and signals

workdir=''          # the mktemp -d directory
mounts=()           # mount points we mounted, in order
loops=()            # loop devices we attached, in order
child=''            # pid of COMMAND while it runs
cleaned=0

# Every process below $1 (children first in the list, then theirs), by pid.
descendants() {
  local pid kids kid
  pid="$1"
  kids="$(ps -o pid= --ppid "$pid" 2>/dev/null || true)"
  for kid in $kids; do
    printf '%s\n' "$kid"
    descendants "$kid"
  done
}

# Sends a signal to COMMAND and every process below it. Earlier members stay
# in the list: orphans get reparented away from the tree.
tree=()
signal_tree() {
  # shellcheck disable=SC2207
  tree+=("$child" $(descendants "$child"))
  kill -s "$1" "${tree[@]}" 2>/dev/null || true
}

# Waits up to $1 tenths of a second for COMMAND to end.
wait_child() {
  local i
  for ((i = 0; i < $1; i++)); do
    kill -0 "$child" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

# Stops COMMAND and everything it started: SIG to the whole tree; SIGTERM
# after 3 s (async commands of a non-interactive shell ignore SIGINT); SIGKILL
# for whatever is left 10 s later.
stop_child() {
  local sig="$1"
  if [[ -z "$child" ]] || ! kill -0 "$child" 2>/dev/null; then
    child=''
    return 0
  fi
  tree=()
  signal_tree "$sig"
  if [[ "$sig" != TERM ]] && ! wait_child 30; then signal_tree TERM; fi
  if ! wait_child 100; then
    warn "the command is still running 10 s after SIGTERM: sending SIGKILL"
    signal_tree KILL
  fi
  wait "$child" 2>/dev/null || true
  child=''
}

unmount() {
  local dir="$1"
  mountpoint -q "$dir" 2>/dev/null || return 0
  umount "$dir" 2>/dev/null && return 0
  sleep 0.2
  umount "$dir" 2>/dev/null && return 0
  warn "umount $dir failed (busy?); detaching it lazily (umount -l)"
  umount -l "$dir" || warn "umount -l $dir failed too: it stays mounted"
}

detach() {
  local dev="$1"
  losetup "$dev" >/dev/null 2>&1 || return 0
  # With a lazily unmounted filesystem still holding it, -d sets autoclear instead.
  losetup -d "$dev" 2>/dev/null || warn "losetup -d $dev failed: it stays attached"
}

cleanup() {
  local status=$?
  trap '' INT TERM HUP
  if [[ "$cleaned" == 1 ]]; then return "$status"; fi
  cleaned=1
  set +e
  stop_child TERM
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do unmount "${mounts[i]}"; done
  for ((i = ${#loops[@]} - 1; i >= 0; i--)); do detach "${loops[i]}"; done
  if [[ -n "$workdir" && -d "$workdir" ]]; then
    # --one-file-system: never reach into a mount that refused to go away.
    rm -rf --one-file-system -- "$workdir" 2>/dev/null || warn "could not remove $workdir entirely"
  fi
  return "$status"
}

on_signal() {
  local name="$1" number="$2"
  trap '' INT TERM HUP
  say "caught SIG$name: stopping the command and tearing the matrix down"
  stop_child "$name"
  exit $((128 + number))
}

trap cleanup EXIT
trap 'on_signal INT 2' INT
trap 'on_signal TERM 15' TERM
trap 'on_signal HUP 1' HUP

# Runs COMMAND and exits with its status. In the background plus `wait`, so
# that a signal to this script runs its trap at once instead of after COMMAND.
run_command() {
  local status=0
  "$@" <&0 &
  child=$!
  wait "$child" || status=$?
  child=''
  exit "$status"
}

# Runs COMMAND as it is, after one line saying why there is no matrix.
run_without_matrix() {
  local reason="$1"
  shift
  if [[ "$reason" == already-set ]]; then
    say "CACHE_TEST_FILESYSTEMS is already set: no matrix mounted, running on it as given: $CACHE_TEST_FILESYSTEMS"
  elif [[ -n "${CACHE_TEST_FILESYSTEMS:-}" && -n "${CACHE_TEST_FILESYSTEMS// /}" ]]; then
    say "$reason: no matrix mounted; CACHE_TEST_FILESYSTEMS is already set, leaving it: $CACHE_TEST_FILESYSTEMS"
  else
    say "$reason: running on the OS temp dir only (no tmpfs/ext4/xfs matrix)"
  fi
  run_command "$@"
}

# ---------------------------------------------------------------------------
# Whether a matrix is possible at all

if [[ "${CACHE_TEST_MATRIX:-1}" == '0' ]]; then
  run_without_matrix 'CACHE_TEST_MATRIX=0' "$@"
fi
if [[ -n "${CACHE_TEST_FILESYSTEMS:-}" && -n "${CACHE_TEST_FILESYSTEMS// /}" ]]; then
  run_without_matrix already-set "$@"
fi
if [[ "$(id -u)" != 0 ]]; then
  run_without_matrix 'not root' "$@"
fi
for tool in mount umount mountpoint findmnt losetup ps; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    run_without_matrix "$tool is not installed" "$@"
  fi
done

# ---------------------------------------------------------------------------
# Leftovers of earlier runs that were killed with SIGKILL (their EXIT trap
# never ran): only our own directories, and only when their owner is gone.

sweep_stale() {
  local dir owner dev mnt
  for dir in "$PREFIX"*; do
    [[ -d "$dir" && -f "$dir/.owner" ]] || continue
    owner="$(cat "$dir/.owner" 2>/dev/null || true)"
    if [[ "$owner" =~ ^[0-9]+$ ]] && kill -0 "$owner" 2>/dev/null; then continue; fi
    say "removing the leftovers of an earlier run in $dir"
    while read -r mnt; do
      [[ -n "$mnt" ]] && unmount "$mnt"
    done < <(findmnt -rn -o TARGET | grep -F -- "$dir/" | sort -r || true)
    while read -r dev; do
      [[ -n "$dev" ]] && detach "$dev"
    done < <(losetup -a -O NAME,BACK-FILE -n 2>/dev/null | awk -v d="$dir/" 'index($2, d) == 1 { print $1 }' || true)
    rm -rf --one-file-system -- "$dir" 2>/dev/null || warn "could not remove $dir"
  done
}
sweep_stale

# ---------------------------------------------------------------------------
# The matrix

workdir="$(mktemp -d "${PREFIX}XXXXXX")"
printf '%s\n' "$$" >"$workdir/.owner"

names=()            # filesystem names in the matrix, in order
declare -A roots=() # name -> mount root
declare -A devices=()

# mount_fs NAME TYPE OPTIONS SOURCE: mounts SOURCE (a device, or "none" for
# tmpfs/ramfs) of TYPE with OPTIONS on $workdir/NAME; returns non-zero (after
# saying why) when it cannot.
mount_fs() {
  local name="$1" type="$2" options="$3" source="$4" dir out
  dir="$workdir/$name"
  mkdir -p -- "$dir"
  local args=(-t "$type")
  [[ -n "$options" ]] && args+=(-o "$options")
  if ! out="$(mount "${args[@]}" -- "$source" "$dir" 2>&1)"; then
    warn "$name: mount ${args[*]} $source $dir failed: ${out:-no message}"
    rmdir -- "$dir" 2>/dev/null || true
    return 1
  fi
  mounts+=("$dir")
  chmod 1777 "$dir"
  names+=("$name")
  roots[$name]="$dir"
}

# loop_device NAME: a sparse image $workdir/NAME.img on a free loop device
# (recorded in devices[NAME]); returns non-zero (after saying why) when it cannot.
loop_device() {
  local name="$1" image out dev
  image="$workdir/$name.img"
  truncate -s "$IMAGE_SIZE" -- "$image"
  if ! out="$(losetup --find --show -- "$image" 2>&1)"; then
    warn "$name: no loop device (losetup --find --show $image failed: ${out:-no message})"
    return 1
  fi
  dev="$out"
  loops+=("$dev")
  devices[$name]="$dev"
}

# make_fs NAME MKFS_COMMAND...: runs MKFS_COMMAND on devices[NAME].
make_fs() {
  local name="$1" out
  shift
  if ! out="$("$@" "${devices[$name]}" 2>&1)"; then
    warn "$name: $* ${devices[$name]} failed: ${out:-no message}"
    return 1
  fi
}

ensure_mkfs_xfs() {
  command -v mkfs.xfs >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    warn "mkfs.xfs is missing and there is no apt-get to install xfsprogs: the matrix runs WITHOUT xfs"
    return 1
  fi
  say "mkfs.xfs is missing: installing xfsprogs with apt-get"
  local log="$workdir/apt.log"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q xfsprogs >"$log" 2>&1; then
    say "apt-get install xfsprogs failed; running apt-get update and trying again"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q xfsprogs >>"$log" 2>&1 || true
  fi
  if ! command -v mkfs.xfs >/dev/null 2>&1; then
    warn "##########################################################################"
    warn "could not install xfsprogs with apt-get: the matrix runs WITHOUT xfs"
    tail -n 5 -- "$log" | sed "s/^/$PROG:   apt-get: /" >&2 || true
    warn "##########################################################################"
    return 1
  fi
}

# tmpfs first: when even that cannot be mounted, mount does not work here.
if ! mount_fs tmpfs tmpfs size=512m none; then
  run_without_matrix 'cannot mount tmpfs' "$@"
fi
mount_fs tmpfs-strictatime tmpfs strictatime,size=256m none || true

# ext4 first: when its loop device cannot be attached, loop devices do not work here.
if loop_device ext4; then
  if make_fs ext4 mkfs.ext4 -q -F; then
    mount_fs ext4 ext4 '' "${devices[ext4]}" || true
  fi
  if ensure_mkfs_xfs && loop_device xfs && make_fs xfs mkfs.xfs -q -f; then
    mount_fs xfs xfs '' "${devices[xfs]}" || true
  fi
  if loop_device ext4-noatime && make_fs ext4-noatime mkfs.ext4 -q -F; then
    mount_fs ext4-noatime ext4 noatime "${devices[ext4-noatime]}" || true
  fi
else
  warn "loop devices do not work here: the matrix runs WITHOUT ext4, xfs and ext4-noatime"
fi

mount_fs ramfs ramfs '' none || true

value=''
for name in "${names[@]}"; do
  value+="${value:+,}$name=${roots[$name]}"
done
export CACHE_TEST_FILESYSTEMS="$value"

say "filesystem matrix in $workdir (${#names[@]} filesystems: ${names[*]}):"
for name in "${names[@]}"; do
  dir="${roots[$name]}"
  fstype='' options=''
  read -r fstype options < <(findmnt -n -o FSTYPE,OPTIONS --mountpoint "$dir" 2>/dev/null || true) || true
  source=''
  [[ -n "${devices[$name]:-}" ]] && source=" on ${devices[$name]}"
  printf '%s:   %-18s %-6s %s%s: %s\n' "$PROG" "$name" "${fstype:-?}" "$dir" "$source" "${options:-?}" >&2
done
say "CACHE_TEST_FILESYSTEMS=$CACHE_TEST_FILESYSTEMS"
left_out=()
for name in tmpfs tmpfs-strictatime ext4 xfs ext4-noatime ramfs; do
  [[ -n "${roots[$name]:-}" ]] || left_out+=("$name")
done
if [[ ${#left_out[@]} -gt 0 ]]; then
  warn "the matrix runs WITHOUT ${left_out[*]} (see the warnings above)"
fi

run_command "$@"
