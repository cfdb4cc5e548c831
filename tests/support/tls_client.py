#!/usr/bin/env python3
"""A TLS echo client on Python's ssl module, for tests/tls.rs.

usage: tls_client.py PORT CAFILE MODE [options]
  --cert FILE --key FILE   present a client certificate
  --tls12 / --tls13        pin the version
  --alpn NAME              offer an ALPN protocol
  --sni NAME               server name (default: localhost)

MODE
  echo TEXT     one session: send TEXT, read its echo, then `disconnect`
                and read to the end (the goodbye, then close_notify).
  wait          one session: read until the server closes it (notices).
  loop STOPFILE round trips on fresh sessions until STOPFILE exists.
  hog           one session: send without reading until the server stops
                taking bytes (3 s without progress), then read the echo
                of all that was sent and compare it.

Prints one JSON object on stdout; exits 0 unless the mode failed.
"""
import json
import os
import socket
import ssl
import sys
import time


def context(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(args["ca"])
    if args.get("cert"):
        ctx.load_cert_chain(args["cert"], args["key"])
    if args.get("tls12"):
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if args.get("tls13"):
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if args.get("alpn"):
        ctx.set_alpn_protocols([args["alpn"]])
    return ctx


def connect(args, ctx):
    raw = socket.create_connection(("127.0.0.1", args["port"]), timeout=10)
    # Not suppressing ragged EOFs: a TCP close without close_notify then
    # raises SSLEOFError, which read_all reports as an unclean end.
    return ctx.wrap_socket(
        raw, server_hostname=args.get("sni", "localhost"), suppress_ragged_eofs=False
    )


CLEAN = {}


def read_all(s):
    """Reads to the end; CLEAN["close_notify"] says whether the server
    ended with close_notify (True) or just closed TCP (False)."""
    got = b""
    CLEAN["close_notify"] = True
    while True:
        try:
            chunk = s.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        except (ssl.SSLEOFError, ConnectionResetError):
            CLEAN["close_notify"] = False
            break
        if not chunk:
            break
        got += chunk
    return got


def read_n(s, n):
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def describe(s):
    cert = s.getpeercert() or {}
    return {
        "version": s.version(),
        "cipher": s.cipher()[0],
        "serial": cert.get("serialNumber", ""),
        "alpn": s.selected_alpn_protocol(),
    }


def echo(args, text):
    ctx = context(args)
    with connect(args, ctx) as s:
        out = describe(s)
        data = text.encode()
        s.sendall(data)
        out["echoed"] = read_n(s, len(data)).decode(errors="replace")
        s.sendall(b"disconnect\n")
        out["rest"] = read_all(s).decode(errors="replace")
        out["close_notify"] = CLEAN["close_notify"]
    return out


def wait(args):
    ctx = context(args)
    with connect(args, ctx) as s:
        out = describe(s)
        out["rest"] = read_all(s).decode(errors="replace")
        out["close_notify"] = CLEAN["close_notify"]
    return out


def loop(args, stopfile):
    ctx = context(args)
    ok, failures, serials, errors = 0, 0, [], []
    deadline = time.time() + 60
    while not os.path.exists(stopfile) and time.time() < deadline:
        try:
            with connect(args, ctx) as s:
                serial = describe(s)["serial"]
                msg = b"ping %d\n" % ok
                s.sendall(msg)
                if read_n(s, len(msg)) != msg:
                    raise RuntimeError("bad echo")
            ok += 1
            if not serials or serials[-1] != serial:
                serials.append(serial)
        except Exception as e:  # every failure is counted and shown
            failures += 1
            errors.append(repr(e))
    return {"ok": ok, "failures": failures, "serials": serials, "errors": errors[:5]}


def hog(args):
    ctx = context(args)
    block = bytes(range(256)) * 256
    with connect(args, ctx) as s:
        s.settimeout(3)
        sent = 0
        while sent < 256 << 20:
            try:
                sent += s.send(block)
            except (socket.timeout, ssl.SSLWantWriteError):
                break
        s.settimeout(20)
        got = read_n(s, sent)
    want = (block * (sent // len(block) + 1))[:sent]
    return {"sent": sent, "echoed": len(got), "same": got == want}


def main(argv):
    args = {"port": int(argv[0]), "ca": argv[1]}
    mode, rest = argv[2], argv[3:]
    positional = []
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in ("--cert", "--key", "--alpn", "--sni"):
            args[a[2:]] = rest[i + 1]
            i += 2
        elif a in ("--tls12", "--tls13"):
            args[a[2:]] = True
            i += 1
        else:
            positional.append(a)
            i += 1
    try:
        if mode == "echo":
            out = echo(args, positional[0])
        elif mode == "wait":
            out = wait(args)
        elif mode == "hog":
            out = hog(args)
        elif mode == "loop":
            out = loop(args, positional[0])
        else:
            raise SystemExit("unknown mode " + mode)
    except Exception as e:
        print(json.dumps({"error": repr(e)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
