#!/bin/bash
# build-deb.sh: build the echo-lab Debian package into target/debian/.
#
#   packaging/build-deb.sh [extra cargo-deb options]
#
# Builds the release binaries, generates the shell completions of
# echo-labctl into target/completions/ (skipped with a warning while
# echo-labctl has no `completions` subcommand), then runs cargo-deb, with
# the `completions` variant when the completions exist. Prints the path of
# the .deb on the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-deb.sh: installing cargo-deb" >&2
  cargo install --locked cargo-deb >&2
fi

cargo build --release --locked >&2

out=target/completions
rm -rf "$out"
mkdir -p "$out"
variant=()
ctl=target/release/echo-labctl
if "$ctl" completions bash >"$out/echo-labctl.bash" 2>/dev/null \
  && "$ctl" completions zsh >"$out/_echo-labctl" 2>/dev/null \
  && "$ctl" completions fish >"$out/echo-labctl.fish" 2>/dev/null \
  && [ -s "$out/echo-labctl.bash" ] && [ -s "$out/_echo-labctl" ] && [ -s "$out/echo-labctl.fish" ]; then
  variant=(--variant completions)
else
  rm -f "$out"/*
  echo "build-deb.sh: warning: '$ctl completions SHELL' failed; building the package without shell completions" >&2
fi

cargo deb --no-build "${variant[@]}" "$@" >&2
deb=$(ls -t target/debian/echo-lab_*.deb | head -n 1)
echo "$PWD/$deb"
