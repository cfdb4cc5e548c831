#!/usr/bin/env bash
# ab.sh: echo-lab under two or more configurations, with peer servers beside
# them, under the same four clients as compare.sh, in interleaved rounds;
# prints each figure's median with its min-max spread over rounds. It is
# how a setting's default is decided (docs/PERFORMANCE.md, "Pinning").
#
# Usage: bench/ab.sh [--rounds N] [--duration SECS] [--points LIST]
#                    [--peers LIST] NAME=TOML [NAME=TOML ...]
#
#   NAME=TOML     an echo-lab variant: NAME labels its column, TOML is
#                 added to its config (top-level keys; "\n" separates
#                 lines; a key it sets replaces the base config's: host,
#                 port 0, backlog 4096, pool_size 2, idle_timeout 0,
#                 max_connections 20000), e.g. pinned='cpu_affinity = true'
#   --rounds N    interleaved rounds (default 5)
#   --duration S  measured seconds per point (default 3, whole seconds,
#                 after 1 s warmup; tcp-echo-benchmark has none)
#   --points LIST comma-separated: CLIENT-CONNS with CLIENT one of ctl
#                 (echo-labctl bench), teb (tcp-echo-benchmark), tok
#                 (bench/comparison/tokio-client), thr
#                 (bench/comparison/thread-client), 64 B ping-pong; or
#                 rate-R, a fixed rate of R round trips/s over 50
#                 connections under echo-labctl bench --rate. Default:
#                 ctl-50,teb-50,tok-50,tok-1000,thr-50,thr-1000,
#                 rate-5000,rate-45000
#   --peers LIST  comma-separated peer servers from bench/comparison:
#                 tokio-echo, thread-echo (a thread per connection), uring-echo,
#                 shared-echo (threads sharing one epoll: what a shared
#                 poller buys over connections owned by one worker), the
#                 others on 2 threads; or none. Default: tokio-echo
#
# Figures: round trips/s; p99 latency in µs (not for teb, which reports
# counts only); server CPU µs per round trip (user + system time of the
# server process over the measured window). Every server runs on
# 127.0.0.1 port 0 with 2 workers (unless a variant sets pool_size), as
# in compare.sh, and is stopped when the script exits. teb points need
# tcp-echo-benchmark installed (compare.sh installs it); without it they
# are skipped, and say so.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
rounds=5
duration=3
points=ctl-50,teb-50,tok-50,tok-1000,thr-50,thr-1000,rate-5000,rate-45000
peers=tokio-echo
names=()
tomls=()
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --points) points=$2; shift 2 ;;
        --peers) peers=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *=*) names+=("${1%%=*}"); tomls+=("${1#*=}"); shift ;;
        *) echo "ab.sh: unknown argument $1 (a variant is NAME=TOML)" >&2; exit 2 ;;
    esac
done
[ ${#names[@]} -gt 0 ] || { echo "ab.sh: give at least one variant NAME=TOML" >&2; exit 2; }
case $duration in
    ''|*[!0-9]*|0) echo "ab.sh: --duration must be a whole number of seconds" >&2; exit 2 ;;
esac

say() { printf '%s\n' "ab.sh: $*" >&2; }
say "building (release): echo-lab, and the peers and clients of bench/comparison"
(cd "$root" && cargo build --release --quiet --bins)
[ "$peers" != none ] || peers=""
IFS=',' read -r -a peer_list <<<"$peers"
for p in "${peer_list[@]}"; do
    case $p in
        tokio-echo|thread-echo|uring-echo|shared-echo) ;;
        *) echo "ab.sh: unknown peer $p (tokio-echo, thread-echo, uring-echo, shared-echo)" >&2; exit 2 ;;
    esac
done
pkg_args=()
for pkg in tokio-client thread-client "${peer_list[@]}"; do
    pkg_args+=(-p "$pkg")
done
(cd "$root/bench/comparison" && cargo build --release --quiet "${pkg_args[@]}")
bin=$root/bench/comparison/target/release

work=$(mktemp -d "${TMPDIR:-/tmp}/echo-lab-ab.XXXXXX")
server_pid=""
cleanup() {
    [ -z "$server_pid" ] || { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; } || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ctl=$root/target/release/echo-labctl
tokio_client=$bin/tokio-client
thread_client=$bin/thread-client
teb=$(command -v tcp-echo-benchmark || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tcp-echo-benchmark")
[ -x "$teb" ] || { teb=""; say "tcp-echo-benchmark is not installed: SKIPPING its points (cargo install --locked tcp-echo-benchmark --version 0.1.1)"; }
ulimit -n "$(ulimit -Hn)"
clk_tck=$(getconf CLK_TCK)

# start VARIANT-INDEX|PEER: starts the server, waits (at most 10 s) for its
# "listening on ADDR" line; sets server_pid and addr.
start() {
    local cmd
    case $1 in
        thread-echo) cmd=("$bin/thread-echo" 127.0.0.1:0) ;;
        *-echo) cmd=("$bin/$1" 127.0.0.1:0 --workers 2) ;;
    esac
    if [[ $1 != *-echo ]]; then
        # The base config, less the keys the variant sets, then the variant.
        local variant key line
        variant=$(printf '%b' "${tomls[$1]}")
        {
            for line in 'host = "127.0.0.1"' 'port = 0' 'backlog = 4096' 'pool_size = 2' \
                'idle_timeout = 0' 'max_connections = 20000'; do
                key=${line%% =*}
                grep -qE "^[[:space:]]*$key[[:space:]]*=" <<<"$variant" || echo "$line"
            done
            printf '%s\n[log]\nlevel = "info"\n' "$variant"
        } > "$work/echo-lab.toml"
        cmd=("$root/target/release/echo-lab" --config "$work/echo-lab.toml")
    fi
    "${cmd[@]}" > "$work/server.log" 2>&1 &
    server_pid=$!
    local deadline=$((SECONDS + 10))
    until grep -q 'listening on ' "$work/server.log"; do
        if ! kill -0 "$server_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            say "the server did not report 'listening on'; its output:"; sed 's/^/    /' "$work/server.log" >&2
            exit 1
        fi
        sleep 0.02
    done
    addr=$(grep -m1 -o 'listening on [^ ,]*' "$work/server.log" | cut -d' ' -f3)
}

