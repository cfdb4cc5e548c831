#!/usr/bin/env bash
# observability.sh: what metrics and the session log cost, measured on one
# running echo-lab whose config is flipped by reload between runs (same
# process, same sockets, runs interleaved off/on so drift hits both alike).
#
#   bash bench/observability.sh            # 3 rounds x 10 s per point
#   ROUNDS=5 SECS=10 bash bench/observability.sh
#
# Points, each "off" then "on" per round:
#   pingpong  echo-labctl bench -c 50 -s 64: 50 long-lived connections;
#             "on" = metrics_listen set (the echo latency histogram timed
#             per echo) and [log] sessions = true
#   churn     bench/comparison/churn 50: 50 clients each opening a
#             connection per round trip (send, echo, disconnect, close);
#             "on" = [log] sessions = true with the log in a file ([log]
#             target = "file"), and metrics_listen set
#   scrape    with N connections open (SCRAPE_CONNS, default 10000, held by
#             echo-labctl bench --mode hold in another process), the time of
#             GET /metrics, 20 scrapes
# Loopback only; everything it starts it stops.
set -uo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
CONNS=${CONNS:-50}
SCRAPE_CONNS=${SCRAPE_CONNS:-10000}

cargo build --release --locked -q
cargo build --release -q --manifest-path bench/comparison/Cargo.toml -p churn
lab=target/release/echo-lab
ctl=target/release/echo-labctl
churn=bench/comparison/target/release/churn

dir=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
mport=$(free_port)
addr=127.0.0.1:$port

config() { # config METRICS(on|off) SESSIONS(true|false)
  {
    echo 'host = "127.0.0.1"'
    echo "port = $port"
    echo "max_connections = 20000"
    echo "control_socket = \"$dir/ctl.sock\""
    [ "$1" = on ] && echo "metrics_listen = \"127.0.0.1:$mport\""
    echo '[log]'
    echo 'target = "file"'
    echo "path = \"$dir/echo-lab.log\""
    echo "sessions = $2"
  } > "$dir/echo-lab.toml"
}
reload() { "$ctl" --socket "$dir/ctl.sock" reload >/dev/null; }

config off false
"$lab" --config "$dir/echo-lab.toml" 2>"$dir/stderr" &
pid=$!
for _ in $(seq 100); do [ -S "$dir/ctl.sock" ] && break; sleep 0.1; done
"$ctl" --socket "$dir/ctl.sock" status >/dev/null

# Each run prints RATE:CPU, CPU the server's user+system microseconds per
# round trip (pingpong) or per session (churn): the cost, less noisy than
# the rate on a shared machine.
pingpong() {
  "$ctl" bench "$addr" -c "$CONNS" -s 64 -d "$SECS" -w 1 --server-pid "$pid" --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%d:%.2f" % (r["round_trips_per_sec"], r["server_cpu"]["us_per_round_trip"]))'
}
ticks() { awk '{print $14+$15}' "/proc/$pid/stat"; }
churn_rate() {
  local t0 t1 out
  t0=$(ticks)
  out=$("$churn" "$addr" "$CONNS" "$SECS")
  t1=$(ticks)
  python3 -c "import os,re; n=int(re.search(r'sessions=(\d+)', '$out').group(1)); r=re.search(r'per_sec=(\d+)', '$out').group(1); print(f'{r}:{($t1-$t0)*1e6/os.sysconf(\"SC_CLK_TCK\")/max(n,1):.2f}')"
}

declare -A res
for r in $(seq "$ROUNDS"); do
  for mode in off on; do
    if [ $mode = on ]; then config on true; else config off false; fi
    reload
    res[pingpong_$mode]+="$(pingpong) "
    res[churn_$mode]+="$(churn_rate) "
  done
  echo "round $r: pingpong off ${res[pingpong_off]}| on ${res[pingpong_on]}; churn off ${res[churn_off]}| on ${res[churn_on]}" >&2
done
report() { # report NAME: medians of rate and of server CPU per unit
  python3 - "$1" "${res[${1}_off]}" "${res[${1}_on]}" <<'PY'
import statistics, sys
name, off, on = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def med(runs, i):
    return statistics.median(float(r.split(":")[i]) for r in runs)
ro, rn, co, cn = med(off, 0), med(on, 0), med(off, 1), med(on, 1)
print(f"{name}: rate off {ro:.0f}/s, on {rn:.0f}/s ({100*(rn-ro)/ro:+.1f}%); "
      f"server CPU off {co:.2f} us, on {cn:.2f} us ({100*(cn-co)/co:+.1f}%)")
print(f"  runs (rate:us) off: {' '.join(off)}")
print(f"  runs (rate:us) on:  {' '.join(on)}")
PY
}
echo "== $CONNS connections, $SECS s per run, $ROUNDS rounds, medians"
report pingpong
report churn
echo "session lines written: $(grep -c ' session ' "$dir/echo-lab.log" || true)"

# ---- scrape latency with many connections open
config on true
reload
"$ctl" bench "$addr" --mode hold -c "$SCRAPE_CONNS" --hold 60 >/dev/null 2>"$dir/hold.err" &
hold=$!
for _ in $(seq 600); do
  n=$(curl -s "http://127.0.0.1:$mport/metrics" | awk '$1=="echo_lab_connections" {print $2}')
  [ "${n:-0}" -ge "$SCRAPE_CONNS" ] && break
  sleep 0.1
done
echo "== scrape with ${n:-0} connections open (20 scrapes, curl time_total, ms)"
for _ in $(seq 20); do
  curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$mport/metrics"
done | sort -n | awk '{a[NR]=$1*1000} END {printf "min %.2f  median %.2f  max %.2f\n", a[1], a[int((NR+1)/2)], a[NR]}'
kill "$hold" 2>/dev/null; wait "$hold" 2>/dev/null || true
