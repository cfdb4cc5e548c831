#!/usr/bin/env bash
# faults.sh: how accurate echo-lab's faults are, on loopback (the figures of
# docs/PERFORMANCE.md, "Faults"), each measured with echo-labctl bench and
# with a client the project did not write (bench/faults.py, Python's own
# sockets):
#
#   1. delay 20 ms, no jitter, at 50 and 1000 connections: the round trip
#      through a listener with the delay minus the round trip through one
#      without it, at p50 and p99 (the delay's error);
#   2. delay 20 ms with jitter 10 ms: the spread of the round trips;
#   3. bandwidth 1 MB/s on one connection over 10 s, and 100 connections at
#      100 KB/s each: the rate achieved;
#   4. UDP loss 0.1 over 100 000 datagrams (fault_seed fixed): the share
#      dropped, against the 99 % binomial interval (9 755 to 10 245);
#   5. server CPU per round trip at a fixed rate, delay on and off.
#
# Usage: bench/faults.sh [SECS]  (seconds per latency measurement, default 5)
# Needs target/release/echo-lab and echo-labctl (cargo build --release),
# python3. Every load is to 127.0.0.1, bounded in connections and time.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
secs=${1:-5}
ctl=$root/target/release/echo-labctl
lab=$root/target/release/echo-lab
py=$root/bench/faults.py
[ -x "$ctl" ] && [ -x "$lab" ] || { echo "build first: cargo build --release" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

# start_lab NAME CONFIG: starts echo-lab with CONFIG (after host, port and
# the control socket); sets LAB_PID and ADDRS (every address it listens
# on, host/port first, then the [[listen]] tables).
start_lab() {
    local name=$1 extra=$2
    printf 'host = "127.0.0.1"\nport = 0\npool_size = 2\nmax_connections = 5000\ncontrol_socket = "%s"\n%b\n[log]\nsessions = false\n' \
        "$tmp/$name.sock" "$extra" > "$tmp/$name.toml"
    "$lab" --config "$tmp/$name.toml" 2> "$tmp/$name.log" &
    LAB_PID=$!; pids+=("$LAB_PID")
    for _ in $(seq 100); do
        grep -q 'listening on' "$tmp/$name.log" && break
        sleep 0.1
    done
    ADDRS=$(sed -nE 's/.*listening on (.*) \(pool.*/\1/p' "$tmp/$name.log" | sed 's/, /\n/g')
    [ -n "$ADDRS" ] || { cat "$tmp/$name.log" >&2; exit 1; }
}
stop_lab() { kill "$LAB_PID"; wait "$LAB_PID" 2>/dev/null || true; }
nth() { sed -n "${1}p" <<<"$ADDRS"; }

echo "# echo-lab faults accuracy, $(date -u +%FT%TZ), $(nproc) CPUs, loopback"

# The two TCP listeners: host/port plain, [[listen]] with the delay.
delay_cfg='[[listen]]\naddress = "127.0.0.1:0"\ndelay = "20ms"\n'
jitter_cfg='[[listen]]\naddress = "127.0.0.1:0"\ndelay = "20ms"\njitter = "10ms"\nfault_seed = 1\n'

echo
echo "## 1. delay 20 ms: observed RTT - (20 ms + undelayed RTT), ms"
start_lab delay "$delay_cfg"
plain=$(nth 1); delayed=$(nth 2)
# At a fixed rate (the same load with and without the delay: closed-loop
# ping-pong would load the undelayed listener far more), latency measured
# from each message's scheduled send time.
for spec in "50 2000" "1000 20000"; do
    set -- $spec; conns=$1; rate=$2
    p=$("$ctl" bench "$plain" --connections "$conns" --size 64 --duration "$secs" --warmup 1 --rate "$rate" --json)
    d=$("$ctl" bench "$delayed" --connections "$conns" --size 64 --duration "$secs" --warmup 1 --rate "$rate" --json)
    python3 - "$p" "$d" "$conns" "$rate" <<'PY'
import json, sys
p, d = (json.loads(a)["latency_us"] for a in sys.argv[1:3])
ms = lambda v: v / 1000
print(f"echo-labctl bench, {sys.argv[3]} conns at {sys.argv[4]}/s: undelayed p50 {ms(p['p50']):.3f} p99 {ms(p['p99']):.3f}; "
      f"delayed p50 {ms(d['p50']):.3f} p99 {ms(d['p99']):.3f} min {ms(d['min']):.3f}; "
      f"error p50 {ms(d['p50'])-20-ms(p['p50']):+.3f} p99 {ms(d['p99'])-20-ms(p['p99']):+.3f}")
PY
done
p=$(python3 "$py" rtt "$plain" 50 "$secs"); d=$(python3 "$py" rtt "$delayed" 50 "$secs")
python3 - "$p" "$d" <<'PY'
import json, sys
p, d = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"python3 sockets, 50 conns: undelayed p50 {p['p50_ms']:.3f} p99 {p['p99_ms']:.3f}; delayed p50 {d['p50_ms']:.3f} p99 {d['p99_ms']:.3f} min {d['min_ms']:.3f}; "
      f"error p50 {d['p50_ms']-20-p['p50_ms']:+.3f} p99 {d['p99_ms']-20-p['p99_ms']:+.3f}")
PY
stop_lab

