#!/usr/bin/env bash
# `cargo deny --workspace check advisories` against the RustSec advisory database:
# the live one where its git host is reachable, else the snapshot bundle in
# ../shared/data (beside the project; override with
# ECHO_LAB_ADVISORY_BUNDLE=PATH), cloned under target/ and read with
# --offline. Fails if an advisory applies that deny.toml does not justify,
# and fails — never passes with a warning — when neither database is there.
#
#   bash tests/advisories.sh          # live if reachable, else the snapshot
#   bash tests/advisories.sh --snapshot   # the snapshot only
set -euo pipefail
cd "$(dirname "$0")/.."

# deny.toml names this URL in db-urls; cargo-deny keeps its clone of it in
# DB_PATH/advisory-db-<hash of the URL>.
url=https://github.com/rustsec/advisory-db
dir_name=advisory-db-3157b0e258782691
bundle=${ECHO_LAB_ADVISORY_BUNDLE:-../shared/data/rustsec-advisory-db.bundle}

why="the snapshot was asked for"
if [ "${1:-}" != --snapshot ]; then
  if timeout 20 git ls-remote "$url" HEAD >/dev/null 2>&1; then
    echo "advisories: live database ($url)"
    exec cargo deny --workspace check advisories
  fi
  why="$url is unreachable"
fi

if [ ! -f "$bundle" ]; then
  echo "error: $why and there is no snapshot at $bundle: advisories NOT checked" >&2
  exit 1
fi
db_path=$PWD/target/advisory-db
rm -rf "$db_path"
mkdir -p "$db_path"
git -c init.defaultBranch=main clone --quiet "$bundle" "$db_path/$dir_name"
snapshot=$(git -C "$db_path/$dir_name" log -1 --format='%h of %cs')
count=$(find "$db_path/$dir_name/crates" -name 'RUSTSEC-*.md' | wc -l)
if [ "$count" -lt 100 ]; then
  echo "error: the snapshot $bundle holds $count crate advisories: not a RustSec database" >&2
  exit 1
fi
# The policy of deny.toml, with db-path pointed at the clone.
config=target/deny-snapshot.toml
sed "/^\[advisories\]/a db-path = \"$db_path\"" deny.toml >"$config"
grep -q "^db-path = \"$db_path\"" "$config" || {
  echo "error: no [advisories] table in deny.toml to point at the snapshot" >&2
  exit 1
}
echo "advisories: $why; using the snapshot $snapshot ($count crate advisories, $bundle)"
cargo deny --workspace --offline --config "$config" check advisories
