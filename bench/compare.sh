#!/usr/bin/env bash
# compare.sh: measure echo-lab against two peers (tokio-echo, thread-echo)
# in the same run, on loopback, and write the results table and chart.
#
# Usage: bench/compare.sh [--rounds N] [--duration SECS] [--workers N]
#                         [--out DIR] [--smoke]
#
#   --rounds N      interleaved rounds (default 3); every figure is a median
#   --duration S    measured seconds per ping-pong point (default 3, plus
#                   1 s warmup)
#   --workers N     server worker threads: echo-lab pool_size, tokio-echo
#                   worker_threads (default 2)
#   --out DIR       where PERFORMANCE.md and perf.svg go (default docs/)
#   --smoke         one round, ~1 s per point, small connection counts;
#                   writes to target/bench-smoke/ unless --out is given
#
# echo-lab runs twice a round: as shipped (busy_poll off), and with
# busy_poll = 50us (echo-lab-busy-poll; ping-pong points only), the setting
# an operator would choose for latency.
#
# Rounds are interleaved (echo-lab, echo-lab-busy-poll, tokio-echo,
# thread-echo, repeat) so that
# drift on the machine hits all servers alike. echo-lab is skipped, with a
# message, if target/release/echo-lab is missing or does not start. Every
# server runs on 127.0.0.1 port 0 and is stopped when the script exits.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
invocation="bench/compare.sh${*:+ $*}"
rounds=3
duration=3
warmup=1
workers=2
out=""
smoke=0
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --smoke) smoke=1; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

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
for pkg in tokio-echo thread-echo report; do
    (cd "$root/bench/$pkg" && cargo build --release --quiet)
done
ctl=$root/target/release/echo-labctl
report=$root/bench/report/target/release/bench-report

# The peers listen with their languages' default backlog (128, see
# `ss -ltn`); echo-lab is configured as an operator expecting bursts of
# connects would configure it (backlog = 4096, the kernel's somaxconn cap):
# its backlog is a setting, theirs is not.
# Servers may hold 10 000 connections: give them (and the client) the hard
# descriptor limit.
ulimit -n "$(ulimit -Hn)"
clk_tck=$(getconf CLK_TCK)

servers=(echo-lab echo-lab-busy-poll tokio-echo thread-echo)
if [ ! -x "$root/target/release/echo-lab" ]; then
    say "target/release/echo-lab is missing: skipping echo-lab"
    servers=(tokio-echo thread-echo)
fi

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
        tokio-echo) cmd=("$root/bench/tokio-echo/target/release/tokio-echo" 127.0.0.1:0 --workers "$workers") ;;
        thread-echo) cmd=("$root/bench/thread-echo/target/release/thread-echo" 127.0.0.1:0) ;;
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

cpu_secs() { # user + system CPU seconds of a process
    awk -v t="$clk_tck" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / t }' "/proc/$1/stat"
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

results=$work/results.jsonl
: > "$results"
emit() { printf '%s\n' "$1" >> "$results"; }

# point ROUND SERVER ID LABEL BENCH-ARGS...: one bench run, recorded.
point() {
    local round=$1 server=$2 id=$3 label=$4; shift 4
    local before after json code=0
    before=$(cpu_secs "$server_pid")
    json=$("$ctl" bench "$server_addr" --json "$@" 2>>"$work/bench.err") || code=$?
    after=$(cpu_secs "$server_pid")
    if [ -z "$json" ]; then
        say "$server/$id: bench did not run (exit $code)"; json=null
    elif [ "$code" != 0 ]; then
        say "$server/$id: failures (exit $code)"
    fi
    emit "{\"round\":$round,\"server\":\"$server\",\"point\":\"$id\",\"label\":\"$label\",\"bench\":$json,\"server_cpu_secs\":$(awk -v a="$before" -v b="$after" 'BEGIN{print b-a}')}"
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
    emit "{\"round\":$round,\"server\":\"$server\",\"point\":\"hold\",\"label\":\"$conns_hold held\",\"bench\":$json,\"rss_before_kb\":$before,\"rss_holding_kb\":$peak}"
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
    emit "{\"round\":$round,\"server\":\"echo-lab\",\"point\":\"reload\",\"label\":\"reload\",\"signals\":$signals,\"bench\":$json}"
}

pp=(--size 64 --duration "$duration" --warmup "$warmup")
for round in $(seq "$rounds"); do
    for server in "${servers[@]}"; do
        say "round $round/$rounds: $server"
        if ! start_server "$server"; then
            say "skipping $server in round $round"
            continue
        fi
        emit "{\"round\":$round,\"server\":\"$server\",\"point\":\"ready\",\"label\":\"ready\",\"ready_ms\":$ready_ms}"
        # The hold point first, so the RSS baseline is a fresh server's.
        # (busy_poll plays no part in it: not repeated for that variant.)
        [ "$server" = echo-lab-busy-poll ] || hold_point "$round" "$server"
        point "$round" "$server" pp-1 "64 B, $conns_small conn" --connections "$conns_small" "${pp[@]}"
        point "$round" "$server" pp-mid "64 B, $conns_mid conns" --connections "$conns_mid" "${pp[@]}"
        point "$round" "$server" pp-big "64 B, $conns_big conns" --connections "$conns_big" "${pp[@]}"
        point "$round" "$server" pp-4k "4 KiB, $conns_mid conns" --connections "$conns_mid" \
            --size 4096 --duration "$duration" --warmup "$warmup"
        if [ "$server" = echo-lab ]; then
            reload_point "$round"
        fi
        stop_server
    done
done

context="Measured $(date -u +%Y-%m-%d) on $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r); $rounds rounds, ${duration} s per ping-pong point after ${warmup} s warmup, servers on $workers workers, client and servers on the same machine over loopback. Command: \`$invocation\`."
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
