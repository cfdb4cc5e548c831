#!/bin/bash
# container.sh: boot a throwaway Debian 12 system with a real systemd as PID 1
# (systemd-nspawn), so echo-lab's units can be started, reloaded, stopped and
# socket-activated for real, even on a host whose PID 1 is not systemd.
#
#   container.sh create              build (once) and print the cached rootfs
#   container.sh boot NAME           overlay a tmpfs on the cache, boot, wait for "running"
#   container.sh exec NAME CMD...    run CMD in all namespaces of the container
#   container.sh put NAME SRC DEST   copy a host file into the running container
#   container.sh pid NAME            print the host PID of the container's init
#   container.sh stop NAME           power off, unmount, remove cgroups and state
#   container.sh list                containers started by this script
#   container.sh destroy-cache       delete the cached rootfs
#
# The rootfs (debootstrap minbase + systemd, systemd-sysv, dbus, procps) is
# cached under $ECHO_LAB_CT_BASE (default /var/tmp/echo-lab-systemd), outside
# the repository. Every boot gets a fresh tmpfs upper layer, so nothing a test
# does inside survives `stop`. The container shares the host's network
# namespace: a unit listening on 127.0.0.1:PORT inside is reachable from the
# host's loopback.
#
# Needs root. Installs systemd-container and debootstrap with apt-get when
# missing. Every wait is bounded ($ECHO_LAB_CT_TIMEOUT seconds, default 60).
set -euo pipefail

BASE=${ECHO_LAB_CT_BASE:-/var/tmp/echo-lab-systemd}
SUITE=${ECHO_LAB_CT_SUITE:-bookworm}
TIMEOUT=${ECHO_LAB_CT_TIMEOUT:-60}
PKGS=systemd,systemd-sysv,dbus,procps
CACHE=$BASE/cache/rootfs-$SUITE
CGROUP_TREES=(systemd unified)

die() { echo "container.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

state_dir() { printf '%s/run/%s' "$BASE" "$1"; }
check_name() { [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,30}$ ]] || die "bad container name '$1'"; }

mirror() {
  local m=${ECHO_LAB_CT_MIRROR:-}
  [ -n "$m" ] || m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$m" ] || die "no Debian mirror found in the apt sources; set ECHO_LAB_CT_MIRROR"
  printf '%s' "$m"
}

ensure_tools() {
  local missing=()
  command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "container.sh: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 || {
    apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
  }
}

cmd_create() {
  ensure_tools
  if [ -f "$CACHE/.complete" ]; then echo "$CACHE"; return 0; fi
  mkdir -p "$BASE/cache"
  local tmp=$CACHE.tmp.$$
  trap 'rm -rf "$tmp"' EXIT
  echo "container.sh: creating $CACHE ($PKGS); log in $BASE/cache/debootstrap.log" >&2
  if ! debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$tmp" "$(mirror)" \
      >"$BASE/cache/debootstrap.log" 2>&1; then
    tail -20 "$BASE/cache/debootstrap.log" >&2
    die "debootstrap failed"
  fi
  rm -f "$tmp/etc/hostname" "$tmp/etc/machine-id"
  # Timers and jobs that would only add noise (or network traffic) to a test boot.
  local u
  for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
           fstrim.timer e2scrub_reap.service systemd-pstore.service; do
    ln -sfn /dev/null "$tmp/etc/systemd/system/$u"
  done
  chroot "$tmp" apt-get clean >/dev/null 2>&1 || true
  touch "$tmp/.complete"
  rm -rf "$CACHE"
  mv "$tmp" "$CACHE"
  trap - EXIT
  echo "$CACHE"
}

# PID (host view) of the container's init: the child of systemd-nspawn that is
# not nspawn itself.
init_pid() {
  local d; d=$(state_dir "$1")
  [ -f "$d/nspawn.pid" ] || return 1
  local np; np=$(<"$d/nspawn.pid")
  kill -0 "$np" 2>/dev/null || return 1
  local self p; self=$(readlink -f "/proc/$np/exe")
  for p in $(ps -o pid= --ppid "$np"); do
    [ "$(readlink "/proc/$p/exe" 2>/dev/null)" != "$self" ] && { echo "$p"; return 0; }
  done
  return 1
}

in_ct() {
  local name=$1; shift
  local pid; pid=$(init_pid "$name") || die "container '$name' is not running"
  nsenter -t "$pid" -a -- /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    TERM=dumb SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 "$@"
}

