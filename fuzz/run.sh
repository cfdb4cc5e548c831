#!/usr/bin/env bash
# Builds the fuzz targets and runs each in turn for SECONDS, one fuzzer at
# a time; exits non-zero if any target crashes, hangs, fails an invariant,
# or does not run.
#
#   bash fuzz/run.sh SECONDS [TARGET...]     # default: every target
#
# Needs cargo-fuzz (`cargo install --locked cargo-fuzz`) and a C++ compiler
# (libfuzzer-sys builds libFuzzer). cargo-fuzz passes nightly-only flags to
# rustc (-Zsanitizer=address, sancov); on a stable toolchain they are
# allowed by RUSTC_BOOTSTRAP=1, set here for this build only.
#
# Each target reads its committed seeds (fuzz/seeds/TARGET, never written)
# and grows its own corpus in fuzz/corpus/TARGET (not committed); a crash
# is saved in fuzz/artifacts/TARGET/ and its reproduction command printed.
# The log of each run, with libFuzzer's final figures (executions/s,
# cov: edges covered, ft: features), is in fuzz/target/logs/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config protocol control proxy udp_guard tls)

export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do cargo fuzz build -O "$t"; done
mkdir -p target/logs

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=target/logs/$t.log
  printf '== fuzz %s for %ss\n' "$t" "$secs"
  # -timeout: an input taking over 60 s is a hang, reported as a failure
  # (generous: on a loaded shared machine a 10 ms input once took over 10 s
  # of wall time).
  if cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -timeout=60 -dict="dict/$t.dict" \
      -print_final_stats=1 >"$log" 2>&1 \
     && grep -q '^Done [0-9]* runs' "$log"; then
    # The last status line: total runs, coverage, corpus, executions/s.
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    printf '   ok: %s (average exec/s %s)\n' "$status" "$rate"
  else
    echo "   FAILED: $t (log: fuzz/$log)" >&2
    grep -E 'panicked|SUMMARY|Test unit written|^Failing input|cargo fuzz run' "$log" >&2 || tail -n 20 "$log" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failing targets: ${failed[*]}" >&2
  exit 1
fi
