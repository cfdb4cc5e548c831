#!/usr/bin/env python3
"""Measures echo-lab's faults from outside, with Python's own sockets (a
client the project did not write). Used by bench/faults.sh.

  faults.py rtt HOST:PORT CONNS SECS       ping-pong, 64 B; RTT percentiles (ms)
  faults.py rate HOST:PORT CONNS SECS      stream both ways; bytes/s per connection
  faults.py udp HOST:PORT COUNT            COUNT datagrams, paced; how many came back
"""
import json
import selectors
import socket
import sys
import time


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100.0 * len(s)))]


def rtt(target, conns, secs):
    sel = selectors.DefaultSelector()
    msg = b"x" * 63 + b"\n"
    socks = []
    for _ in range(conns):
        s = socket.create_connection(target)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    rtts = []
    sent_at = {}
    got = {}
    for s in socks:
        sent_at[s] = time.monotonic()
        s.send(msg)
        got[s] = 0
        sel.register(s, selectors.EVENT_READ)
    end = time.monotonic() + secs
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            data = s.recv(65536)
            if not data:
                raise SystemExit("closed by the server")
            got[s] += len(data)
            if got[s] >= len(msg):
                now = time.monotonic()
                rtts.append(now - sent_at[s])
                got[s] = 0
                # Stamped before the send: a client preempted after it
                # would otherwise see a round trip shorter than it was.
                sent_at[s] = time.monotonic()
                s.send(msg)
    ms = [r * 1000.0 for r in rtts]
    return {
        "client": "python3 sockets",
        "round_trips": len(ms),
        "p1_ms": pct(ms, 1), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99),
        "min_ms": min(ms), "max_ms": max(ms),
    }


def rate(target, conns, secs):
    sel = selectors.DefaultSelector()
    chunk = b"y" * 16384
    socks = []
    for _ in range(conns):
        s = socket.create_connection(target)
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    got = {s: 0 for s in socks}
    sent = {s: 0 for s in socks}
    warm = 1.0
    start = time.monotonic()
    mark = None
    base = {}
    while True:
        now = time.monotonic()
        if mark is None and now - start >= warm:
            mark = now
            base = dict(got)
        if mark is not None and now - mark >= secs:
            break
        for key, ev in sel.select(timeout=0.5):
            s = key.fileobj
            if ev & selectors.EVENT_READ:
                data = s.recv(1 << 20)
                if not data:
                    raise SystemExit("closed by the server")
                got[s] += len(data)
            # Keep at most 256 KiB in flight: the server's pacing, not the
            # buffers, sets the rate.
            if ev & selectors.EVENT_WRITE and sent[s] - got[s] < 262144:
                try:
                    sent[s] += s.send(chunk)
                except BlockingIOError:
                    pass
    elapsed = time.monotonic() - mark
    rates = [(got[s] - base[s]) / elapsed for s in socks]
    return {
        "client": "python3 sockets",
        "connections": conns, "secs": elapsed,
        "min_Bps": min(rates), "median_Bps": pct(rates, 50), "max_Bps": max(rates),
        "total_Bps": sum(rates),
    }


def udp(target, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.connect(target)
    s.setblocking(False)
    back = 0
    group = 200
    for first in range(0, count, group):
        for i in range(first, min(count, first + group)):
            s.send(i.to_bytes(4, "big"))
        # Read the group's echoes until a quiet spell.
        quiet_until = time.monotonic() + 0.05
        while time.monotonic() < quiet_until:
            try:
                s.recv(64)
                back += 1
                quiet_until = time.monotonic() + 0.05
            except BlockingIOError:
                time.sleep(0.001)
    return {"client": "python3 sockets", "sent": count, "echoed": back, "lost": count - back}


def main():
    what = sys.argv[1]
    target = addr(sys.argv[2])
    if what == "rtt":
        out = rtt(target, int(sys.argv[3]), float(sys.argv[4]))
    elif what == "rate":
        out = rate(target, int(sys.argv[3]), float(sys.argv[4]))
    elif what == "udp":
        out = udp(target, int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