echo
echo "## 2. delay 20 ms, jitter 10 ms: RTT spread, ms (uniform 10..30 expected, plus the undelayed RTT)"
start_lab jitter "$jitter_cfg"
j=$(nth 2)
d=$("$ctl" bench "$j" --connections 50 --size 64 --duration "$secs" --warmup 1 --rate 2000 --json)
q=$(python3 "$py" rtt "$j" 50 "$secs")
python3 - "$d" "$q" <<'PY'
import json, sys
d, q = json.loads(sys.argv[1])["latency_us"], json.loads(sys.argv[2])
print(f"echo-labctl bench, 50 conns at 2000/s: min {d['min']/1000:.3f} p50 {d['p50']/1000:.3f} p90 {d['p90']/1000:.3f} p99 {d['p99']/1000:.3f} max {d['max']/1000:.3f}")
print(f"python3 sockets, 50 conns: min {q['min_ms']:.3f} p1 {q['p1_ms']:.3f} p50 {q['p50_ms']:.3f} p99 {q['p99_ms']:.3f} max {q['max_ms']:.3f}")
PY
stop_lab

echo
echo "## 3. bandwidth: achieved rate"
start_lab bw '[[listen]]\naddress = "127.0.0.1:0"\nbandwidth = "1MB/s"\n[[listen]]\naddress = "127.0.0.1:0"\nbandwidth = "100KB/s"\n'
one=$(nth 2); each=$(nth 3)
r1=$(python3 "$py" rate "$one" 1 10)
r100=$(python3 "$py" rate "$each" 100 10)
b1=$("$ctl" bench "$one" --connections 1 --size 100000 --duration 10 --warmup 1 --timeout 10 --json)
b100=$("$ctl" bench "$each" --connections 100 --size 10000 --duration 10 --warmup 1 --timeout 10 --json)
python3 - "$r1" "$r100" "$b1" "$b100" <<'PY'
import json, sys
r1, r100, b1, b100 = (json.loads(a) for a in sys.argv[1:5])
pc = lambda v, want: (v / want - 1) * 100
print(f"python3 sockets, 1 conn at 1MB/s over {r1['secs']:.1f} s: {r1['median_Bps']:.0f} B/s ({pc(r1['median_Bps'], 1e6):+.2f} %)")
print(f"python3 sockets, 100 conns at 100KB/s each over {r100['secs']:.1f} s: min {r100['min_Bps']:.0f} median {r100['median_Bps']:.0f} max {r100['max_Bps']:.0f} B/s "
      f"(min {pc(r100['min_Bps'], 1e5):+.2f} %, max {pc(r100['max_Bps'], 1e5):+.2f} %)")
v = b1["round_trips"] * 100000 / b1["elapsed_secs"]
print(f"echo-labctl bench, 1 conn, 100 kB ping-pong at 1MB/s: {v:.0f} B/s ({pc(v, 1e6):+.2f} %)")
v = b100["round_trips"] * 10000 / b100["elapsed_secs"] / 100
print(f"echo-labctl bench, 100 conns, 10 kB ping-pong at 100KB/s each: {v:.0f} B/s per connection on average ({pc(v, 1e5):+.2f} %)")
PY
stop_lab

echo
echo "## 4. UDP loss 0.1 (fault_seed 42), 100 000 datagrams; 99 % interval of the count: 9755..10245"
start_lab loss 'udp_rate_packets = 0\nudp_rate_bytes = 0\n[[listen]]\naddress = "127.0.0.1:0"\nprotocol = "udp"\nloss = 0.1\nfault_seed = 42\n'
u=$(sed -nE 's/.*udp echo on ([^ ]+) .*/\1/p' "$tmp/loss.log" | head -1)
d=$(python3 "$py" udp "$u" 100000)
s=$("$ctl" --socket "$tmp/loss.sock" status --json)
python3 - "$d" "$s" <<'PY'
import json, sys
d, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
u = s["udp"]
print(f"python3 sockets: sent {d['sent']}, echoed {d['echoed']}, lost {d['lost']} ({d['lost']/d['sent']:.4f}); "
      f"server: received {u['received']}, dropped_loss {u['dropped_loss']} ({u['dropped_loss']/max(1,u['received']):.4f}), inside: {9755 <= u['dropped_loss'] <= 10245}")
PY
stop_lab
start_lab loss2 'udp_rate_packets = 0\nudp_rate_bytes = 0\n[[listen]]\naddress = "127.0.0.1:0"\nprotocol = "udp"\nloss = 0.1\nfault_seed = 42\n'
u=$(sed -nE 's/.*udp echo on ([^ ]+) .*/\1/p' "$tmp/loss2.log" | head -1)
d=$("$ctl" bench "$u" --udp --connections 100 --requests 20000 --timeout 1 --json || true)
s=$("$ctl" --socket "$tmp/loss2.sock" status --json)
python3 - "$d" "$s" <<'PY'
import json, sys
s = json.loads(sys.argv[2])["udp"]
try:
    d = json.loads(sys.argv[1])
    keys = {k: d[k] for k in d if "loss" in k or k in ("round_trips", "sent", "lost")}
except Exception:
    keys = {}
print(f"echo-labctl bench --udp: {keys}; server: received {s['received']}, dropped_loss {s['dropped_loss']} ({s['dropped_loss']/max(1,s['received']):.4f})")
PY
stop_lab

echo
echo "## 5. server CPU per round trip at 2000 round trips/s, 50 conns: delay off vs 20 ms"
start_lab cpu "$delay_cfg"
plain=$(nth 1); delayed=$(nth 2)
for r in 1 2 3; do
    for which in plain delayed; do
        a=$plain; [ $which = delayed ] && a=$delayed
        d=$("$ctl" bench "$a" --connections 50 --size 64 --duration "$secs" --rate 2000 --server-pid "$LAB_PID" --json)
        python3 - "$d" "$r" "$which" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print(f"round {sys.argv[2]} {sys.argv[3]}: {d['round_trips_per_sec']:.0f} rt/s, server {d['server_cpu']['us_per_round_trip']:.2f} us CPU per round trip")
PY
    done
done
stop_lab
