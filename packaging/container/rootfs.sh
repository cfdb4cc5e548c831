#!/usr/bin/env bash
# Lays out the container image's root filesystem in DIR: the two binaries,
# exactly the shared libraries they load (from ldd), a passwd/group naming
# the non-root user 65532, the config at /etc/echo-lab.toml and the
# writable /run/echo-lab. The Containerfile copies DIR as the whole image
# (FROM scratch): nothing else is in it — no shell, no package manager.
#
#   bash packaging/container/rootfs.sh DIR [ECHO_LAB ECHO_LABCTL]
#
# The binaries default to target/release/. tests/container.rs runs the
# result with chroot as user 65532 (no container engine needed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${1:?usage: rootfs.sh DIR [ECHO_LAB ECHO_LABCTL]}"
daemon="${2:-$here/../../target/release/echo-lab}"
client="${3:-$here/../../target/release/echo-labctl}"

mkdir -p "$root/usr/bin" "$root/etc" "$root/run/echo-lab" "$root/tmp"
install -m 0755 "$daemon" "$root/usr/bin/echo-lab"
install -m 0755 "$client" "$root/usr/bin/echo-labctl"
# Debug info is not needed to run; strip if we can.
command -v strip >/dev/null && strip "$root/usr/bin/echo-lab" "$root/usr/bin/echo-labctl" || true

# Every library either binary loads, and the dynamic loader, at the paths
# ldd reports.
for lib in $( { ldd "$daemon"; ldd "$client"; } | grep -o '/[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

printf 'root:x:0:0:root:/:/nonexistent\necho-lab:x:65532:65532:echo-lab:/nonexistent:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\necho-lab:x:65532:\n' >"$root/etc/group"
install -m 0644 "$here/echo-lab.toml" "$root/etc/echo-lab.toml"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/run/echo-lab" 2>/dev/null || chmod 0777 "$root/run/echo-lab"
