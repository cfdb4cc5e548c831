#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs them.
#
#   bash tests/run.sh            # everything
#   bash tests/run.sh --quick    # formatting, lints and cargo test only
#
# Needs root for the set-up (apt-get) and for the systemd container tests.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1

step() { printf '\n==== %s ====\n' "$*"; }

# ---------------------------------------------------------------- set-up
# prometheus: /usr/bin/prometheus and promtool (tests/metrics.rs, the rules);
# logrotate: tests/log_file.rs runs the shipped snippet; haproxy: tests/proxy.rs.
# g++: libfuzzer-sys builds libFuzzer (C++) for the fuzz targets.
apt_pkgs=(mandoc man-db lintian debootstrap systemd-container python3 netcat-openbsd procps util-linux iproute2 git prometheus logrotate g++ haproxy openssl)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    step "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: not root; cannot install ${missing[*]}" >&2
  fi
fi
cargo_tool() { # cargo_tool BIN CRATE [VERSION]
  command -v "$1" >/dev/null 2>&1 || { step "installing $2"; cargo install --locked "$2" ${3:+--version "$3"}; }
}
if [ $quick = 0 ]; then
  cargo_tool cargo-deb cargo-deb
  cargo_tool cargo-deny cargo-deny
  cargo_tool cargo-fuzz cargo-fuzz
fi

# ---------------------------------------------------------------- checks
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
step "cargo build --release"
cargo build --workspace --release --locked
step "cargo test"
cargo test --workspace --locked --features echo-lab/fault-injection 2>&1 | tee target/cargo-test.log
[ $quick = 1 ] && exit 0

if [ -d man ] && ls man/*.[0-9] >/dev/null 2>&1; then
  step "mandoc -Tlint"
  mandoc -Tlint -W warning man/*.[0-9]
fi
step "promtool: example alert rules"
promtool check rules packaging/echo-lab.rules.yml
(cd tests/prometheus && promtool test rules rules_test.yml)
python3 -m json.tool packaging/grafana-dashboard.json >/dev/null
step "cargo deny check"
cargo deny check licenses bans sources
step "cargo deny check advisories"
bash tests/advisories.sh
# fuzz/ is a project of its own (outside the crate, its own Cargo.lock,
# not --locked: a dependency added to the crate is picked up there too):
# linted here, then every target built and run for a few seconds.
step "fuzz targets: fmt, clippy, smoke (every target, a few seconds each)"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --manifest-path fuzz/Cargo.toml -- -D warnings
bash fuzz/run.sh "${ECHO_LAB_FUZZ_SECS:-5}"
if [ -x bench/compare.sh ] || [ -f bench/compare.sh ]; then
  step "bench smoke"
  bash bench/compare.sh --smoke
fi
if [ -f tests/systemd/run.sh ]; then
  step "systemd tests (in a container)"
  bash tests/systemd/run.sh
fi
step "summary"
grep -E '^test result:' target/cargo-test.log | awk '{p+=$4; f+=$6} END {printf "cargo-test: %d passed, %d failed\n", p, f}'
