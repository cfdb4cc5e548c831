#!/bin/bash
# run.sh: test the echo-lab Debian package under a real systemd.
#
#   tests/systemd/run.sh            (as root; about a minute once the rootfs is cached)
#
# Builds the .deb (packaging/build-deb.sh), checks it (lintian, mandoc, the
# units with systemd-analyze), boots a throwaway Debian 12 container with
# systemd as PID 1 (tests/systemd/container.sh), installs the package with
# dpkg -i and drives the units, talking to the daemon from the host over
# loopback (the container shares the host's network namespace). Finally it
# runs `echo-lab --daemon --pidfile` on the host, outside systemd.
#
# One line per check, `ok - ...` or `not ok - ...`, then `N passed, N failed`;
# the exit status is non-zero when a check failed. Every wait polls with a
# deadline. Traffic goes to loopback only, on ports 7 (echo-lab.socket) and
# 17007-17021 (overridable with ECHO_LAB_TEST_PORT_BASE; the ports in use are
# base+0, +4..+7, +14). Details of a failing check go to
# $ECHO_LAB_TEST_LOG (default target/systemd-tests.log).
#
# Faults: kill -9 of the daemon under a reconnecting loop (systemd restarts
# it, the listener survives in the fd store), 10 000 connections with a hog
# and slow senders measured against the unit's MemoryMax=/TasksMax=, and a
# reload onto a port another process holds. The memory and task figures
# come from systemd when the container has the memory and pids controllers;
# where it has not (a host whose cgroup v1 hierarchies hold them), from
# cgroup v1 groups on the host that the daemon is started in, with the
# unit's MemoryMax= and TasksMax= as their limits. The client side of the
# 10 000 connections needs about 10 300 descriptors (its hard limit must
# allow that).
# ECHO_LAB_TEST_DEB=path tests that .deb instead of building one.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/tests/systemd
CT=$HERE/container.sh
TCP=$HERE/tcp.py
LOG=${ECHO_LAB_TEST_LOG:-$ROOT/target/systemd-tests.log}
BASE_PORT=${ECHO_LAB_TEST_PORT_BASE:-17007}
PORT=$BASE_PORT                  # echo-lab.service (its /etc/echo-lab.toml)
PORT_A=$((BASE_PORT + 4))        # echo-lab@a.service
PORT_B=$((BASE_PORT + 5))        # echo-lab@b.service
PORT_S=$((BASE_PORT + 6))        # echo-lab@PORT_S.socket
PORT_HELD=$((BASE_PORT + 7))     # held by another process during a reload
PORT_HOST=$((BASE_PORT + 14))    # echo-lab --daemon on the host
NAME=echolab-$$
WAIT=${ECHO_LAB_TEST_TIMEOUT:-20}

[ "$(id -u)" = 0 ] || { echo "run.sh: must run as root (systemd-nspawn, mounts)" >&2; exit 2; }
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
TMP=$(mktemp -d /tmp/echo-lab-systemd-tests.XXXXXX)

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }
log() { printf '%s\n' "$*" >>"$LOG"; }

# check DESCRIPTION CMD...: run CMD (output to the log), ok if it exits 0.
check() {
  local what=$1; shift
  log "### $what: $*"
  if "$@" >>"$LOG" 2>&1; then ok "$what"; else log "### exit $?"; not_ok "$what"; fi
}

# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds or time is up.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

in_ct() { "$CT" exec "$NAME" "$@"; }
tcp() { TCP_TIMEOUT=$WAIT python3 "$TCP" "$@"; }
port_free() { ! ss -Htln "sport = :$1" | grep -q .; }
unit_is() { [ "$(in_ct systemctl is-active "$1")" = "$2" ]; }
main_pid() { in_ct systemctl show -P MainPID "$1"; }