cmd_boot() {
  local name=${1:?usage: boot NAME}; check_name "$name"
  local d; d=$(state_dir "$name")
  init_pid "$name" >/dev/null 2>&1 && die "container '$name' is already running"
  [ -d "$d" ] && cmd_stop "$name"
  local lower; lower=$(cmd_create)
  mkdir -p "$d/tmpfs"
  # From here on a failed boot must not leave mounts, cgroups or processes behind.
  trap 'echo "container.sh: boot of $name failed, cleaning up" >&2; cmd_stop "$name" || true' ERR
  mount -t tmpfs -o mode=755 "echo-lab-$name-upper" "$d/tmpfs"
  mkdir -p "$d/tmpfs/upper" "$d/tmpfs/work" "$d/root"
  mount -t overlay "echo-lab-$name" \
    -o "lowerdir=$lower,upperdir=$d/tmpfs/upper,workdir=$d/tmpfs/work" "$d/root"
  tr -d - </proc/sys/kernel/random/uuid >"$d/root/etc/machine-id"
  echo "$name" >"$d/root/etc/hostname"
  # nspawn --keep-unit creates payload/ and supervisor/ under the caller's
  # cgroup: give each container its own so two can run side by side.
  local t
  for t in "${CGROUP_TREES[@]}"; do
    [ -d "/sys/fs/cgroup/$t" ] && mkdir -p "/sys/fs/cgroup/$t/echo-lab-$name"
  done
  (
    for t in "${CGROUP_TREES[@]}"; do
      [ -d "/sys/fs/cgroup/$t/echo-lab-$name" ] && echo "$BASHPID" >"/sys/fs/cgroup/$t/echo-lab-$name/cgroup.procs"
    done
    export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
    # --register=no --keep-unit: the host has no systemd/machined to talk to.
    exec setsid systemd-nspawn --quiet -D "$d/root" -M "$name" --boot --register=no --keep-unit \
      --console=passive --link-journal=no --settings=no
  ) </dev/null >"$d/console.log" 2>&1 &
  echo $! >"$d/nspawn.pid"
  local deadline=$((SECONDS + TIMEOUT)) pid=
  while :; do
    kill -0 "$(<"$d/nspawn.pid")" 2>/dev/null || { tail -30 "$d/console.log" >&2; false; }
    pid=$(init_pid "$name" 2>/dev/null) && [ -S "/proc/$pid/root/run/systemd/private" ] && break
    [ $SECONDS -lt $deadline ] || { echo "container.sh: no systemd in $TIMEOUT s" >&2; false; }
    sleep 0.1
  done
  local state
  state=$(timeout "$TIMEOUT" nsenter -t "$pid" -a -- systemctl is-system-running --wait 2>&1) || true
  case $state in
    running) ;;
    degraded) echo "container.sh: '$name' is degraded:" >&2; in_ct "$name" systemctl --failed --no-legend >&2 || true ;;
    *) tail -30 "$d/console.log" >&2; echo "container.sh: '$name' did not come up ($state)" >&2; false ;;
  esac
  trap - ERR
  echo "container.sh: '$name' up (init pid $pid, $state)" >&2
}

cmd_put() {
  local name=${1:?usage: put NAME SRC DEST} src=${2:?} dst=${3:?}
  [ -f "$src" ] || die "no such file: $src"
  local pid; pid=$(init_pid "$name") || die "container '$name' is not running"
  nsenter -t "$pid" -a -- /bin/sh -c 'mkdir -p "$(dirname "$1")" && cat >"$1" && chmod "$2" "$1"' \
    sh "$dst" "$(stat -c %a "$src")" <"$src"
}

cmd_stop() {
  local name=${1:?usage: stop NAME}; check_name "$name"
  local d; d=$(state_dir "$name")
  [ -d "$d" ] || return 0
  if [ -f "$d/nspawn.pid" ]; then
    local np; np=$(<"$d/nspawn.pid")
    if kill -0 "$np" 2>/dev/null; then
      in_ct "$name" systemctl poweroff --no-block >/dev/null 2>&1 || kill -TERM "$np" 2>/dev/null || true
      local deadline=$((SECONDS + 20))
      while kill -0 "$np" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
      # nspawn turns SIGTERM into an orderly shutdown; SIGKILL only as a last resort.
      if kill -0 "$np" 2>/dev/null; then
        kill -TERM "$np" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while kill -0 "$np" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
        kill -KILL "$np" 2>/dev/null || true
      fi
    fi
  fi
  local m
  for m in "$d/root" "$d/tmpfs"; do
    mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m"; }
  done
  local t c
  for t in "${CGROUP_TREES[@]}"; do
    c=/sys/fs/cgroup/$t/echo-lab-$name
    [ -d "$c" ] || continue
    find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || echo "container.sh: cannot remove cgroup $c" >&2
  done
  rm -rf "/run/systemd/nspawn/propagate/$name" "$d"
}

cmd_list() {
  local d n
  for d in "$BASE"/run/*/; do
    [ -d "$d" ] || continue
    n=$(basename "$d")
    if init_pid "$n" >/dev/null 2>&1; then echo "$n: running"; else echo "$n: stopped"; fi
  done
}

sub=${1:-}; [ $# -gt 0 ] && shift
case $sub in
  create) cmd_create ;;
  boot) cmd_boot "$@" ;;
  exec) name=${1:?usage: exec NAME CMD...}; shift; in_ct "$name" "$@" ;;
  put) cmd_put "$@" ;;
  pid) init_pid "${1:?usage: pid NAME}" || die "container '$1' is not running" ;;
  stop) cmd_stop "$@" ;;
  list) cmd_list ;;
  destroy-cache) rm -rf "$BASE/cache" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
