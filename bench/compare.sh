#!/usr/bin/env bash
# compare.sh: measure echo-lab against its peers (tokio-echo, thread-echo,
# uring-echo) under four clients in the same run, on loopback, and write
# the results tables and chart.
#
# Usage: bench/compare.sh [--rounds N] [--duration SECS] [--workers N]
#                         [--rate PER_SEC] [--out DIR] [--smoke]
#
#   --rounds N      interleaved rounds (default 5); every figure is a median,
#                   printed with its min-max spread over rounds
#   --duration S    measured seconds per ping-pong point (default 3, plus
#                   1 s warmup; a whole number, tcp-echo-benchmark's unit)
#   --workers N     server worker threads: echo-lab pool_size, tokio-echo
#                   and uring-echo workers (default 2)
#   --rate R        the fixed-rate point's rate in round trips per second
#                   (default: half the slowest peer's median at 50
#                   connections under echo-labctl bench in this run)
#   --out DIR       where PERFORMANCE.md and perf.svg go (default docs/)
#   --smoke         one round, 1 s per point, two ping-pong points (1 and
#                   10 connections), small counts; writes to
#                   target/bench-smoke/ unless --out is given
#
# Clients (each ping-pong point runs under every one):
#   echo-labctl          `echo-labctl bench`, this project's generator
#   tcp-echo-benchmark   from crates.io, installed here with
#                        `cargo install --locked tcp-echo-benchmark` if
#                        missing (--smoke does not install it: it says so
#                        and runs without it)
#   tokio-client         bench/comparison/tokio-client, written the way
#                        tokio's examples are
#   thread-client        bench/comparison/thread-client, blocking std, one
#                        OS thread per connection
# For every server, client and point the server's CPU per round trip is
# recorded: user + system time of the server process (/proc/PID/stat) over
# the measured window (echo-labctl, tokio-client and thread-client read it
# themselves with --server-pid; for tcp-echo-benchmark, which has no
# warmup, the script reads it around the whole run), divided by the round
# trips.
#
# echo-lab runs twice a round: as shipped (busy_poll off), and with
# busy_poll = 50us (echo-lab-busy-poll; ping-pong points only), the setting
# an operator would choose for latency.
#
# Rounds are interleaved (echo-lab, echo-lab-busy-poll, tokio-echo,
# thread-echo, uring-echo, repeat) so that drift on the machine hits all
# servers alike; after them come the same interleaved rounds of the
# fixed-rate point (every server at one offered load, under echo-labctl
# bench --rate). echo-lab is skipped, with a message, if
# target/release/echo-lab is missing or does not start; uring-echo if it
# does not build or start here. Every server runs on 127.0.0.1 port 0 and
# is stopped when the script exits.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
invocation="bench/compare.sh${*:+ $*}"
rounds=5
duration=3
warmup=1
workers=2
rate=""
out=""
smoke=0
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --smoke) smoke=1; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $duration in
    ''|*[!0-9]*|0) echo "compare.sh: --duration must be a whole number of seconds (at least 1)" >&2; exit 2 ;;
esac

# Connection counts and times per point.
if [ "$smoke" = 1 ]; then
    rounds=1; duration=1; warmup=0
    conns_small=1; conns_mid=10; conns_big=50; conns_hold=200; hold=0.5
    reload_secs=1
    out=${out:-$root/target/bench-smoke}
else
    conns_small=1; conns_mid=50; conns_big=1000; conns_hold=10000; hold=3
    reload_secs=$duration
    out=${out:-$root/docs}
fi
mkdir -p "$out"

