#!/usr/bin/env bash
# bench/fleet.sh: the fleet of tests/fleet.rs with more load — echo-lab
# instances each in a network namespace of its own (own address on a
# bridge), HAProxy in front (mode tcp, roundrobin, httpchk GET /readyz,
# send-proxy-v2), measured through HAProxy with 1, 2 and 3 instances in
# the backend: round trips/s (`echo-labctl bench`, 64-byte ping-pong) and
# sessions/s (`echo-labctl who --count`, one connection per session).
#
# Usage: sudo bench/fleet.sh [--duration SECS] [--connections N] [--sessions N] [--smoke]
#
# Needs root (ip netns) and haproxy. Every namespace and process made here
# is removed on exit. On a 2-core machine the balancer, the instances and
# the client share the same two cores: the figures show what the extra hop
# costs, not scaling.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
duration=5
connections=50
sessions=2000
while [ $# -gt 0 ]; do
    case $1 in
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --smoke) duration=1; connections=8; sessions=100; shift ;;
        *) echo "usage: $0 [--duration SECS] [--connections N] [--sessions N] [--smoke]" >&2; exit 64 ;;
    esac
done
say() { echo "fleet.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "needs root (network namespaces)"; exit 77; }
command -v haproxy >/dev/null || { say "haproxy is not installed"; exit 69; }
(cd "$root" && cargo build --release --quiet --bins)
lab=$root/target/release/echo-lab
ctl=$root/target/release/echo-labctl

p=elb$$
lb=$p-lb
work=$(mktemp -d)
pids=()
cleanup() {
    for x in "${pids[@]}"; do kill "$x" 2>/dev/null || true; done
    for x in "${pids[@]}"; do wait "$x" 2>/dev/null || true; done
    for ns in "$lb" "$p-e1" "$p-e2" "$p-e3"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$lb"
ip -n "$lb" link set lo up
ip -n "$lb" link add br0 type bridge
ip -n "$lb" addr add 10.77.0.1/24 dev br0
ip -n "$lb" link set br0 up
for i in 1 2 3; do
    ns=$p-e$i
    ip netns add "$ns"
    ip -n "$lb" link add "v$i" type veth peer name eth0 netns "$ns"
    ip -n "$lb" link set "v$i" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "10.77.0.1$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    cat >"$work/e$i.toml" <<TOML
host = "10.77.0.1$i"
port = 7007
pool_size = 1
backlog = 4096
idle_timeout = 0
instance = "e$i"
metrics_listen = "10.77.0.1$i:9707"
control_socket = "$work/e$i.sock"
[[listen]]
address = "10.77.0.1$i:7100"
proxy_protocol = true
proxy_trusted = ["10.77.0.1"]
[[listen]]
address = "10.77.0.1$i:7101"
mode = "who"
proxy_protocol = true
proxy_trusted = ["10.77.0.1"]
[log]
level = "warn"
sessions = false
TOML
    ip netns exec "$ns" "$lab" --config "$work/e$i.toml" 2>"$work/e$i.log" &
    pids+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 200); do "$ctl" --socket "$work/e$i.sock" status >/dev/null 2>&1 && break; sleep 0.05; done
done

# haproxy_with N: HAProxy in front of the first N instances.
haproxy_pid=
haproxy_with() {
    [ -n "$haproxy_pid" ] && { kill "$haproxy_pid"; wait "$haproxy_pid" 2>/dev/null || true; }
    {
        printf 'global\n  maxconn 8000\n  nbthread 1\n  stats socket %s mode 600 level admin\n' "$work/haproxy.sock"
        printf 'defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n'
        printf 'frontend echo\n  bind 10.77.0.1:7000\n  default_backend echo\n'
        printf 'frontend who\n  bind 10.77.0.1:7001\n  default_backend who\n'
        for b in echo:7100 who:7101; do
            printf 'backend %s\n  balance roundrobin\n  option httpchk GET /readyz\n' "${b%%:*}"
            printf '  default-server check port 9707 inter 500ms fall 2 rise 2 send-proxy-v2\n'
            for i in $(seq "$1"); do printf '  server e%s 10.77.0.1%s:%s\n' "$i" "$i" "${b##*:}"; done
        done
    } >"$work/haproxy.cfg"
    ip netns exec "$lb" haproxy -db -f "$work/haproxy.cfg" 2>"$work/haproxy.log" &
    haproxy_pid=$!
    pids+=($haproxy_pid)
    # Until every server is UP in both backends.
    for _ in $(seq 200); do
        up=$(echo "show stat" | python3 -c '
import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
d=b""
while (c:=s.recv(65536)): d+=c
print(sum(1 for l in d.decode().splitlines() if ",UP," in l and not l.startswith(("echo,BACKEND","who,BACKEND","echo,FRONTEND","who,FRONTEND"))))
' "$work/haproxy.sock" 2>/dev/null || echo 0)
        [ "$up" = $(( 2 * $1 )) ] && return 0
        sleep 0.05
    done
    say "haproxy did not see $1 server(s) UP"; cat "$work/haproxy.log" >&2; return 1
}

rtt() {
    ip netns exec "$lb" "$ctl" bench 10.77.0.1:7000 --connections "$connections" --size 64 \
        --duration "$duration" --warmup 1 --json 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print("%d %.0f %d" % (d["round_trips_per_sec"], d["latency_us"]["p99"], d["errors"]["total"]))'
}
sessions_per_sec() {
    local t0 t1 out
    t0=$(date +%s.%N)
    out=$(ip netns exec "$lb" "$ctl" who 10.77.0.1:7001 --count "$sessions" || true)
    t1=$(date +%s.%N)
    local failed; failed=$(awk '$1=="(failed)" {print $2}' <<<"$out")
    python3 -c "print('%d %s' % ($sessions / ($t1 - $t0), '$failed'))"
}

say "measuring: $connections connections, 64 B, ${duration}s per point; $sessions who sessions (one after another)"
echo "| instances behind HAProxy | round trips/s | p99 (µs) | failed | sessions/s (sequential) | failed sessions |"
echo "|---:|---:|---:|---:|---:|---:|"
status=0
for n in 1 2 3; do
    haproxy_with "$n"
    read -r rps p99 err < <(rtt)
    read -r sps sfail < <(sessions_per_sec)
    echo "| $n | $rps | $p99 | $err | $sps | $sfail |"
    [ "$err" = 0 ] && [ "$sfail" = 0 ] || status=1
done
exit $status
