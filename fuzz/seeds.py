#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, from the project's testdata and a few hand-built
PDUs, so that each target starts from valid input (standard library only)."""
import os
import struct
import sys

root, out = sys.argv[1], sys.argv[2]
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT = b"1.2.840.10008.1.2"
EXPLICIT = b"1.2.840.10008.1.2.1"
DEFLATED = b"1.2.840.10008.1.2.1.99"
BIG = b"1.2.840.10008.1.2.2"


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def even(b):
    return b + b"\0" if len(b) % 2 else b


def item(kind, body):
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq():
    ctx = item(0x20, b"\x01\0\0\0" +
               struct.pack(">BBH", 0x30, 0, len(VERIFICATION)) + VERIFICATION +
               struct.pack(">BBH", 0x40, 0, len(IMPLICIT)) + IMPLICIT)
    user = item(0x50, struct.pack(">BBHI", 0x51, 0, 4, 16384) +
                struct.pack(">BBH", 0x52, 0, 8) + b"1.2.3.44")
    app = item(0x10, b"1.2.840.10008.3.1.1.1")
    body = (struct.pack(">HH", 1, 0) + b"M3DNODE".ljust(16) + b"ECHOSCU".ljust(16) +
            b"\0" * 32 + app + ctx + user)
    return struct.pack(">BBI", 1, 0, len(body)) + body


def element(group, elem, value):
    return struct.pack("<HHI", group, elem, len(value)) + value


def echo_command():
    els = (element(0, 0x0002, even(VERIFICATION)) + element(0, 0x0100, struct.pack("<H", 0x30)) +
           element(0, 0x0110, struct.pack("<H", 1)) + element(0, 0x0800, struct.pack("<H", 0x0101)))
    return element(0, 0x0000, struct.pack("<I", len(els))) + els


def pdata(command):
    pdv = struct.pack(">IBB", len(command) + 2, 1, 0x03) + command
    return struct.pack(">BBI", 4, 0, len(pdv)) + pdv


# PDUs and commands
rq = associate_rq()
put("associate_rq", "echo", rq)
cmd = echo_command()
put("dimse_command", "c-echo-rq", cmd)
put("pdu_framer", "c-echo", pdata(cmd) + struct.pack(">BBI", 5, 0, 4) + b"\0" * 4)
put("pdu_framer", "abort", struct.pack(">BBI", 7, 0, 4) + b"\0\0\2\0")

# C-FIND identifiers (Implicit VR Little Endian; first byte picks model/service/syntax)
ident = (element(0x0008, 0x0052, b"STUDY ") + element(0x0010, 0x0010, b"SMITH*") +
         element(0x0020, 0x000D, b""))
put("cfind_identifier", "study", b"\x00" + ident)
put("cfind_identifier", "image-move", b"\x02" + element(0x0008, 0x0052, b"IMAGE ") +
    element(0x0020, 0x000D, b"1.2.3 ") + element(0x0020, 0x000E, b"1.2.4 ") +
    element(0x0008, 0x0018, b"1.2.5 "))

# Stored files and their data sets (after the file meta group)
syntaxes = {IMPLICIT: 0, EXPLICIT: 1, BIG: 2, DEFLATED: 3}
n = 0
for base, _, files in os.walk(os.path.join(root, "testdata", "files")):
    for name in sorted(files):
        path = os.path.join(base, name)
        data = open(path, "rb").read()
        if len(data) > 1 << 20 or data[128:132] != b"DICM":
            continue
        n += 1
        put("stored_file", "%03d-%s" % (n, name), data)
        if data[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
            continue
        meta_len = struct.unpack("<I", data[140:144])[0]
        meta = data[144:144 + meta_len]
        ts = next((t for t in syntaxes if t in meta), None)
        if ts is not None:
            put("header_walk", "%03d-%s" % (n, name), bytes([syntaxes[ts]]) + data[144 + meta_len:])
print("seeds written to", out)