work=$(mktemp -d "${TMPDIR:-/tmp}/echo-lab-compare.XXXXXX")
server_pid=""
bench_pid=""
cleanup() {
    for pid in $bench_pid $server_pid; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $bench_pid $server_pid; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s\n' "compare.sh: $*" >&2; }

# --- build -----------------------------------------------------------------
say "building (release)"
(cd "$root" && cargo build --release --quiet --bins)
# The peers, the clients and the report: one workspace, bench/comparison.
(cd "$root/bench/comparison" &&
    cargo build --release --quiet -p tokio-echo -p thread-echo -p tokio-client -p thread-client -p bench-report)
bin=$root/bench/comparison/target/release
ctl=$root/target/release/echo-labctl
report=$bin/bench-report
tokio_client=$bin/tokio-client
thread_client=$bin/thread-client

servers=(echo-lab echo-lab-busy-poll tokio-echo thread-echo)
if [ ! -x "$root/target/release/echo-lab" ]; then
    say "target/release/echo-lab is missing: skipping echo-lab"
    servers=(tokio-echo thread-echo)
fi
if (cd "$root/bench/comparison" && cargo build --release --quiet -p uring-echo) 2>"$work/uring-build.err"; then
    servers+=(uring-echo)
else
    say "uring-echo does not build here: skipping it"; sed 's/^/    /' "$work/uring-build.err" >&2
fi

clients=(echo-labctl tcp-echo-benchmark tokio-client thread-client)
# tcp-echo-benchmark from crates.io, pinned so its output stays the one
# parsed below.
teb_version=0.1.1
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
teb=$(command -v tcp-echo-benchmark || true)
[ -n "$teb" ] || [ ! -x "$cargo_bin/tcp-echo-benchmark" ] || teb=$cargo_bin/tcp-echo-benchmark
if [ -z "$teb" ]; then
    if [ "$smoke" = 1 ]; then
        say "SKIPPING tcp-echo-benchmark in --smoke: it is not installed, and building it takes about a minute (the full run installs it: cargo install --locked tcp-echo-benchmark --version $teb_version)"
        clients=(echo-labctl tokio-client thread-client)
    else
        say "installing tcp-echo-benchmark $teb_version (cargo install --locked)"
        cargo install --locked --quiet tcp-echo-benchmark --version "$teb_version"
        teb=$cargo_bin/tcp-echo-benchmark
    fi
fi
say "servers: ${servers[*]}; clients: ${clients[*]}"

# The peers listen with their languages' default backlog (128, see
# `ss -ltn`); echo-lab is configured as an operator expecting bursts of
# connects would configure it (backlog = 4096, the kernel's somaxconn cap):
# its backlog is a setting, theirs is not.
# Servers may hold 10 000 connections: give them (and the client) the hard
# descriptor limit.
ulimit -n "$(ulimit -Hn)"
clk_tck=$(getconf CLK_TCK)

# Prefixes each line of stdin with the time it arrived, until the ready line;
# then copies the rest unchanged.
stamp() {
    local line
    while IFS= read -r line; do
        printf '%s %s\n' "$EPOCHREALTIME" "$line"
        case $line in *"listening on "*) exec cat ;; esac
    done
}

# start_server NAME: starts it on 127.0.0.1:0, waits (at most 10 s) for its
# "listening on ADDR" line; sets server_pid, server_addr, ready_ms.
start_server() {
    local name=$1 log=$work/$1.log cmd busy_poll=0
    case $name in
        echo-lab|echo-lab-busy-poll)
            [ "$name" = echo-lab ] || busy_poll=50
            cat > "$work/echo-lab.toml" <<TOML
host = "127.0.0.1"
port = 0
backlog = 4096
pool_size = $workers
idle_timeout = 0
max_connections = 20000
busy_poll = $busy_poll
control_socket = "$work/echo-lab.sock"

