#!/usr/bin/env bash
# udp.sh: the UDP echo figures of docs/SCALING.md ("UDP echo"), on loopback:
#
#   1. UDP echoes per second at 64 bytes, echo-lab against
#      bench/comparison/udp-echo (the minimal recv_from/send_to server), in
#      the same run;
#   2. system calls per datagram under load, from echo-lab's own counters
#      (recvmmsg/sendmmsg calls per datagram) and from `strace -f -c` over a
#      bounded flood (each server traced alike);
#   3. the per-source cap: echo-lab with its default rate limit, loaded far
#      above it.
#
# Usage: bench/udp.sh [SECS]   (seconds per measurement, default 3)
# Needs target/release/echo-lab and echo-labctl (cargo build --release);
# builds bench/comparison/udp-echo. strace is optional (step 2b is skipped without).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
secs=${1:-3}
ctl=$root/target/release/echo-labctl
lab=$root/target/release/echo-lab
[ -x "$ctl" ] && [ -x "$lab" ] || { echo "build first: cargo build --release" >&2; exit 1; }
(cd "$root/bench/comparison" && cargo build --release --locked -q -p udp-echo)
peer=$root/bench/comparison/target/release/udp-echo

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

# start_lab NAME EXTRA-CONFIG: starts echo-lab, sets LAB_ADDR and LAB_PID.
start_lab() {
    local name=$1 extra=$2
    printf 'host = "127.0.0.1"\nport = 0\npool_size = 1\nudp = true\ncontrol_socket = "%s"\n%b' \
        "$tmp/$name.sock" "$extra" > "$tmp/$name.toml"
    "$lab" --config "$tmp/$name.toml" 2> "$tmp/$name.log" &
    LAB_PID=$!; pids+=("$LAB_PID")
    for _ in $(seq 100); do
        grep -q 'listening on' "$tmp/$name.log" && break
        sleep 0.1
    done
    LAB_ADDR=$(sed -n 's/.*udp echo on \([0-9.:]*\).*/\1/p' "$tmp/$name.log" | head -1)
    [ -n "$LAB_ADDR" ] || { cat "$tmp/$name.log" >&2; exit 1; }
}

status_json() { "$ctl" --socket "$tmp/$1.sock" status --json; }

# The report lines, from bench --json (stdin) and status --json.
cat > "$tmp/fig.py" <<'PY'
import json, sys
what = sys.argv[1]
if what == "summary":
    r = json.load(sys.stdin)
    lat = r["latency_us"]
    print("%-14s -c %-3d %9.0f echoes/s  p50 %.1f us  p99 %.1f us  jitter %.1f us  lost %d of %d"
          % (sys.argv[2], r["flows"], r["round_trips_per_sec"], lat["p50"], lat["p99"],
             r["jitter_us"], r["lost"], r["sent"]))
elif what == "calls":
    a, b = json.loads(sys.argv[2])["udp"], json.loads(sys.argv[3])["udp"]
    n = b["received"] - a["received"]
    rc, sc = b["recv_calls"] - a["recv_calls"], b["send_calls"] - a["send_calls"]
    print("%d datagrams, %d recvmmsg + %d sendmmsg = %.3f calls per datagram (%.1f datagrams per recvmmsg)"
          % (n, rc, sc, (rc + sc) / n, n / rc))
elif what == "cap":
    r = json.load(open(sys.argv[2]))
    print("offered %.0f datagrams/s from one source; echoed %d in %.2f s = %.1f/s; lost %.1f%%"
          % (r["sent"] / r["elapsed_secs"], r["echoed"], r["elapsed_secs"],
             r["round_trips_per_sec"], r["loss_pct"]))
elif what == "status":
    u = json.load(sys.stdin)["udp"]
    print("status: received %d, echoed %d, dropped_rate %d" % (u["received"], u["echoed"], u["dropped_rate"]))
PY
summary() { python3 "$tmp/fig.py" summary "$1"; }

start_lab lab 'udp_rate_packets = 0\nudp_rate_bytes = 0\n'
"$peer" 127.0.0.1:0 > "$tmp/peer.out" &
pids+=("$!"); peer_pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$tmp/peer.out" && break; sleep 0.1; done
peer_addr=$(sed -n 's/listening on //p' "$tmp/peer.out")

echo "== 1. UDP echoes/s, 64-byte datagrams, ${secs} s each (echo-lab rate limit off)"
for c in 1 32; do
    for round in 1 2; do
        "$ctl" bench --udp "$LAB_ADDR" -c $c -s 64 -w 0.5 -d "$secs" --json | summary echo-lab
        "$ctl" bench --udp "$peer_addr" -c $c -s 64 -w 0.5 -d "$secs" --json | summary udp-echo
    done
done

echo "== 2a. echo-lab system calls per datagram, from its counters (-c 32, ${secs} s)"
before=$(status_json lab)
"$ctl" bench --udp "$LAB_ADDR" -c 32 -s 64 -d "$secs" --json > /dev/null
after=$(status_json lab)
python3 "$tmp/fig.py" calls "$before" "$after"

if command -v strace > /dev/null; then
    echo "== 2b. strace -f -c over a bounded flood (-c 32 -n 100000), each server"
    for who in lab peer; do
        if [ $who = lab ]; then pid=$LAB_PID; addr=$LAB_ADDR; else pid=$peer_pid; addr=$peer_addr; fi
        strace -f -c -o "$tmp/strace.$who" -p "$pid" &
        spid=$!
        sleep 0.5
        "$ctl" bench --udp "$addr" -c 32 -s 64 -n 100000 --json | summary "$who+strace"
        kill -INT $spid; wait $spid 2>/dev/null || true
        echo "-- $who: system calls while tracing"
        grep -E 'recvmmsg|sendmmsg|recvfrom|sendto|epoll_wait|total' "$tmp/strace.$who"
    done
fi

echo "== 3. the per-source cap: echo-lab defaults (100 datagrams/s, 64 KiB/s per source), offered far more"
start_lab capped ''
"$ctl" bench --udp "$LAB_ADDR" -c 256 --threads 1 -s 64 -d 5 --timeout 0.1 --json > "$tmp/cap.json" || true
python3 "$tmp/fig.py" cap "$tmp/cap.json"
status_json capped | python3 "$tmp/fig.py" status