stop() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}


# json_figures: "RATE P99 CPU_US" from a client's JSON line on stdin.
json_figures() {
    python3 -c 'import json, sys
j = json.loads(sys.stdin.read())
c = j.get("server_cpu") or {}
print(j["round_trips_per_sec"], j.get("latency_us", {}).get("p99", "-"), c.get("us_per_round_trip") or "-")'
}

# measure POINT: prints "RATE P99 CPU_US" ("-" for what the client lacks),
# or nothing if the point failed.
measure() {
    local p=$1 client conns json
    case $p in
        rate-*)
            json=$("$ctl" bench "$addr" --json --rate "${p#rate-}" --connections 50 --size 64 \
                --duration "$duration" --warmup 1 --server-pid "$server_pid" 2>>"$work/client.err") || return 0
            json_figures <<<"$json"; return ;;
    esac
    client=${p%-*}; conns=${p#*-}
    case $client in
        ctl) json=$("$ctl" bench "$addr" --json --connections "$conns" --size 64 \
                --duration "$duration" --warmup 1 --server-pid "$server_pid" 2>>"$work/client.err") || return 0
             json_figures <<<"$json" ;;
        tok) json=$("$tokio_client" "$addr" "$conns" 64 "$duration" 1 \
                --server-pid "$server_pid" 2>>"$work/client.err") || return 0
             json_figures <<<"$json" ;;
        thr) json=$("$thread_client" "$addr" "$conns" 64 "$duration" 1 \
                --server-pid "$server_pid" 2>>"$work/client.err") || return 0
             json_figures <<<"$json" ;;
        teb) [ -n "$teb" ] || return 0
             local before after text n
             before=$(cpu_secs "$server_pid")
             text=$("$teb" -a "$addr" -l 64 -c "$conns" -t "$duration" 2>>"$work/client.err") || return 0
             after=$(cpu_secs "$server_pid")
             n=$(teb_totals "$text" | cut -d' ' -f2)
             [ -n "$n" ] && [ "$n" -gt 0 ] || return 0
             awk -v n="$n" -v d="$duration" -v a="$before" -v b="$after" \
                 'BEGIN { printf "%.1f - %.3f\n", n / d, (b - a) * 1e6 / n }' ;;
        *) say "unknown client in point $p (ctl, teb, tok, thr or rate-R)"; exit 2 ;;
    esac
}

servers=("${!names[@]}" "${peer_list[@]}")
label() { if [[ $1 == *-echo ]]; then echo "$1"; else echo "${names[$1]}"; fi; }
results=$work/results.tsv
: > "$results"
IFS=',' read -r -a point_list <<<"$points"
for round in $(seq "$rounds"); do
    for s in "${servers[@]}"; do
        say "round $round/$rounds: $(label "$s")"
        start "$s"
        for p in "${point_list[@]}"; do
            figures=$(measure "$p")
            if [ -z "$figures" ]; then
                say "$(label "$s") $p: no result (client failed or missing)"
                continue
            fi
            printf '%s\t%s\t%s\n' "$(label "$s")" "$p" "$figures" >> "$results"
        done
        stop
    done
done

# The tables: one row per point and figure, one column per server.
columns=()
for s in "${servers[@]}"; do columns+=("$(label "$s")"); done
median_cell() { # SERVER POINT FIELD: "median (min–max)" over rounds
    awk -F'\t' -v s="$1" -v p="$2" -v f="$3" '$1 == s && $2 == p { split($3, v, " "); if (v[f] != "-") print v[f] }' "$results" |
        sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "–"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            fmt = (m >= 100) ? "%.0f" : "%.2f"
            printf fmt " (" fmt "–" fmt ")\n", m, v[1], v[NR] }'
}
echo
echo "$rounds interleaved rounds, $duration s per point; $(nproc) CPUs, $(uname -r)"
echo
printf '| point | figure |'; printf ' %s |' "${columns[@]}"; echo
printf '|---|---|'; printf -- '---:|%.0s' "${columns[@]}"; echo
for p in "${point_list[@]}"; do
    for f in 1 2 3; do
        case $f in 1) what="round trips/s" ;; 2) what="p99 µs" ;; 3) what="server CPU µs/round trip" ;; esac
        row=""
        for c in "${columns[@]}"; do row+=" $(median_cell "$c" "$p" "$f") |"; done
        [ "$(tr -d ' |–' <<<"$row")" = "" ] || echo "| $p | $what |$row"
    done
done