[log]
level = "info"
TOML
            cmd=("$root/target/release/echo-lab" --config "$work/echo-lab.toml") ;;
        tokio-echo) cmd=("$bin/tokio-echo" 127.0.0.1:0 --workers "$workers") ;;
        thread-echo) cmd=("$bin/thread-echo" 127.0.0.1:0) ;;
        uring-echo) cmd=("$bin/uring-echo" 127.0.0.1:0 --workers "$workers") ;;
    esac
    : > "$log"
    local t0=$EPOCHREALTIME
    "${cmd[@]}" > >(stamp > "$log") 2>&1 &
    server_pid=$!
    local deadline=$((SECONDS + 10)) line=""
    while [ $SECONDS -lt $deadline ]; do
        line=$(grep -m1 'listening on ' "$log" || true)
        [ -n "$line" ] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.02
    done
    if [ -z "$line" ]; then
        if kill -0 "$server_pid" 2>/dev/null; then
            say "$name did not report 'listening on' within 10 s; its output:"
        else
            say "$name exited without reporting 'listening on'; its output:"
        fi
        sed 's/^/    /' "$log" >&2
        stop_server
        return 1
    fi
    server_addr=$(sed -E 's/^[0-9.]+ .*listening on ([^ ,]+).*/\1/' <<<"$line")
    ready_ms=$(awk -v a="$t0" -v b="${line%% *}" 'BEGIN { printf "%.2f", (b - a) * 1000 }')
}

stop_server() {
    [ -n "$server_pid" ] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    local i
    for i in $(seq 50); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

results=$work/results.jsonl
: > "$results"
emit() { printf '%s\n' "$1" >> "$results"; }

# point ROUND SERVER CLIENT ID LABEL CONNECTIONS SIZE: one ping-pong run
# under one client, recorded with the server's CPU over its measured window.
point() {
    local round=$1 server=$2 client=$3 id=$4 label=$5 conns=$6 size=$7
    local json code=0 cpu=null
    case $client in
        echo-labctl)
            json=$("$ctl" bench "$server_addr" --json --connections "$conns" --size "$size" \
                --duration "$duration" --warmup "$warmup" --server-pid "$server_pid" \
                2>>"$work/bench.err") || code=$? ;;
        tokio-client)
            json=$("$tokio_client" "$server_addr" "$conns" "$size" "$duration" "$warmup" \
                --server-pid "$server_pid" 2>>"$work/bench.err") || code=$? ;;
        thread-client)
            json=$("$thread_client" "$server_addr" "$conns" "$size" "$duration" "$warmup" \
                --server-pid "$server_pid" 2>>"$work/bench.err") || code=$? ;;
        tcp-echo-benchmark)
            teb_point "$conns" "$size" || code=$?
            json=$teb_json; cpu=$teb_cpu ;;
    esac
    if [ -z "$json" ]; then
        say "$server/$client/$id: the client did not run (exit $code)"
        json='{"errors":{"total":1}}'
    elif [ "$code" != 0 ]; then
        say "$server/$client/$id: failures (exit $code)"
    fi
    emit "{\"round\":$round,\"server\":\"$server\",\"client\":\"$client\",\"point\":\"$id\",\"label\":\"$label\",\"bench\":$json,\"server_cpu\":$cpu}"
}

# teb_point CONNECTIONS SIZE: runs tcp-echo-benchmark (no warmup, whole
# seconds, counts only: "Total: N requests, M responses") and reads the
# server's CPU around the whole run. Sets teb_json and teb_cpu.
teb_point() {
    local conns=$1 size=$2 before after t0 t1 text code=0 total writes
    before=$(cpu_secs "$server_pid"); t0=$EPOCHREALTIME
    text=$("$teb" -a "$server_addr" -l "$size" -c "$conns" -t "$duration" 2>"$work/teb.err") || code=$?
    t1=$EPOCHREALTIME; after=$(cpu_secs "$server_pid")
    cat "$work/teb.err" >> "$work/bench.err"
    total=$(teb_totals "$text")
    # It prints "Write error!" for a connection whose write failed and
    # panics (non-zero exit) on a connect failure: both are failures here.
    writes=$(grep -c 'Write error' "$work/teb.err" || true)
    if [ -z "$total" ]; then
        teb_json="{\"mode\":\"ping-pong\",\"errors\":{\"total\":$((writes + 1))}}"; teb_cpu=null
        return "${code/#0/1}"
    fi
    teb_json=$(awk -v t="$total" -v d="$duration" -v c="$conns" -v s="$size" -v w="$writes" -v x="$code" 'BEGIN {
        split(t, n, " ");
        printf "{\"client\":\"tcp-echo-benchmark\",\"mode\":\"ping-pong\",\"connections\":%d,\"size\":%d,\"duration_secs\":%d,\"requests\":%d,\"round_trips\":%d,\"round_trips_per_sec\":%.1f,\"errors\":{\"total\":%d}}",
            c, s, d, n[1], n[2], n[2] / d, w + (x != 0) }')
    teb_cpu=$(awk -v a="$before" -v b="$after" -v t0="$t0" -v t1="$t1" -v t="$total" 'BEGIN {
        split(t, n, " "); cpu = b - a; wall = t1 - t0;
        printf "{\"cpu_secs\":%.3f,\"window_secs\":%.3f,\"percent\":%.2f,\"us_per_round_trip\":%s}",
            cpu, wall, cpu / wall * 100, (n[2] > 0 ? sprintf("%.3f", cpu * 1e6 / n[2]) : "null") }')
    return "$code"
}

