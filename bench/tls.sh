#!/usr/bin/env bash
# tls.sh: TLS echo figures, in the same run, for
#   stunnel      stunnel4 terminating TLS in front of echo-lab's plain port
#                (what an operator does today: the floor)
#   tokio-rustls bench/comparison/tokio-rustls-echo, a task per connection
#                (the peer to beat)
#   echo-lab     echo-lab's own TLS listener, when this build has one: a
#                build that rejects `tls_cert` in a [[listen]] table is
#                skipped with "SKIPPING echo-lab TLS: ..."
#
# Usage: bench/tls.sh [--rounds N] [--duration SECS] [--held N] [--out DIR]
#                     [--smoke]
#
#   --rounds N      interleaved rounds (default 3); every figure is the
#                   median with its min-max over rounds
#   --duration S    measured seconds per point (default 3, plus 1 s warmup
#                   for ping-pong)
#   --held N        idle TLS sessions held for the RSS point (default 5000;
#                   all their handshakes start at once, and on a loaded
#                   2-core machine 10 000 of them outlast any sane timeout)
#   --out DIR       where tls.md (the table) and tls.jsonl (every run) go
#                   (default target/bench-tls/)
#   --smoke         one round, 1 s per point, 10 and 50 connections, 200
#                   held: a few seconds per server, for CI
#
# A CA and an ECDSA P-256 server certificate (CN and SAN localhost) are made
# with openssl in a temporary directory. Every point, per server:
#   ping-pong   `echo-labctl bench --tls` 64-byte round trips at 50 and 1000
#               connections: round trips/s, p99, and the server's CPU per
#               round trip (--server-pid of the TLS process over the
#               measured window; for stunnel also echo-lab's behind it, read
#               around the whole run, so an upper bound)
#   s_time      full handshakes/s from `openssl s_time -new` (an independent
#               client, one connection at a time per process), 8 processes
#               at once, summed
#   churn       full handshakes/s from `echo-labctl bench --tls --mode
#               churn` at 50 connections (connect, handshake, one round
#               trip, close), with the p99 of a whole session
#   hold        RSS per idle TLS session: N sessions opened and held
#               (`bench --tls --mode hold`), the server's RSS before and at
#               its peak while holding (for stunnel: stunnel's, and echo-lab's
#               behind it separately); N is --held, less if the descriptor
#               limit does not allow stunnel its two per session (said)
# Loopback only; every server on 127.0.0.1, stopped when the script exits.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
invocation="bench/tls.sh${*:+ $*}"
rounds=3
duration=3
warmup=1
out=""
smoke=0
held_arg=""
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --held) held_arg=$2; shift 2 ;;
        --smoke) smoke=1; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "tls.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $duration in
    ''|*[!0-9]*|0) echo "tls.sh: --duration must be a whole number of seconds (at least 1)" >&2; exit 2 ;;
esac
if [ "$smoke" = 1 ]; then
    rounds=1; duration=1; warmup=0; conns_mid=10; conns_big=50; held=200; hold=0.5; stimes=2
else
    conns_mid=50; conns_big=1000; held=5000; hold=3; stimes=8
fi
held=${held_arg:-$held}
out=${out:-$root/target/bench-tls}
mkdir -p "$out"