host_daemon_pid=
loop_pid=
holder_pid=
CG_MEM= CG_PIDS=    # cgroup v1 groups made for the resource check
cg_remove() {       # cg_remove DIR: move what is left in DIR to its parent, remove it
  local d=$1 p
  [ -n "$d" ] && [ -d "$d" ] || return 0
  for p in $(cat "$d/cgroup.procs" 2>/dev/null); do echo "$p" >"$(dirname "$d")/cgroup.procs" 2>/dev/null; done
  rmdir "$d" 2>/dev/null || echo "run.sh: cannot remove cgroup $d" >&2
}
cleanup() {
  [ -n "$loop_pid" ] && kill "$loop_pid" 2>/dev/null
  [ -n "$holder_pid" ] && kill "$holder_pid" 2>/dev/null
  [ -n "$host_daemon_pid" ] && kill -KILL "$host_daemon_pid" 2>/dev/null
  cg_remove "$CG_MEM"; cg_remove "$CG_PIDS"
  "$CT" stop "$NAME" >>"$LOG" 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

finish() {
  if [ "$failed" != 0 ] && "$CT" list 2>/dev/null | grep -q "^$NAME: running"; then
    {
      echo "### diagnostics"
      in_ct systemctl status --no-pager --full 'echo-lab*'
      in_ct journalctl -b --no-pager -n 200
    } >>"$LOG" 2>&1
  fi
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
  exit
}

ensure_tools() {
  local missing=()
  command -v lintian >/dev/null || missing+=(lintian)
  command -v mandoc >/dev/null || missing+=(mandoc)
  command -v python3 >/dev/null || missing+=(python3)
  command -v ss >/dev/null || missing+=(iproute2)
  [ ${#missing[@]} -eq 0 ] && return 0
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1 || {
    apt-get update >>"$LOG" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1
  }
}
check "test tools installed (lintian, mandoc, python3, ss)" ensure_tools

# ---------------------------------------------------------------- the package
if [ -n "${ECHO_LAB_TEST_DEB:-}" ]; then
  DEB=$(realpath "$ECHO_LAB_TEST_DEB")
  if [ -f "$DEB" ]; then ok "package given: $DEB"; else not_ok "package given: $DEB"; finish; fi
else
  DEB=$(packaging/build-deb.sh 2>>"$LOG" | tail -n 1)
  if [ -n "$DEB" ] && [ -f "$DEB" ]; then ok "package built: ${DEB#"$ROOT"/}"; else not_ok "package built (see $LOG)"; finish; fi
fi
# The package's own files, for the host-side checks.
PKG=$TMP/deb-root
dpkg-deb -x "$DEB" "$PKG" || { not_ok "dpkg-deb -x $DEB"; finish; }

lintian_errors() {
  lintian "$DEB" >"$TMP/lintian.txt" 2>&1
  cat "$TMP/lintian.txt"
  ! grep -q '^E:' "$TMP/lintian.txt"
}
check "lintian reports no errors" lintian_errors

check "manual pages: mandoc -Tlint clean at warning level" mandoc -Tlint -W warning man/echo-lab.8 man/echo-labctl.1 man/echo-lab.toml.5
man_renders() { local f; for f in man/*.[0-9]; do MANWIDTH=80 man -l "$f" >/dev/null 2>&1 || MANWIDTH=80 mandoc -Tutf8 "$f" >/dev/null || return 1; done; }
check "manual pages render" man_renders

# systemd-analyze verify needs the ExecStart binaries at their real paths:
# overlay the package's /usr on the host's /usr in a private mount
# namespace, which nothing else sees. Templates are checked as instances.
verify_units() {
  local x=$TMP/verify-root
  rm -rf "$x"; cp -a "$PKG" "$x" || return 1
  local d=$x/usr/lib/systemd/system
  ln -s echo-lab@.service "$d/echo-lab@a.service"
  ln -s echo-lab@.service "$d/echo-lab@$PORT_S.service"
  ln -s echo-lab@.socket "$d/echo-lab@$PORT_S.socket"
  unshare -m --propagation private sh -ec '
    mount -t overlay echo-lab-verify -o "lowerdir=$1/usr:/usr" /usr
    cd "$2"
    systemd-analyze verify --man=no echo-lab.service echo-lab.socket "echo-lab@a.service" "echo-lab@$3.socket" "echo-lab@$3.service"
  ' sh "$x" "$d" "$PORT_S"
}
check "systemd-analyze verify: all units (host, package files)" verify_units

exposure() {  # exposure UNITFILE -> prints the score
  systemd-analyze security --offline=true --no-pager "$1" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p'
}
for unit in echo-lab.service echo-lab@.service; do
  score=$(exposure "packaging/$unit")
  if [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 1.5) }'; then
    ok "systemd-analyze security --offline=true $unit: exposure $score <= 1.5"
  else
    not_ok "systemd-analyze security --offline=true $unit: exposure '${score:-?}' <= 1.5"
  fi
done

# ------------------------------------------------------------------ container
for p in 7 "$PORT" "$PORT_A" "$PORT_B" "$PORT_S" "$PORT_HELD" "$PORT_HOST"; do
  port_free "$p" || { not_ok "TCP port $p is free on the host"; finish; }
done
if "$CT" boot "$NAME" >>"$LOG" 2>&1; then ok "container booted with systemd as PID 1"; else not_ok "container booted (see $LOG)"; finish; fi

install_deb() {
  "$CT" put "$NAME" "$DEB" /tmp/echo-lab.deb || return 1
  # Keep the postinst from starting the service on port 7007 of the shared
  # loopback: the tests configure it first (policy-rc.d, as in chroots).
  in_ct sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d' || return 1
  in_ct dpkg -i /tmp/echo-lab.deb || return 1
  in_ct rm -f /usr/sbin/policy-rc.d
}
check "dpkg -i installs the package" install_deb
check "echo-lab.service enabled by the package" test "$(in_ct systemctl is-enabled echo-lab.service)" = enabled
check "echo-lab.socket (port 7) left disabled by the package" test "$(in_ct systemctl is-enabled echo-lab.socket)" = disabled
check "/etc/echo-lab.toml is a conffile" in_ct sh -c 'dpkg-query -W -f="\${Conffiles}" echo-lab | grep -q "/etc/echo-lab.toml "'
check "installed config passes echo-lab --check-config" in_ct /usr/bin/echo-lab --check-config --config /etc/echo-lab.toml

# set_conf KEY VALUE [FILE]: replace the KEY = ... line (uncommenting it).
set_conf() {
  local f=${3:-/etc/echo-lab.toml}
  in_ct sed -i -E "s|^#? *$1 = .*|$1 = $2|" "$f" && in_ct grep -q "^$1 = $2\$" "$f"
}
configure() {
  set_conf port "$PORT" && set_conf idle_timeout '"5m"' && set_conf drain_timeout '"5s"' && set_conf level '"debug"' &&
    set_conf cpu_affinity true
}
check "configure 127.0.0.1:$PORT, log level debug, cpu_affinity on" configure

# ------------------------------------------------------------ echo-lab.service
check "systemctl start echo-lab" in_ct systemctl start echo-lab
check "echo-lab.service is active" unit_is echo-lab.service active
check "echo over loopback (127.0.0.1:$PORT)" wait_for "$WAIT" tcp echo 127.0.0.1 "$PORT"
status_line() {
  local text; text=$(in_ct systemctl show -P StatusText echo-lab.service)
  log "StatusText=$text"
  [ -n "$text" ] && in_ct systemctl status --no-pager echo-lab.service | grep -F "Status: \"$text\""
}
check "systemctl status shows the daemon's STATUS= line" status_line
check "echo-labctl status reaches the daemon (/run/echo-lab/control.sock)" in_ct echo-labctl status
workers_pinned() {
  # cpu_affinity (turned on by configure) under the unit's system call filter, which
  # lets sched_setaffinity back in: every worker reports a CPU, and the
  # journal has no "cannot pin".
  local json; json=$(in_ct echo-labctl status --json) || return 1
  log "$json"
  python3 -c 'import json, sys; w = json.loads(sys.argv[1])["stats"]["workers"]; sys.exit(0 if w and all(x["cpu"] is not None for x in w) else 1)' "$json" || return 1
  ! in_ct journalctl --no-pager -u echo-lab.service | grep -F "cannot pin"
}
check "the sandboxed service pins its workers to CPUs (cpu_affinity)" workers_pinned

reload_idle() {
  set_conf idle_timeout 2 || return 1
  in_ct systemctl reload echo-lab || return 1
  tcp expect 127.0.0.1 "$PORT" "[echo-lab] idle for" || return 1
  # Back to a long idle timeout for the checks that follow.
  set_conf idle_timeout '"5m"' && in_ct systemctl reload echo-lab
}
check "systemctl reload applies idle_timeout = 2 (idle client gets '[echo-lab] idle for ...')" reload_idle

broken_reload() {
  local before after
  before=$(main_pid echo-lab.service)
  in_ct cp /etc/echo-lab.toml /tmp/good.toml
  in_ct sh -c 'echo "no_such_key = 1" >>/etc/echo-lab.toml'
  if in_ct systemctl reload echo-lab; then echo "reload succeeded on a broken config"; return 1; fi
  after=$(main_pid echo-lab.service)
  in_ct cp /tmp/good.toml /etc/echo-lab.toml
  [ "$before" = "$after" ] && unit_is echo-lab.service active && tcp echo 127.0.0.1 "$PORT"
}
check "broken config: systemctl reload fails, the service keeps serving" broken_reload
check "echo-labctl reload succeeds on a good config" in_ct echo-labctl reload

journal_priorities() {
  # Lines the daemon logged, with the priorities the journal recorded.
  in_ct journalctl -u echo-lab.service -o json --no-pager >"$TMP/journal.json" || return 1
  python3 - "$TMP/journal.json" <<'EOF'
import json, sys
prios = {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("_COMM") != "echo-lab" or "MESSAGE" not in e:
        continue
    msg = e["MESSAGE"] if isinstance(e["MESSAGE"], str) else bytes(e["MESSAGE"]).decode(errors="replace")
    if msg.startswith("<") and msg[1:2].isdigit() and msg[2:3] == ">":
        sys.exit(f"priority prefix left in the message: {msg!r}")
    prios.setdefault(e.get("PRIORITY"), msg)
for p, m in sorted(prios.items()):
    print(f"PRIORITY={p}: {m}")
# info and debug lines at least (the test runs with level = "debug")
sys.exit(0 if len(prios) >= 2 else "fewer than two priorities among the daemon's lines")
EOF
}
check "journalctl -u echo-lab -o json: daemon lines carry their PRIORITY" journal_priorities

live_exposure() {
  local s
  s=$(in_ct systemd-analyze security --no-pager echo-lab.service | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
  echo "exposure $s"
  [ -n "$s" ] && awk -v s="$s" 'BEGIN { exit !(s <= 1.5) }'
}
if live_exposure >"$TMP/exp" 2>>"$LOG"; then ok "systemd-analyze security echo-lab.service (installed): $(cat "$TMP/exp") <= 1.5"
else not_ok "systemd-analyze security echo-lab.service (installed): $(cat "$TMP/exp") <= 1.5"; fi

verify_installed() {
  in_ct sh -ec 'cd /usr/lib/systemd/system
    systemd-analyze verify --man=no echo-lab.service echo-lab.socket
    ln -sf echo-lab@.service /etc/systemd/system/echo-lab@verify.service
    systemd-analyze verify --man=no /etc/systemd/system/echo-lab@verify.service
    rm -f /etc/systemd/system/echo-lab@verify.service'
}
check "systemd-analyze verify: installed units (container)" verify_installed

loop_count() { cat "${2:-$TMP/loop.stop}.count" 2>/dev/null || echo 0; }  # [_ STOPFILE]
loop_reached() { [ "$(loop_count _ "${2:-}")" -ge "$1" ]; }                # N [STOPFILE]
restart_loop() {
  local before after rc lrc n stop=$TMP/loop.stop
  before=$(main_pid echo-lab.service)
  rm -f "$stop" "$stop.count"
  tcp loop 127.0.0.1 "$PORT" "$stop" >"$TMP/loop.out" 2>&1 &
  loop_pid=$!
  wait_for "$WAIT" loop_reached 20        # the loop is served by the old daemon
  in_ct systemctl restart echo-lab; rc=$?
  n=$(loop_count)
  wait_for "$WAIT" loop_reached $((n + 20))  # and by the new one
  touch "$stop"
  wait "$loop_pid"; lrc=$?
  loop_pid=
  after=$(main_pid echo-lab.service)
  echo "restart rc=$rc, loop: $(cat "$TMP/loop.out"), MainPID $before -> $after"
  [ "$rc" = 0 ] && [ "$lrc" = 0 ] && [ "$before" != "$after" ]
}
if restart_loop >"$TMP/restart" 2>>"$LOG"; then ok "systemctl restart under a connect loop refuses nothing ($(cat "$TMP/restart"))"
else not_ok "systemctl restart under a connect loop refuses nothing ($(cat "$TMP/restart"))"; fi

# ------------------------------------------------------------------ faults
# kill -9 of the main process under 4 clients doing round trips on kept
# connections: systemd restarts it (Restart=on-failure), the new daemon gets
# the listening socket back from the fd store, and no connect is refused in
# between (the kernel queues them on the stored socket). The connections
# open when the daemon died are lost: at most one per client, each
# replaced by a new one.
new_main() { local p; p=$(main_pid echo-lab.service); [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$1" ] && unit_is echo-lab.service active; }
field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" "$2"; }
kill_loop() {
  local before after r0 r1 lrc n stop=$TMP/kloop.stop clients=4 bad=
  before=$(main_pid echo-lab.service)
  r0=$(in_ct systemctl show -P NRestarts echo-lab.service)
  rm -f "$stop" "$stop.count"
  tcp reconnect 127.0.0.1 "$PORT" "$stop" "$clients" >"$TMP/kloop.out" 2>&1 &
  loop_pid=$!
  wait_for "$WAIT" loop_reached 100 "$stop" || bad="loop not served before the kill"
  in_ct kill -KILL "$before" || bad="kill -KILL $before failed"
  wait_for $((WAIT + 5)) new_main "$before" || bad="no new main process"
  n=$(loop_count _ "$stop")
  wait_for "$WAIT" loop_reached $((n + 100)) "$stop" || bad="loop not served after the restart"
  touch "$stop"
  wait "$loop_pid"; lrc=$?
  loop_pid=
  after=$(main_pid echo-lab.service)
  r1=$(in_ct systemctl show -P NRestarts echo-lab.service)
  local refused failed reconnects
  refused=$(field refused "$TMP/kloop.out"); failed=$(field failed "$TMP/kloop.out"); reconnects=$(field reconnects "$TMP/kloop.out")
  echo "$(cat "$TMP/kloop.out"); MainPID $before -> $after, NRestarts $r0 -> $r1"
  in_ct journalctl -u echo-lab.service --no-pager -o cat >"$TMP/kloop.journal" 2>&1
  cat "$TMP/kloop.journal" >>"$LOG"
  [ -z "$bad" ] || { echo "FAIL: $bad" >&2; return 1; }
  [ "$lrc" = 0 ] || { echo "FAIL: loop exit $lrc (no round trip, or refused connects)" >&2; return 1; }
  [ "$refused" = 0 ] || { echo "FAIL: refused=$refused" >&2; return 1; }
  [ -n "$failed" ] && [ "$failed" -le "$clients" ] && [ "$reconnects" -le "$failed" ] || { echo "FAIL: more lost connections than clients" >&2; return 1; }
  [ "$after" != "$before" ] || { echo "FAIL: MainPID unchanged" >&2; return 1; }
  [ "$r1" = $((r0 + 1)) ] || { echo "FAIL: NRestarts did not go up by one" >&2; return 1; }
  grep -q "status=9/KILL" "$TMP/kloop.journal" || { echo "FAIL: journal has no status=9/KILL" >&2; return 1; }
  in_ct journalctl -u echo-lab.service --no-pager -o cat "_PID=$after" | grep -q "reusing the listening socket kept by the service manager" ||
    { echo "FAIL: the new daemon did not reuse the stored listener" >&2; return 1; }
}
if kill_loop >"$TMP/kill" 2>>"$LOG"; then ok "kill -9 under a reconnecting loop: restarted, stored listener reused, nothing refused ($(cat "$TMP/kill"))"
else not_ok "kill -9 under a reconnecting loop: restarted, stored listener reused, nothing refused ($(cat "$TMP/kill"))"; fi

# A reload onto a port another process holds: the config checks, the
# daemon cannot bind it, echo-labctl reload (ExecReload=) reports that, so
# systemctl reload fails; the old listener keeps serving; systemctl status
# says why (the daemon's STATUS= and the journal name the address).
held_port_reload() {
  local before after rc=0 ready=$TMP/holder.ready st
  rm -f "$ready"
  python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
open(sys.argv[2], "w").close(); time.sleep(600)' "$PORT_HELD" "$ready" &
  holder_pid=$!
  wait_for "$WAIT" test -e "$ready" || { echo "no holder on $PORT_HELD"; return 1; }
  before=$(main_pid echo-lab.service)
  in_ct cp /etc/echo-lab.toml /tmp/before-held.toml
  set_conf port "$PORT_HELD" || return 1
  if in_ct systemctl reload echo-lab; then echo "FAIL: reload succeeded although $PORT_HELD is held"; rc=1; fi
  st=$(in_ct systemctl status --no-pager --full -n 20 echo-lab.service)
  echo "$st"
  grep -F "127.0.0.1:$PORT_HELD" <<<"$st" | grep -q "Address already in use" || { echo "FAIL: status does not say why"; rc=1; }
  tcp echo 127.0.0.1 "$PORT" || { echo "FAIL: old listener does not serve"; rc=1; }
  after=$(main_pid echo-lab.service)
  [ "$before" = "$after" ] && unit_is echo-lab.service active || { echo "FAIL: service restarted or not active"; rc=1; }
  in_ct cp /tmp/before-held.toml /etc/echo-lab.toml
  kill "$holder_pid"; wait "$holder_pid" 2>/dev/null; holder_pid=
  in_ct systemctl reload echo-lab || { echo "FAIL: reload of the old config failed"; rc=1; }
  tcp echo 127.0.0.1 "$PORT" || rc=1
  return $rc
}
check "reload onto a port another process holds: systemctl reload fails, old listener serves, status names 127.0.0.1:$PORT_HELD" held_port_reload

# Resource limits: 10 000 connections at once (the default max_connections)
# - idle ones, a hog that sends and never reads, 100 slow senders, a probe -
# and the 10 001st refused with the busy notice, measured against the
# unit's MemoryMax= and TasksMax=.
num() { [[ $1 =~ ^[0-9]+$ ]]; }
v1_dir() {  # v1_dir CONTROLLER: this shell's group in that cgroup v1 hierarchy
  local rel
  rel=$(awk -F: -v c="$1" '$2 == c { print $3 }' /proc/self/cgroup)
  [ -n "$rel" ] && [ -d "/sys/fs/cgroup/$1$rel" ] && printf '/sys/fs/cgroup/%s%s' "$1" "${rel%/}"
}
MEM_SRC=
# start_accounted: (re)start echo-lab.service so that what the unit's
# cgroup would be charged is measurable (sets MEM_SRC).
start_accounted() {
  local mem_max=$1 tasks_max=$2 cur
  cur=$(in_ct systemctl show -P MemoryCurrent echo-lab.service)
  if num "$cur"; then
    MEM_SRC=systemd
    in_ct systemctl restart echo-lab
    return
  fi
  # No memory controller in the container: groups in the host's v1
  # hierarchies, with the unit's limits, entered by the container's init
  # just for the restart, so the daemon (and its ExecStartPre=) is born in
  # them and charged from its first page, kernel memory included.
  local mp pp init om op rc=0
  mp=$(v1_dir memory) && pp=$(v1_dir pids) || { echo "no memory accounting: systemd has none, no cgroup v1 memory and pids hierarchies"; return 1; }
  CG_MEM=$mp/echo-lab-$NAME-svc CG_PIDS=$pp/echo-lab-$NAME-svc
  mkdir -p "$CG_MEM" "$CG_PIDS" || return 1
  echo "$mem_max" >"$CG_MEM/memory.limit_in_bytes" &&
    echo "$mem_max" >"$CG_MEM/memory.kmem.tcp.limit_in_bytes" &&  # counts socket buffers too
    echo "$tasks_max" >"$CG_PIDS/pids.max" || return 1
  init=$("$CT" pid "$NAME") || return 1
  om=/sys/fs/cgroup/memory$(awk -F: '$2 == "memory" { print $3 }' "/proc/$init/cgroup")
  op=/sys/fs/cgroup/pids$(awk -F: '$2 == "pids" { print $3 }' "/proc/$init/cgroup")
  echo "$init" >"$CG_MEM/cgroup.procs" && echo "$init" >"$CG_PIDS/cgroup.procs" || return 1
  in_ct systemctl restart echo-lab || rc=1
  echo "$init" >"$om/cgroup.procs"; echo "$init" >"$op/cgroup.procs"
  [ $rc = 0 ] || return 1
  MEM_SRC="cgroup v1 on the host"
  # Exactly the daemon is left in them.
  local procs nspid
  procs=$(cat "$CG_MEM/cgroup.procs")
  [ "$(wc -w <<<"$procs")" = 1 ] || { echo "expected the daemon alone in $CG_MEM, got: $procs"; return 1; }
  nspid=$(awk '/^NSpid:/ { print $NF }' "/proc/$procs/status")
  [ "$nspid" = "$(main_pid echo-lab.service)" ] || { echo "pid $procs (in-container $nspid) in $CG_MEM is not MainPID"; return 1; }
}
# sample: prints "MEMORY_BYTES TASKS" now.
sample() {
  if [ "$MEM_SRC" = systemd ]; then
    echo "$(in_ct systemctl show -P MemoryCurrent echo-lab.service) $(in_ct systemctl show -P TasksCurrent echo-lab.service)"
  else
    echo "$(($(cat "$CG_MEM/memory.usage_in_bytes") + $(cat "$CG_MEM/memory.kmem.tcp.usage_in_bytes"))) $(cat "$CG_PIDS/pids.current")"
  fi
}
resources() {
  local mem_max tasks_max pid
  mem_max=$(in_ct systemctl show -P MemoryMax echo-lab.service)
  tasks_max=$(in_ct systemctl show -P TasksMax echo-lab.service)
  num "$mem_max" && num "$tasks_max" || { echo "MemoryMax=$mem_max TasksMax=$tasks_max: not both set in the unit"; return 1; }
  echo "systemd's own accounting: MemoryCurrent=$(in_ct systemctl show -P MemoryCurrent echo-lab.service) TasksCurrent=$(in_ct systemctl show -P TasksCurrent echo-lab.service)" >&2
  start_accounted "$mem_max" "$tasks_max" || return 1
  wait_for "$WAIT" tcp echo 127.0.0.1 "$PORT" || return 1
  pid=$(main_pid echo-lab.service)
  local base; base=$(sample)
  local ready=$TMP/hold.ready stop=$TMP/hold.stop hrc
  rm -f "$ready" "$stop"
  TCP_TIMEOUT=$WAIT python3 "$TCP" hold 127.0.0.1 "$PORT" 10000 100 "$ready" "$stop" >"$TMP/hold.out" 2>&1 &
  loop_pid=$!
  local deadline=$((SECONDS + 120))
  until [ -e "$ready" ]; do
    kill -0 "$loop_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || { touch "$stop"; wait "$loop_pid"; loop_pid=; echo "FAIL: connections not all up: $(cat "$TMP/hold.out")"; return 1; }
    sleep 0.1
  done
  # 8 s of the hostile load, sampled every 0.2 s.
  local m t max_m=0 max_t=0 end=$((SECONDS + 8)) samples=0 first=
  while [ $SECONDS -lt $end ]; do
    read -r m t <<<"$(sample)"
    num "$m" && num "$t" || { echo "FAIL: bad sample '$m $t'"; break; }
    [ -n "$first" ] || first="$m $t"
    [ "$m" -gt "$max_m" ] && max_m=$m
    [ "$t" -gt "$max_t" ] && max_t=$t
    samples=$((samples + 1))
    sleep 0.2
  done
  touch "$stop"
  wait "$loop_pid"; hrc=$?
  loop_pid=
  local src_peak=""
  if [ "$MEM_SRC" != systemd ]; then
    # The kernel's own high-water marks, in case a sample missed the top.
    local pm pt
    pm=$(($(cat "$CG_MEM/memory.max_usage_in_bytes") + $(cat "$CG_MEM/memory.kmem.tcp.max_usage_in_bytes")))
    pt=$(cat "$CG_PIDS/pids.peak" 2>/dev/null || echo 0)
    [ "$pm" -gt "$max_m" ] && max_m=$pm
    [ "$pt" -gt "$max_t" ] && max_t=$pt
    src_peak="; socket buffers (memory.kmem.tcp) peak $(($(cat "$CG_MEM/memory.kmem.tcp.max_usage_in_bytes") / 1024)) KiB; limit hits: memory failcnt $(cat "$CG_MEM/memory.failcnt"), tcp failcnt $(cat "$CG_MEM/memory.kmem.tcp.failcnt"), pids $(awk '{print $2}' "$CG_PIDS/pids.events")"
  fi
  local after; after=$(sample)
  local mib=$((1024 * 1024))
  echo "$(cat "$TMP/hold.out")"
  echo "source: $MEM_SRC; before the load: $((${base% *} / 1024)) KiB, ${base#* } tasks; all 10000 open: $((${first% *} / 1024)) KiB, ${first#* } tasks; after they closed: $((${after% *} / 1024)) KiB, ${after#* } tasks; $samples samples$src_peak"
  echo "memory peak $((max_m / 1024)) KiB of MemoryMax $((mem_max / mib)) MiB (margin $(((mem_max - max_m) / mib)) MiB, $((100 * max_m / mem_max))% used); tasks peak $max_t of TasksMax $tasks_max (margin $((tasks_max - max_t)))"
  [ "$hrc" = 0 ] || { echo "FAIL: the clients failed"; return 1; }
  [ "$max_m" -lt "$mem_max" ] && [ "$max_t" -lt "$tasks_max" ] || { echo "FAIL: at or over a limit"; return 1; }
  [ "$(main_pid echo-lab.service)" = "$pid" ] && unit_is echo-lab.service active || { echo "FAIL: the daemon did not survive"; return 1; }
}
if resources >"$TMP/res" 2>>"$LOG"; then
  ok "10000 connections (hog, 100 slow senders) stay under MemoryMax= and TasksMax="
else
  not_ok "10000 connections (hog, 100 slow senders) stay under MemoryMax= and TasksMax="
fi
sed 's/^/#   /' "$TMP/res"
cat "$TMP/res" >>"$LOG"
cg_remove "$CG_MEM"; cg_remove "$CG_PIDS"; CG_MEM= CG_PIDS=

drain() {
  tcp drain 127.0.0.1 "$PORT" -- "$CT" exec "$NAME" systemctl stop --no-block echo-lab || return 1
  wait_for "$WAIT" unit_is echo-lab.service inactive || return 1
  [ "$(in_ct systemctl show -P Result echo-lab.service)" = success ]
}
check "systemctl stop drains: client gets '[echo-lab] shutting down', echo goes on, clean exit" drain

# -------------------------------------------------------- socket activation
socket_activation() {
  in_ct systemctl start echo-lab.socket || return 1
  unit_is echo-lab.service inactive || { echo "service already running"; return 1; }
  tcp echo 127.0.0.1 7 || return 1
  wait_for "$WAIT" unit_is echo-lab.service active || return 1
  tcp echo ::1 7
}
check "echo-lab.socket: first connection to port 7 starts echo-lab.service (IPv4 and IPv6)" socket_activation
socket_stop() {
  in_ct systemctl stop echo-lab.socket echo-lab.service && wait_for "$WAIT" port_free 7
}
check "echo-lab.socket and echo-lab.service stop, port 7 released" socket_stop

# ----------------------------------------------------------------- instances
instances() {
  in_ct mkdir -p /etc/echo-lab
  local i p
  for i in a:$PORT_A b:$PORT_B; do
    p=${i#*:}; i=${i%%:*}
    in_ct cp /tmp/good.toml "/etc/echo-lab/$i.toml"
    set_conf port "$p" "/etc/echo-lab/$i.toml" || return 1
  done
  in_ct systemctl start echo-lab@a echo-lab@b || return 1
  tcp echo 127.0.0.1 "$PORT_A" && tcp echo 127.0.0.1 "$PORT_B" || return 1
  unit_is echo-lab@a.service active && unit_is echo-lab@b.service active
}
check "two instances at once: echo-lab@a ($PORT_A), echo-lab@b ($PORT_B)" instances
check "echo-labctl --socket /run/echo-lab-a/control.sock status reaches instance a" \
  in_ct echo-labctl --socket /run/echo-lab-a/control.sock status
socket_instance() {
  in_ct cp /tmp/good.toml "/etc/echo-lab/$PORT_S.toml"
  in_ct systemctl start "echo-lab@$PORT_S.socket" || return 1
  tcp echo 127.0.0.1 "$PORT_S" || return 1
  wait_for "$WAIT" unit_is "echo-lab@$PORT_S.service" active
}
check "echo-lab@$PORT_S.socket activates echo-lab@$PORT_S.service" socket_instance
check "instances stop" in_ct systemctl stop echo-lab@a echo-lab@b "echo-lab@$PORT_S.socket" "echo-lab@$PORT_S.service"

# ------------------------------------------------------------ sysvinit script
# Run the script itself, not the systemctl redirection of init-functions.
sysv() {
  local rc=0
  in_ct env SYSTEMCTL_SKIP_REDIRECT=1 /etc/init.d/echo-lab start || return 1
  wait_for "$WAIT" tcp echo 127.0.0.1 "$PORT" || rc=1
  in_ct sh -c 'kill -0 "$(cat /run/echo-lab.pid)"' || rc=1
  in_ct env SYSTEMCTL_SKIP_REDIRECT=1 /etc/init.d/echo-lab status || rc=1
  in_ct env SYSTEMCTL_SKIP_REDIRECT=1 /etc/init.d/echo-lab reload || rc=1
  in_ct env SYSTEMCTL_SKIP_REDIRECT=1 /etc/init.d/echo-lab stop || rc=1
  in_ct test ! -e /run/echo-lab.pid || rc=1
  wait_for "$WAIT" port_free "$PORT" || rc=1
  return $rc
}
check "sysvinit script: start (--daemon --pidfile), status, reload, stop" sysv

# ------------------------------------------------------- --daemon on the host
host_daemon() {
  local bin=$PKG/usr/bin/echo-lab pidfile=$TMP/echo-lab.pid conf=$TMP/host.toml
  cat >"$conf" <<EOF
host = "127.0.0.1"
port = $PORT_HOST
drain_timeout = "2s"
control_socket = "$TMP/control.sock"
[log]
target = "stderr"
EOF
  timeout "$WAIT" "$bin" --daemon --pidfile "$pidfile" --config "$conf" || { echo "--daemon did not return 0"; return 1; }
  wait_for "$WAIT" test -s "$pidfile" || { echo "no pidfile"; return 1; }
  host_daemon_pid=$(cat "$pidfile")
  kill -0 "$host_daemon_pid" || return 1
  # detached: a new session (the classic double fork leaves the daemon a
  # non-leader member of it, so it can never regain a terminal), no
  # controlling terminal, not in our session
  local sid tty
  sid=$(ps -o sid= -p "$host_daemon_pid" | tr -d ' ')
  tty=$(ps -o tty= -p "$host_daemon_pid" | tr -d ' ')
  [ "$sid" != "$(ps -o sid= -p $$ | tr -d ' ')" ] || { echo "still in the caller's session"; return 1; }
  [ "$tty" = "?" ] || { echo "has a controlling terminal: $tty"; return 1; }
  wait_for "$WAIT" tcp echo 127.0.0.1 "$PORT_HOST" || return 1
  kill -TERM "$host_daemon_pid"
  wait_for "$WAIT" sh -c "! kill -0 $host_daemon_pid" || { echo "still running after SIGTERM"; return 1; }
  host_daemon_pid=
  [ ! -e "$pidfile" ] || { echo "pidfile left behind"; return 1; }
}
check "echo-lab --daemon --pidfile on the host: detaches, serves, pidfile removed on SIGTERM" host_daemon

finish
