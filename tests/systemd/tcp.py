#!/usr/bin/env python3
"""TCP client side of the systemd tests: every wait has a deadline.

  tcp.py echo HOST PORT                 one round trip; exit 0 if echoed
  tcp.py expect HOST PORT PREFIX        wait for a line starting with PREFIX
                                        (sending nothing: an idle client)
  tcp.py drain HOST PORT -- CMD...      connect, check the echo, run CMD (which
                                        starts a drain), wait for the
                                        "shutting down" notice, check the
                                        echo still works after it
  tcp.py loop HOST PORT STOPFILE        connect, echo, close, again and again
                                        until STOPFILE exists; print counts
                                        (STOPFILE.count holds the successes
                                        so far, for the caller to poll)

Exit status: 0 success, 1 failure (the reason on stderr).
"""

import os
import socket
import subprocess
import sys
import time

TIMEOUT = float(os.environ.get("TCP_TIMEOUT", "10"))
NOTICE = b"[echo-lab] "


def connect(host, port, timeout=TIMEOUT):
    return socket.create_connection((host, int(port)), timeout=timeout)


def strip_notices(data):
    """The received bytes without the server's own notice lines."""
    out = []
    for line in data.splitlines(keepends=True):
        if not line.startswith(NOTICE):
            out.append(line)
    return b"".join(out)


def read_until(sock, done, deadline):
    """Reads until done(data) or the deadline; returns what was read."""
    data = b""
    while not done(data):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out; got {data[-200:]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by server; got {data[-200:]!r}")
        data += chunk
    return data


def round_trip(sock, payload, deadline):
    sock.sendall(payload)
    return read_until(sock, lambda d: payload in strip_notices(d), deadline)


def cmd_echo(host, port):
    payload = b"echo-lab test %d %f\n" % (os.getpid(), time.time())
    with connect(host, port) as s:
        round_trip(s, payload, time.monotonic() + TIMEOUT)
    return 0


def cmd_expect(host, port, prefix):
    want = prefix.encode()
    with connect(host, port) as s:
        data = read_until(
            s,
            lambda d: any(l.startswith(want) for l in d.splitlines(keepends=True) if l.endswith(b"\n")),
            time.monotonic() + TIMEOUT,
        )
    for line in data.splitlines():
        if line.startswith(want):
            print(line.decode(errors="replace"))
    return 0


def cmd_drain(host, port, argv):
    with connect(host, port) as s:
        round_trip(s, b"before the drain\n", time.monotonic() + TIMEOUT)
        rc = subprocess.call(argv)
        if rc != 0:
            print(f"command {argv} exited {rc}", file=sys.stderr)
            return 1
        deadline = time.monotonic() + TIMEOUT
        data = read_until(s, lambda d: b"[echo-lab] shutting down\r\n" in d, deadline)
        print(data.decode(errors="replace").strip().splitlines()[-1])
        round_trip(s, b"still echoing while draining\n", deadline)
    return 0


def cmd_loop(host, port, stopfile):
    ok = refused = failed = 0
    errors = {}
    n = 0
    while not os.path.exists(stopfile):
        n += 1
        payload = b"loop %d\n" % n
        try:
            with connect(host, port, timeout=5) as s:
                round_trip(s, payload, time.monotonic() + 5)
            ok += 1
            with open(stopfile + ".count.tmp", "w") as f:
                f.write(str(ok))
            os.replace(stopfile + ".count.tmp", stopfile + ".count")
        except ConnectionRefusedError:
            refused += 1
            time.sleep(0.001)  # do not spin on a port nobody listens on
        except Exception as e:  # reset, timeout, closed before the echo
            failed += 1
            key = type(e).__name__
            errors[key] = errors.get(key, 0) + 1
            time.sleep(0.001)
    print(f"ok={ok} refused={refused} failed={failed} {errors if errors else ''}".strip())
    return 0 if ok > 0 and refused == 0 and failed == 0 else 1


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, host, port = argv[1], argv[2], argv[3]
    try:
        if cmd == "echo":
            return cmd_echo(host, port)
        if cmd == "expect" and len(argv) == 5:
            return cmd_expect(host, port, argv[4])
        if cmd == "drain" and len(argv) > 5 and argv[4] == "--":
            return cmd_drain(host, port, argv[5:])
        if cmd == "loop" and len(argv) == 5:
            return cmd_loop(host, port, argv[4])
    except (OSError, TimeoutError, ConnectionError) as e:
        print(f"tcp.py {cmd} {host}:{port}: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