# rate_point ROUND SERVER: the fixed-rate point at $rate round trips/s.
rate_point() {
    local round=$1 server=$2 json code=0
    json=$("$ctl" bench "$server_addr" --json --rate "$rate" --connections "$conns_mid" --size 64 \
        --duration "$duration" --warmup "$warmup" --server-pid "$server_pid" \
        2>>"$work/bench.err") || code=$?
    if [ -z "$json" ]; then
        say "$server/rate: bench did not run (exit $code)"; json='{"errors":{"total":1}}'
    elif [ "$code" != 0 ]; then
        say "$server/rate: failures (exit $code)"
    fi
    emit "{\"round\":$round,\"server\":\"$server\",\"client\":\"echo-labctl\",\"point\":\"rate-mid\",\"label\":\"$rate/s, 64 B, $conns_mid conns\",\"bench\":$json,\"server_cpu\":null}"
}

# hold_point ROUND SERVER: the held-connections point, with the server's RSS
# before connecting and (the largest sample) while holding.
hold_point() {
    local round=$1 server=$2 before peak=0 rss json code=0 deadline
    before=$(rss_kb "$server_pid")
    "$ctl" bench "$server_addr" --json --mode hold --connections "$conns_hold" --hold "$hold" \
        > "$work/hold.json" 2> "$work/hold.err" &
    bench_pid=$!
    deadline=$((SECONDS + 60))
    until grep -q 'bench: holding' "$work/hold.err" 2>/dev/null; do
        kill -0 "$bench_pid" 2>/dev/null || break
        [ $SECONDS -lt $deadline ] || break
        sleep 0.05
    done
    # Sample while the connections are idle (the hold lasts $hold s).
    local end=$((SECONDS + ${hold%.*}))
    while kill -0 "$bench_pid" 2>/dev/null; do
        rss=$(rss_kb "$server_pid" 2>/dev/null || echo 0)
        [ "${rss:-0}" -gt "$peak" ] && peak=$rss
        [ $SECONDS -lt $end ] || break
        sleep 0.1
    done
    wait "$bench_pid" || code=$?
    bench_pid=""
    json=$(cat "$work/hold.json")
    [ -n "$json" ] || json=null
    [ "$code" = 0 ] || say "$server/hold: failures or no run (exit $code)"
    emit "{\"round\":$round,\"server\":\"$server\",\"client\":\"echo-labctl\",\"point\":\"hold\",\"label\":\"$conns_hold held\",\"bench\":$json,\"rss_before_kb\":$before,\"rss_holding_kb\":$peak}"
}