say() { printf '%s\n' "tls.sh: $*" >&2; }
for tool in openssl stunnel4 python3; do
    command -v "$tool" >/dev/null || { say "$tool is missing (Debian package ${tool/python3/python3}; tests/run.sh installs it)"; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/echo-lab-tls.XXXXXX")
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building (release)"
(cd "$root" && cargo build --release --quiet --bins)
(cd "$root/bench/comparison" && cargo build --release --quiet -p tokio-rustls-echo)
lab=$root/target/release/echo-lab
ctl=$root/target/release/echo-labctl
peer=$root/bench/comparison/target/release/tokio-rustls-echo

# --- certificates ------------------------------------------------------------
pki=$work/pki
mkdir -p "$pki"
(
    cd "$pki"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=echo-lab bench CA" -out ca.pem
    openssl ecparam -name prime256v1 -genkey -noout -out server.key
    openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -sha256 -extfile san.ext -out server.pem
) 2> "$work/openssl.log" || { say "openssl failed:"; cat "$work/openssl.log" >&2; exit 1; }
tls=(--tls --ca "$pki/ca.pem" --server-name localhost)

# Descriptors: stunnel needs two per session (client and echo-lab sides).
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
limit=$(ulimit -n)
if [ $((held * 2 + 200)) -gt "$limit" ]; then
    held_asked=$held
    held=$(( (limit - 200) / 2 / 1000 * 1000 ))
    say "the descriptor limit ($limit) allows stunnel only $held held sessions, not $held_asked"
fi
clk_tck=$(getconf CLK_TCK)

# --- servers -------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_line LOG PID: waits (at most 10 s) for "listening on ADDR" in LOG and
# prints ADDR.
wait_line() {
    local deadline=$((SECONDS + 10)) line=""
    while [ $SECONDS -lt $deadline ]; do
        line=$(grep -m1 -o 'listening on [^ ,]*' "$1" || true)
        [ -n "$line" ] && { echo "${line#listening on }"; return 0; }
        kill -0 "$2" 2>/dev/null || break
        sleep 0.02
    done
    say "no 'listening on' from pid $2 within 10 s:"; sed 's/^/    /' "$1" >&2
    return 1
}

# wait_port ADDR PID: waits (at most 10 s) until ADDR accepts.
wait_port() {
    local deadline=$((SECONDS + 10))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$2" 2>/dev/null || return 1
        (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# echo_lab_plain CONFIG_EXTRA: starts echo-lab on 127.0.0.1:0; sets lab_pid, lab_addr.
start_echo_lab() {
    cat > "$work/echo-lab.toml" <<TOML
host = "127.0.0.1"
port = 0
backlog = 4096
pool_size = 2
idle_timeout = 0
max_connections = 15000
control_socket = "$work/echo-lab.sock"
$1
[log]
level = "info"
sessions = false
TOML
    # Emptied first: the redirection below happens in the background, and
    # the previous server's address must not be read meanwhile.
    : > "$work/echo-lab.log"
    "$lab" --config "$work/echo-lab.toml" > "$work/echo-lab.log" 2>&1 &
    lab_pid=$!; pids+=("$lab_pid")
    lab_addr=$(wait_line "$work/echo-lab.log" "$lab_pid") || return 1
}

# start NAME: starts the server; sets server_pid (the TLS process),
# backend_pid (echo-lab behind stunnel, else empty) and server_addr.
start() {
    backend_pid=""
    case $1 in
        stunnel)
            start_echo_lab "" || return 1
            backend_pid=$lab_pid
            local port; port=$(free_port)
            cat > "$work/stunnel.conf" <<CONF
foreground = yes
pid =
debug = 3
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[echo]
accept = 127.0.0.1:$port
connect = $lab_addr
cert = $pki/server.pem
key = $pki/server.key
CONF
            : > "$work/stunnel.log"
            stunnel4 "$work/stunnel.conf" > "$work/stunnel.log" 2>&1 &
            server_pid=$!; pids+=("$server_pid")
            server_addr=127.0.0.1:$port
            wait_port "$server_addr" "$server_pid" || { say "stunnel did not start:"; cat "$work/stunnel.log" >&2; return 1; } ;;
        tokio-rustls)
            : > "$work/peer.log"
            "$peer" --cert "$pki/server.pem" --key "$pki/server.key" 127.0.0.1:0 --workers 2 > "$work/peer.log" 2>&1 &
            server_pid=$!; pids+=("$server_pid")
            server_addr=$(wait_line "$work/peer.log" "$server_pid") || return 1 ;;
        echo-lab)
            start_echo_lab "[[listen]]
address = \"127.0.0.1:0\"
tls_cert = \"$pki/server.pem\"
tls_key = \"$pki/server.key\"" || return 1
            server_pid=$lab_pid
            # The [[listen]] address is the second one in the ready line.
            server_addr=$(grep -m1 -o 'listening on .*' "$work/echo-lab.log" | grep -o '127\.0\.0\.1:[0-9]*' | sed -n 2p)
            [ -n "$server_addr" ] || { say "echo-lab printed no TLS listener address"; return 1; } ;;
    esac
}

stop() {
    local p
    for p in $server_pid $backend_pid; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $server_pid $backend_pid; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    server_pid=""; backend_pid=""
}

servers=(stunnel tokio-rustls)
cat > "$work/probe.toml" <<TOML
host = "127.0.0.1"
port = 0
[[listen]]
address = "127.0.0.1:0"
tls_cert = "$pki/server.pem"
tls_key = "$pki/server.key"
TOML
if "$lab" --check-config --config "$work/probe.toml" > "$work/probe.log" 2>&1; then
    servers+=(echo-lab)
