#!/usr/bin/env bash
# bench/haproxy.sh: scaling out, for real — HAProxy (mode tcp) in front of
# two echo-lab instances on loopback, measured with `echo-labctl bench`,
# next to one echo-lab instance measured directly.
#
# Usage: bench/haproxy.sh [--duration SECS] [--connections N] [--smoke]
#
# Everything runs on 127.0.0.1 with ephemeral ports; every process started
# here is stopped on exit. Needs haproxy (Debian package `haproxy`; the
# script installs it when run as root). Prints a Markdown table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
duration=5
connections=50
while [ $# -gt 0 ]; do
    case $1 in
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --smoke) duration=1; connections=8; shift ;;
        *) echo "usage: $0 [--duration SECS] [--connections N] [--smoke]" >&2; exit 64 ;;
    esac
done
say() { echo "haproxy.sh: $*" >&2; }

if ! command -v haproxy >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        say "installing haproxy"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null
    else
        say "haproxy is not installed"; exit 69
    fi
fi
(cd "$root" && cargo build --release --quiet --bins)
lab=$root/target/release/echo-lab
ctl=$root/target/release/echo-labctl

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# free_port: a port the kernel just handed out (bound, then released).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: until something accepts on 127.0.0.1:PORT (at most 10 s).
wait_port() {
    local i
    for i in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    say "nothing listens on port $1"; tail -n 5 "$work"/*.log >&2; return 1
}

# start_lab NAME POOL: an echo-lab on a fresh port, stored in $lab_port.
start_lab() {
    local port; port=$(free_port)
    cat >"$work/$1.toml" <<TOML
host = "127.0.0.1"
port = $port
backlog = 4096
pool_size = $2
idle_timeout = 0
control_socket = "$work/$1.sock"
[log]
level = "warn"
TOML
    "$lab" --config "$work/$1.toml" >/dev/null 2>"$work/$1.log" &
    pids+=($!)
    wait_port "$port"
    lab_port=$port
}

# bench ADDR: round trips/s and p99 (µs) of a 64-byte ping-pong.
bench() {
    "$ctl" bench "$1" --connections "$connections" --size 64 --duration "$duration" --warmup 1 --json 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print("%d %.0f %d" % (d["round_trips_per_sec"], d["latency_us"]["p99"], d["errors"]["total"]))'
}

start_lab a 1; a=$lab_port
start_lab b 1; b=$lab_port
start_lab single 2; single=$lab_port
front=$(free_port)
cat >"$work/haproxy.cfg" <<CFG
global
    maxconn 4000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend echo
    bind 127.0.0.1:$front
    default_backend labs
backend labs
    balance roundrobin
    server a 127.0.0.1:$a
    server b 127.0.0.1:$b
CFG
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>"$work/haproxy.log" &
pids+=($!)
wait_port "$front"

say "measuring: $connections connections, 64 B, ${duration}s per point"
read -r d_rps d_p99 d_err < <(bench "127.0.0.1:$single")
read -r h_rps h_p99 h_err < <(bench "127.0.0.1:$front")
read -r a_rps a_p99 a_err < <(bench "127.0.0.1:$a")

cat <<TABLE
| setup | round trips/s | p99 (µs) | failed |
|---|---:|---:|---:|
| one echo-lab, pool_size 2, direct | $d_rps | $d_p99 | $d_err |
| HAProxy (mode tcp, 1 thread) → two echo-lab, pool_size 1 each | $h_rps | $h_p99 | $h_err |
| one echo-lab, pool_size 1, direct | $a_rps | $a_p99 | $a_err |
TABLE
if [ "$d_err" != 0 ] || [ "$h_err" != 0 ] || [ "$a_err" != 0 ]; then
    say "failed round trips"; exit 1
fi
