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
  tcp.py reconnect HOST PORT STOPFILE [CLIENTS]
                                        CLIENTS (default 4) threads, each
                                        keeping a connection for up to 50
                                        round trips, reconnecting when it is
                                        lost; print ok (round trips),
                                        refused, failed (connections lost or
                                        round trips that failed), reconnects
                                        (after a failure); STOPFILE.count as
                                        for loop. Exit 0 if ok > 0 and
                                        refused == 0: lost connections are
                                        counted, not failures of the command
  tcp.py hold HOST PORT N SLOW READYFILE STOPFILE
                                        hold N connections at once: N-SLOW-2
                                        idle ones, one hog (sends, never
                                        reads), SLOW slow senders (a byte
                                        every 100 ms each) and a probe doing
                                        round trips; check that connection
                                        N+1 gets the busy notice; write
                                        READYFILE once all are up, keep the
                                        hostile ones going until STOPFILE
                                        exists, then check every connection
                                        still echoes and print figures

Exit status: 0 success, 1 failure (the reason on stderr).
"""

import os
import resource
import selectors
import socket
import subprocess
import sys
import threading
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
            write_count(stopfile, ok)
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


def write_count(stopfile, n):
    with open(stopfile + ".count.tmp", "w") as f:
        f.write(str(n))
    os.replace(stopfile + ".count.tmp", stopfile + ".count")


def cmd_reconnect(host, port, stopfile, clients=4):
    """Round trips on kept connections; a lost one is counted and replaced."""
    lock = threading.Lock()
    c = {"ok": 0, "refused": 0, "failed": 0, "reconnects": 0}
    errors = {}

    def client(k):
        n = 0
        s = None
        uses = 0
        lost = False
        while not os.path.exists(stopfile):
            try:
                if s is None:
                    s = connect(host, port, timeout=TIMEOUT)
                    uses = 0
                    if lost:
                        with lock:
                            c["reconnects"] += 1
                        lost = False
                n += 1
                round_trip(s, b"client %d round trip %d\n" % (k, n), time.monotonic() + TIMEOUT)
                uses += 1
                with lock:
                    c["ok"] += 1
                    write_count(stopfile, c["ok"])
                if uses >= 50:
                    s.close()
                    s = None
            except ConnectionRefusedError:
                with lock:
                    c["refused"] += 1
                s = None
                time.sleep(0.001)  # do not spin on a port nobody listens on
            except Exception as e:  # reset, closed before the echo, timeout
                with lock:
                    c["failed"] += 1
                    key = type(e).__name__
                    errors[key] = errors.get(key, 0) + 1
                if s is not None:
                    s.close()
                s = None
                lost = True
                time.sleep(0.001)
        if s is not None:
            s.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(
        f"ok={c['ok']} refused={c['refused']} failed={c['failed']} "
        f"reconnects={c['reconnects']} clients={clients} {errors if errors else ''}".strip()
    )
    return 0 if c["ok"] > 0 and c["refused"] == 0 else 1


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise OSError(f"need {need} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def open_idle(host, port, n, batch=256):
    """n connections, each echoing one line once (so the daemon has them)."""
    socks = []
    while len(socks) < n:
        group = [connect(host, port) for _ in range(min(batch, n - len(socks)))]
        for i, s in enumerate(group):
            s.sendall(b"idle %d\n" % (len(socks) + i))
        for i, s in enumerate(group):
            round_trip_tail(s, b"idle %d\n" % (len(socks) + i), time.monotonic() + TIMEOUT)
        socks.extend(group)
    return socks


def round_trip_tail(sock, payload, deadline):
    """Waits for the echo of a payload already sent."""
    return read_until(sock, lambda d: payload in strip_notices(d), deadline)


def cmd_hold(host, port, n, slow, readyfile, stopfile, max_secs=300):
    n, slow = int(n), int(slow)
    idle_n = n - slow - 2
    if idle_n < 0:
        raise ValueError("N must be at least SLOW + 2")
    raise_nofile(n + 256)
    t0 = time.monotonic()
    idle = open_idle(host, port, idle_n)
    sel = selectors.DefaultSelector()
    # The hog: sends as fast as the daemon takes it, never reads.
    hog = connect(host, port)
    hog.setblocking(False)
    hog_sent = 0
    chunk = b"h" * 65536
    sel.register(hog, selectors.EVENT_WRITE, "hog")
    # Slow senders: one byte every 100 ms each, reading their echo.
    slow_socks = [connect(host, port) for _ in range(slow)]
    slow_sent = [bytearray() for _ in slow_socks]
    slow_got = [bytearray() for _ in slow_socks]
    for i, s in enumerate(slow_socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    probe = connect(host, port)
    # Past max_connections: this one must get the busy notice and EOF.
    with connect(host, port) as extra:
        busy = read_until(extra, lambda d: d.endswith(b"\n"), time.monotonic() + TIMEOUT)
    if not busy.startswith(b"[echo-lab] busy"):
        raise ConnectionError(f"connection {n + 1} got {busy!r}, not the busy notice")
    opened = time.monotonic() - t0
    open(readyfile, "w").close()

    lat = []
    next_slow = next_probe = time.monotonic()
    k = 0
    deadline = time.monotonic() + max_secs
    while not os.path.exists(stopfile):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no stop file after {max_secs} s")
        now = time.monotonic()
        if now >= next_slow:
            for i, s in enumerate(slow_socks):
                b = bytes([97 + (len(slow_sent[i]) % 26)])
                if s.send(b) == 1:
                    slow_sent[i] += b
            next_slow = now + 0.1
        if now >= next_probe:
            k += 1
            t = time.monotonic()
            round_trip(probe, b"probe %d\n" % k, t + TIMEOUT)
            lat.append(time.monotonic() - t)
            next_probe = time.monotonic() + 0.05
        for key, _ in sel.select(timeout=0.01):
            if key.data == "hog":
                try:
                    hog_sent += hog.send(chunk)
                except BlockingIOError:
                    pass
            else:
                data = key.fileobj.recv(65536)
                if not data:
                    raise ConnectionError(f"slow sender {key.data} closed by the server")
                slow_got[key.data] += data
    # Everything still there: the slow senders got all their bytes back in
    # order, every idle connection still echoes.
    end = time.monotonic() + TIMEOUT
    for i, s in enumerate(slow_socks):
        while bytes(slow_got[i]) != bytes(slow_sent[i]):
            if not bytes(slow_sent[i]).startswith(bytes(slow_got[i])):
                raise ConnectionError(f"slow sender {i}: echo differs from what it sent")
            if time.monotonic() > end:
                raise TimeoutError(f"slow sender {i}: {len(slow_got[i])} of {len(slow_sent[i])} bytes back")
            for key, _ in sel.select(timeout=0.05):
                if key.data != "hog":
                    slow_got[key.data] += key.fileobj.recv(65536)
    for i, s in enumerate(idle):
        s.sendall(b"still here %d\n" % i)
    for i, s in enumerate(idle):
        round_trip_tail(s, b"still here %d\n" % i, time.monotonic() + TIMEOUT)
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print(
        f"held {n}: {idle_n} idle, 1 hog ({hog_sent} bytes taken), {slow} slow senders "
        f"({sum(len(x) for x in slow_got)} bytes echoed in order), 1 probe "
        f"({len(lat)} round trips, p50 {pct(0.5):.2f} ms, p99 {pct(0.99):.2f} ms); "
        f"connection {n + 1} got the busy notice; all opened in {opened:.1f} s; "
        f"all {idle_n} idle ones still echo"
    )
    for s in idle + slow_socks + [hog, probe]:
        s.close()
    return 0


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
        if cmd == "reconnect" and len(argv) in (5, 6):
            return cmd_reconnect(host, port, argv[4], *(int(x) for x in argv[5:]))
        if cmd == "hold" and len(argv) == 8:
            return cmd_hold(host, port, *argv[4:])
    except (OSError, TimeoutError, ConnectionError, ValueError) as e:
        print(f"tcp.py {cmd} {host}:{port}: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