else
    say "SKIPPING echo-lab TLS: this build has no TLS listener ($(grep -m1 -o 'tls_cert.*' "$work/probe.log" || head -1 "$work/probe.log"))"
fi
say "servers: ${servers[*]}; $rounds round(s), $duration s per point"

results=$out/tls.jsonl
: > "$results"
emit() { printf '%s\n' "$1" >> "$results"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# pingpong ROUND SERVER CONNS
pingpong() {
    local json code=0 before after
    before=$([ -n "$backend_pid" ] && cpu_secs "$backend_pid" || echo 0)
    json=$("$ctl" bench "$server_addr" "${tls[@]}" --json --connections "$3" --size 64 \
        --duration "$duration" --warmup "$warmup" --server-pid "$server_pid" 2>>"$work/bench.err") || code=$?
    after=$([ -n "$backend_pid" ] && cpu_secs "$backend_pid" || echo 0)
    [ -n "$json" ] || json='{"errors":{"total":1}}'
    [ "$code" = 0 ] || say "$2/ping-pong $3: failures (exit $code)"
    emit "{\"round\":$1,\"server\":\"$2\",\"point\":\"pp$3\",\"bench\":$json,\"backend_cpu_secs\":$(awk -v a="$before" -v b="$after" 'BEGIN{printf "%.3f", b-a}')}"
}

# stime ROUND SERVER: $stimes `openssl s_time -new` at once, summed.
stime() {
    local i total=0 n spids=()
    for i in $(seq "$stimes"); do
        openssl s_time -connect "$server_addr" -new -time "$duration" -CAfile "$pki/ca.pem" \
            > "$work/stime.$i" 2>&1 &
        spids+=($!)
    done
    for i in "${spids[@]}"; do wait "$i" || true; done
    for i in $(seq "$stimes"); do
        n=$(sed -nE 's/^([0-9]+) connections in [0-9.]+s;.*/\1/p' "$work/stime.$i" | head -1)
        [ -n "$n" ] || { say "$2/s_time: no result:"; sed 's/^/    /' "$work/stime.$i" >&2; n=0; }
        total=$((total + n))
    done
    emit "{\"round\":$1,\"server\":\"$2\",\"point\":\"s_time\",\"handshakes\":$total,\"secs\":$duration,\"processes\":$stimes}"
}

# churn ROUND SERVER
churn() {
    local json code=0
    json=$("$ctl" bench "$server_addr" "${tls[@]}" --json --mode churn --connections "$conns_mid" \
        --duration "$duration" --server-pid "$server_pid" 2>>"$work/bench.err") || code=$?
    [ -n "$json" ] || json='{"errors":{"total":1}}'
    [ "$code" = 0 ] || say "$2/churn: failures (exit $code)"
    emit "{\"round\":$1,\"server\":\"$2\",\"point\":\"churn\",\"bench\":$json}"
}

# hold ROUND SERVER: RSS per idle session.
hold() {
    local before bbefore peak=0 bpeak=0 rss code=0 json bpid
    before=$(rss_kb "$server_pid"); bbefore=0
    [ -z "$backend_pid" ] || bbefore=$(rss_kb "$backend_pid")
    : > "$work/hold.err"
    "$ctl" bench "$server_addr" "${tls[@]}" --json --mode hold --connections "$held" --hold "$hold" \
        --timeout 120 > "$work/hold.json" 2> "$work/hold.err" &
    bpid=$!
    until grep -q 'bench: holding' "$work/hold.err" 2>/dev/null; do
        kill -0 "$bpid" 2>/dev/null || break
        sleep 0.05
    done
    local end=$(( $(date +%s%N) / 1000000 + ${hold%.*} * 1000 + 400 ))
    while kill -0 "$bpid" 2>/dev/null && [ $(( $(date +%s%N) / 1000000 )) -lt "$end" ]; do
        rss=$(rss_kb "$server_pid" 2>/dev/null || echo 0); [ "${rss:-0}" -gt "$peak" ] && peak=$rss
        if [ -n "$backend_pid" ]; then
            rss=$(rss_kb "$backend_pid" 2>/dev/null || echo 0); [ "${rss:-0}" -gt "$bpeak" ] && bpeak=$rss
        fi
        sleep 0.1
    done
    wait "$bpid" || code=$?
    json=$(cat "$work/hold.json"); [ -n "$json" ] || json='{"errors":{"total":1}}'
    [ "$code" = 0 ] || { say "$2/hold: failures (exit $code)"; grep -v '^bench: holding' "$work/hold.err" | head -5 >&2 || true; }
    emit "{\"round\":$1,\"server\":\"$2\",\"point\":\"hold\",\"held\":$held,\"bench\":$json,\"rss_before_kb\":$before,\"rss_peak_kb\":$peak,\"backend_rss_before_kb\":$bbefore,\"backend_rss_peak_kb\":$bpeak}"
}

for round in $(seq "$rounds"); do
    for server in "${servers[@]}"; do
        say "round $round: $server"
        start "$server" || { stop; continue; }
        hold "$round" "$server"      # first, so the RSS baseline is a fresh server's
        pingpong "$round" "$server" "$conns_mid"
        pingpong "$round" "$server" "$conns_big"
        stime "$round" "$server"
        churn "$round" "$server"
        stop
    done
done

python3 - "$results" "$invocation" "$held" "$conns_mid" "$conns_big" > "$out/tls.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
invocation, held, mid, big = sys.argv[2:6]
servers = list(dict.fromkeys(r["server"] for r in rows))

def fig(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    s = fmt(statistics.median(values))
    if len(values) > 1:
        s += f" ({fmt(min(values))}–{fmt(max(values))})"
    return s

k = lambda v: f"{v/1000:.1f} k" if v >= 1000 else f"{v:.0f}"
ms = lambda v: f"{v/1000:.2f} ms"
us = lambda v: f"{v:.1f} µs"
kb = lambda v: f"{v:.1f} KB"
n0 = lambda v: f"{v:.0f}"

def pick(server, point):
    return [r for r in rows if r["server"] == server and r["point"] == point]

def errors(rs):
    return sum(r.get("bench", {}).get("errors", {}).get("total", 0) for r in rs)

def rate_p99(rs, rate="round_trips_per_sec"):
    return (fig([r["bench"].get(rate) for r in rs], k) + " (p99 "
            + fig([r["bench"].get("latency_us", {}).get("p99") for r in rs], ms) + ")")

def cpu(r):
    c = (r["bench"].get("server_cpu") or {}).get("us_per_round_trip")
    n = r["bench"].get("round_trips") or 0
    if c is None or not n:
        return None
    return c + r.get("backend_cpu_secs", 0) * 1e6 / n

def per_session(r, before, peak):
    n = r["bench"].get("connected") or 0
    return (r[peak] - r[before]) / n if n else None

print(f"`{invocation}`: medians over rounds (min–max); TLS 1.3, ECDSA P-256, 64-byte messages, client `echo-labctl bench --tls` unless said.\n")
print(f"| server | round trips/s, {mid} conns | server CPU per round trip, {mid} conns | round trips/s, {big} conns | full handshakes/s, `openssl s_time -new` | full handshakes/s, `bench --mode churn` ({mid} conns) | RSS per idle session ({held} held) | errors |")
print("|---|---|---|---|---|---|---|---|")
for s in servers:
    pm, pb, ch, ho = pick(s, "pp" + mid), pick(s, "pp" + big), pick(s, "churn"), pick(s, "hold")
    rss = fig([per_session(r, "rss_before_kb", "rss_peak_kb") for r in ho], kb)
    if any(r.get("backend_rss_peak_kb") for r in ho):
        rss += " + " + fig([per_session(r, "backend_rss_before_kb", "backend_rss_peak_kb") for r in ho], kb) + " echo-lab behind it"
    cells = [
        s,
        rate_p99(pm),
        fig([cpu(r) for r in pm], us),
        rate_p99(pb),
        fig([r["handshakes"] / r["secs"] for r in pick(s, "s_time")], n0),
        rate_p99(ch, "sessions_per_sec"),
        rss,
        str(errors(pm) + errors(pb) + errors(ch) + errors(ho)),
    ]
    print("| " + " | ".join(cells) + " |")
print("\nServer CPU per round trip: the TLS process over the measured window (`--server-pid`); "
      "for stunnel plus the CPU of echo-lab behind it over the whole bench run (an upper bound). "
      "The churn p99 is a whole session's (connect, handshake, one round trip).")
PY
cat "$out/tls.md"
errors=$(python3 -c 'import json,sys; print(sum(json.loads(l).get("bench",{}).get("errors",{}).get("total",0) for l in open(sys.argv[1]) if l.strip()))' "$results")
if [ "$errors" != 0 ]; then
    say "$errors failed round trips, sessions or connects (see $results)"
    exit 3
fi
