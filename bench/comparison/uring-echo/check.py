#!/usr/bin/env python3
"""Quick correctness check (tiny load): python3 bench/comparison/uring-echo/check.py HOST:PORT [NCONN]"""
import os, socket, sys, selectors, time

host, port = sys.argv[1].rsplit(":", 1); port = int(port)
nconn = int(sys.argv[2]) if len(sys.argv) > 2 else 1000

def recv_exact(s, n):
    out = b""
    while len(out) < n:
        d = s.recv(n - len(out))
        if not d: raise RuntimeError("EOF")
        out += d
    return out

# 1. a few messages on one connection, various sizes incl. > 4 KiB buffer
s = socket.create_connection((host, port)); s.settimeout(5)
for size in [1, 64, 64, 100, 4096, 4097, 10000, 200000]:
    msg = os.urandom(size)
    s.sendall(msg)
    assert recv_exact(s, size) == msg, size
s.close()
print("single-connection sizes OK")

# 2. 64-byte ping-pong, a few hundred round trips
s = socket.create_connection((host, port)); s.settimeout(5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(300):
    msg = os.urandom(64); s.sendall(msg); assert recv_exact(s, 64) == msg
s.close()
print("300 x 64-byte ping-pong OK")

# 3. NCONN concurrent connections, all open at once, each one round trip
t0 = time.time()
socks = []
for i in range(nconn):
    c = socket.create_connection((host, port)); c.settimeout(10)
    socks.append(c)
msgs = [os.urandom(64) for _ in socks]
for c, m in zip(socks, msgs): c.sendall(m)
for c, m in zip(socks, msgs): assert recv_exact(c, 64) == m
# a second round, then close half abruptly and check the rest still works
for c, m in zip(socks, msgs): c.sendall(m[::-1])
for c, m in zip(socks, msgs): assert recv_exact(c, 64) == m[::-1]
for c in socks[::2]:
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # RST
    c.close()
for c, m in zip(socks[1::2], msgs[1::2]):
    c.sendall(m); assert recv_exact(c, 64) == m
for c in socks[1::2]: c.close()
print(f"{nconn} concurrent connections x 2 round trips OK ({time.time()-t0:.2f}s)")

# 4. reconnect after closes (slot reuse)
for i in range(200):
    c = socket.create_connection((host, port)); c.settimeout(5)
    m = os.urandom(64); c.sendall(m); assert recv_exact(c, 64) == m; c.close()
print("200 sequential connect/echo/close OK")