# reload ROUND: SIGHUP echo-lab every 100 ms during a 50-connection bench.
reload_point() {
    local round=$1 json code=0 signals=0
    "$ctl" bench "$server_addr" --json --connections "$conns_mid" --size 64 \
        --duration "$reload_secs" --warmup 0 > "$work/reload.json" 2>>"$work/bench.err" &
    bench_pid=$!
    while kill -0 "$bench_pid" 2>/dev/null; do
        kill -HUP "$server_pid" 2>/dev/null && signals=$((signals + 1))
        sleep 0.1
    done
    wait "$bench_pid" || code=$?
    bench_pid=""
    json=$(cat "$work/reload.json")
    [ -n "$json" ] || json=null
    [ "$code" = 0 ] || say "echo-lab/reload: failures or no run (exit $code)"
    emit "{\"round\":$round,\"server\":\"echo-lab\",\"client\":\"echo-labctl\",\"point\":\"reload\",\"label\":\"reload\",\"signals\":$signals,\"bench\":$json}"
}

# The ping-pong points: ID|LABEL|CONNECTIONS|SIZE. The smoke keeps two, so
# that it stays short with every client and server.
pp_points=("pp-1|64 B, $conns_small conn|$conns_small|64"
           "pp-mid|64 B, $conns_mid conns|$conns_mid|64"
           "pp-big|64 B, $conns_big conns|$conns_big|64"
           "pp-4k|4 KiB, $conns_mid conns|$conns_mid|4096")
[ "$smoke" = 0 ] || pp_points=("${pp_points[@]:0:2}")

# points SERVER ROUND: every ping-pong point, each under every client in turn.
points() {
    local server=$1 round=$2 spec id label conns size client
    for spec in "${pp_points[@]}"; do
        IFS='|' read -r id label conns size <<<"$spec"
        for client in "${clients[@]}"; do
            point "$round" "$server" "$client" "$id" "$label" "$conns" "$size"
        done
    done
}

for round in $(seq "$rounds"); do
    for server in "${servers[@]}"; do
        say "round $round/$rounds: $server"
        if ! start_server "$server"; then
            say "skipping $server in round $round"
            continue
        fi
        emit "{\"round\":$round,\"server\":\"$server\",\"client\":\"echo-labctl\",\"point\":\"ready\",\"label\":\"ready\",\"ready_ms\":$ready_ms}"
        # The hold point first, so the RSS baseline is a fresh server's.
        # (busy_poll plays no part in it: not repeated for that variant.)
        [ "$server" = echo-lab-busy-poll ] || hold_point "$round" "$server"
        points "$server" "$round"
        if [ "$server" = echo-lab ]; then
            reload_point "$round"
        fi
        stop_server
    done
done

# The fixed-rate point: every server at the same offered load, about half
# of what the slowest peer managed at $conns_mid connections.
if [ -z "$rate" ]; then
    rate=$("$report" rate "$results" 2>>"$work/bench.err") || rate=""
fi
if [ -n "$rate" ]; then
    for round in $(seq "$rounds"); do
        for server in "${servers[@]}"; do
            say "fixed rate $rate/s, round $round/$rounds: $server"
            start_server "$server" || { say "skipping $server"; continue; }
            rate_point "$round" "$server"
            stop_server
        done
    done
else
    say "no peer was measured at $conns_mid connections: no fixed-rate point"
fi

context="Measured $(date -u +%Y-%m-%d) on $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r); $rounds interleaved rounds, ${duration} s per ping-pong point after ${warmup} s warmup (tcp-echo-benchmark: ${duration} s, no warmup), fixed rate ${rate:-none}/s, servers on $workers workers, clients ${clients[*]}, client and servers on the same machine over loopback. Command: \`$invocation\`."
# Elsewhere than docs/, start from the committed document so the prose is kept.
if [ "$(cd "$out" && pwd)" != "$root/docs" ]; then
    cp "$root/docs/PERFORMANCE.md" "$out/PERFORMANCE.md"
fi
cp "$results" "$out/perf-results.jsonl"
"$report" "$results" "$out/PERFORMANCE.md" "$out/perf.svg" "$context"
say "wrote $out/PERFORMANCE.md, $out/perf.svg and $out/perf-results.jsonl"
if [ -s "$work/bench.err" ] && grep -qv '^bench: holding' "$work/bench.err"; then
    say "bench stderr:"; grep -v '^bench: holding' "$work/bench.err" | sed 's/^/    /' >&2
fi
