# lib.sh: helpers that bench/compare.sh and bench/ab.sh share; sourced, not
# run. Needs clk_tck set (getconf CLK_TCK) before cpu_secs is called.

# cpu_secs PID: user + system CPU seconds of a process, every thread
# (fields 14 and 15 of /proc/PID/stat, counted after the command name).
cpu_secs() {
    awk -v t="$clk_tck" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / t }' "/proc/$1/stat"
}

# teb_totals TEXT: "REQUESTS RESPONSES" from tcp-echo-benchmark's output
# ("Total: N requests, M responses"), or nothing if it printed no total.
teb_totals() {
    sed -nE 's/^Total: ([0-9]+) requests, ([0-9]+) responses$/\1 \2/p' <<<"$1"
}
