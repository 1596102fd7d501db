#!/usr/bin/env python3
"""C-FIND latency of one Q/R SCP: 100 queries of each kind on one association (issue 13).

Kinds (qr_data.py): STUDY by Patient ID, STUDY by Patient's Name `SMI*`, STUDY by a one-month
Study Date range, SERIES by Study Instance UID; Study Root. Per kind, 5 warm-up queries and
then `--count` timed ones, each timed from sending the C-FIND-RQ to receiving the final
response (all pending responses read). The keys come from the first `--key-studies` studies
(default: all `--size` of them; systems of one size get the same queries); each answer's number
of matches is checked against what a system holding studies 0..`--size`-1 must return, and
afterwards a few answers per kind are decoded and their UIDs compared (untimed).

Two clients, the same wire traffic:
  pynetdicom  pynetdicom's Association.send_c_find, TCP_NODELAY set on its socket. Its reactor
              polls every 1 ms and decodes every message with pydicom, ~0.3 ms of client CPU
              per match, so it measures the client when a query has hundreds of matches.
  raw         a minimal upper-layer client (this file): PDUs read from the socket, only the
              command set parsed, identifiers kept as bytes. Its CPU per query is printed.
C-ECHO round trips on the same association give each system's floor.

  qr_latency.py --port 4242 --aec ORTHANC --name orthanc --size 5000 --client raw \
      --json-out orthanc.json
  qr_latency.py --count-studies --port 4242 --aec ORTHANC     # universal STUDY query
  qr_latency.py --report a.json b.json ...                     # tables and ratios

Needs pydicom and pynetdicom.
"""
import argparse
import io
import json
import math
import os
import socket
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qr_data  # noqa: E402

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"
NO_DATASET = 0x0101


class Answer:
    """One C-FIND: pending responses counted, final status, identifiers when kept."""

    def __init__(self):
        self.matches = 0
        self.status = None
        self.comment = ""
        self.identifiers = []


# ---- raw upper-layer client ----------------------------------------------------------------

def _item(kind, data):
    return struct.pack(">BBH", kind, 0, len(data)) + data


def _uid(u):
    b = u.encode("ascii")
    return b + b"\0" if len(b) % 2 else b


def _command(fields):
    """A command set, Implicit VR Little Endian (PS3.7 6.3.1), group length first."""
    body = b""
    for (g, e), value in sorted(fields.items()):
        raw = struct.pack("<H", value) if isinstance(value, int) else _uid(value)
        body += struct.pack("<HHI", g, e, len(raw)) + raw
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _parse_command(raw):
    out = {}
    i = 0
    while i + 8 <= len(raw):
        g, e, n = struct.unpack_from("<HHI", raw, i)
        v = raw[i + 8:i + 8 + n]
        i += 8 + n
        if n == 2:
            out[(g, e)] = struct.unpack("<H", v)[0]
        else:
            out[(g, e)] = v.rstrip(b"\0 ").decode("ascii", "replace")
    return out


class RawClient:
    """An SCU association over a plain socket: enough of PS3.8 for C-ECHO and C-FIND."""

    def __init__(self, host, port, aet, aec, timeout=120.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rf = self.sock.makefile("rb", buffering=1 << 16)
        self.pdvs = []
        self.msg_id = 0
        contexts = [(STUDY_ROOT_FIND, [EXPLICIT_LE, IMPLICIT_LE]), (VERIFICATION, [IMPLICIT_LE])]
        body = struct.pack(">HH16s16s32s", 1, 0, aec.ljust(16).encode(), aet.ljust(16).encode(),
                           b"\0" * 32)
        body += _item(0x10, APP_CONTEXT.encode())
        for i, (abstract, tss) in enumerate(contexts):
            sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, t.encode()) for t in tss)
            body += _item(0x20, bytes([2 * i + 1, 0, 0, 0]) + sub)
        body += _item(0x50, _item(0x51, struct.pack(">I", 1 << 20))
                      + _item(0x52, (qr_data.UID_ROOT + ".0.2").encode())
                      + _item(0x55, b"QRBENCH"))
        self.sock.sendall(struct.pack(">BBI", 1, 0, len(body)) + body)
        kind, data = self._read_pdu()
        if kind != 2:
            raise RuntimeError(f"association not accepted (PDU type {kind:#x}: {data[:10].hex()})")
        self.peer_max = 0
        self.ts = {}
        i = 68
        while i + 4 <= len(data):
            t, n = data[i], struct.unpack_from(">H", data, i + 2)[0]
            v = data[i + 4:i + 4 + n]
            i += 4 + n
            if t == 0x21 and v[2] == 0:
                ts = v[8:8 + struct.unpack_from(">H", v, 6)[0]].rstrip(b"\0").decode()
                self.ts[v[0]] = ts
            elif t == 0x50:
                j = 0
                while j + 4 <= len(v):
                    st, sn = v[j], struct.unpack_from(">H", v, j + 2)[0]
                    if st == 0x51:
                        self.peer_max = struct.unpack_from(">I", v, j + 4)[0]
                    j += 4 + sn
        if 1 not in self.ts:
            raise RuntimeError("Study Root C-FIND not accepted")
        self.find_ts = self.ts[1]

    def _read_exact(self, n):
        b = self.rf.read(n)
        if len(b) != n:
            raise ConnectionError("peer closed the connection")
        return b

    def _read_pdu(self):
        kind, _, n = struct.unpack(">BBI", self._read_exact(6))
        return kind, self._read_exact(n)

    def _send(self, ctx, control, data):
        """Sends one message part as P-DATA-TF PDUs no longer than the peer takes."""
        room = (self.peer_max or (1 << 20)) - 6
        pos = 0
        while True:
            part = data[pos:pos + room]
            pos += len(part)
            last = pos >= len(data)
            pdv = struct.pack(">IBB", len(part) + 2, ctx, control | (2 if last else 0)) + part
            self.sock.sendall(struct.pack(">BBI", 4, 0, len(pdv)) + pdv)
            if last:
                return

    def _next_pdv(self):
        while not self.pdvs:
            kind, data = self._read_pdu()
            if kind == 7:
                raise ConnectionError("association aborted by the peer")
            if kind != 4:
                raise RuntimeError(f"unexpected PDU type {kind:#x}")
            i = 0
            while i < len(data):
                n = struct.unpack_from(">I", data, i)[0]
                self.pdvs.append((data[i + 5], data[i + 6:i + 4 + n]))
                i += 4 + n
        return self.pdvs.pop(0)

    def _read_message(self, keep):
        cmd = b""
        while True:
            control, part = self._next_pdv()
            if not control & 1:
                raise RuntimeError("data fragment where a command was expected")
            cmd += part
            if control & 2:
                break
        fields = _parse_command(cmd)
        data = None
        if fields.get((0, 0x0800), NO_DATASET) != NO_DATASET:
            chunks = []
            while True:
                control, part = self._next_pdv()
                if keep:
                    chunks.append(part)
                if control & 2:
                    break
            data = b"".join(chunks)
        return fields, data

    def echo(self):
        self.msg_id += 1
        self._send(3, 1, _command({(0, 2): VERIFICATION, (0, 0x100): 0x0030,
                                   (0, 0x110): self.msg_id, (0, 0x800): NO_DATASET}))
        fields, _ = self._read_message(False)
        return fields.get((0, 0x900))

    def encode(self, ds):
        from pynetdicom.dsutils import encode
        return encode(ds, self.find_ts == IMPLICIT_LE, True)

    def find(self, encoded, keep=False):
        self.msg_id += 1
        self._send(1, 1, _command({(0, 2): STUDY_ROOT_FIND, (0, 0x100): 0x0020,
                                   (0, 0x110): self.msg_id, (0, 0x700): 0, (0, 0x800): 0}))
        self._send(1, 0, encoded)
        ans = Answer()
        while True:
            fields, data = self._read_message(keep)
            status = fields.get((0, 0x900))
            if status in (0xFF00, 0xFF01):
                ans.matches += 1
                if keep:
                    ans.identifiers.append(self._decode(data))
                continue
            ans.status = status
            ans.comment = fields.get((0, 0x902), "")
            return ans

    def _decode(self, data):
        from pynetdicom.dsutils import decode
        return decode(io.BytesIO(data), self.find_ts == IMPLICIT_LE, True)

    def release(self):
        self.sock.sendall(struct.pack(">BBI", 5, 0, 4) + b"\0" * 4)
        try:
            self._read_pdu()
        except (ConnectionError, OSError):
            pass
        self.sock.close()


# ---- pynetdicom client ---------------------------------------------------------------------

class PynetdicomClient:
    def __init__(self, host, port, aet, aec, timeout=120.0):
        from pynetdicom import AE
        ae = AE(ae_title=aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.add_requested_context(STUDY_ROOT_FIND, [EXPLICIT_LE, IMPLICIT_LE])
        ae.add_requested_context(VERIFICATION, [IMPLICIT_LE])
        self.assoc = ae.associate(host, port, ae_title=aec)
        if not self.assoc.is_established:
            raise RuntimeError("association not accepted")
        # pynetdicom leaves Nagle on: a C-FIND-RQ's second PDU (the identifier) waits for the
        # peer's delayed ACK (a 4-match query against Orthanc: 47 ms, 5.5 ms with NODELAY).
        self.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # pynetdicom 3.0.4 race: each send_*() ends by setting `_reactor_checkpoint`, which
        # wakes the association's reactor thread; if the next request goes out before that
        # thread has run, `_is_paused` is still True from before, the thread wakes after the
        # request and takes the response off the queue as if it were a request, and the
        # caller waits until its DIMSE timeout. Against Orthanc with TCP_NODELAY, 5 of 6 runs
        # of 200 C-ECHOs hung (after 1 to 72). An SCU does not need the reactor, so park it
        # for good and wake it only to release.
        checkpoint = self.assoc._reactor_checkpoint
        checkpoint.clear()
        time.sleep(0.02)  # the reactor finishes its iteration and blocks in wait()
        if not self.assoc._is_paused:
            raise RuntimeError("pynetdicom's reactor did not pause")
        checkpoint.set = lambda: None

    def echo(self):
        st = self.assoc.send_c_echo()
        return st.Status if "Status" in st else st

    def encode(self, ds):
        return ds

    def find(self, ds, keep=False):
        ans = Answer()
        for status, ident in self.assoc.send_c_find(ds, STUDY_ROOT_FIND):
            code = status.Status if "Status" in status else None
            if code in (0xFF00, 0xFF01):
                ans.matches += 1
                if keep:
                    ans.identifiers.append(ident)
            else:
                ans.status = code
                ans.comment = str(status.get("ErrorComment", ""))
        return ans

    def release(self):
        del self.assoc._reactor_checkpoint.set  # back to threading.Event.set
        self.assoc.release()


def connect(kind, a):
    cls = RawClient if kind == "raw" else PynetdicomClient
    return cls(a.host, a.port, a.aet, a.aec)


# ---- measuring -----------------------------------------------------------------------------

def identifier(level, keys):
    from pydicom.dataset import Dataset
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def p99(values):
    """Nearest-rank 99th percentile: with 100 samples, the second largest."""
    s = sorted(values)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


def measure(a):
    scheme = qr_data.Scheme(a.seed, a.per_study)
    queries = qr_data.make_queries(scheme, a.key_studies, a.warmup + a.count,
                                   derived=not a.no_derived)
    client = connect(a.client, a)
    echoes = []
    for _ in range(a.warmup + 20):
        t = time.perf_counter()
        st = client.echo()
        if st != 0:
            raise RuntimeError(f"C-ECHO failed: status {st!r}")
        echoes.append(time.perf_counter() - t)
    echoes = echoes[a.warmup:]
    result = {"name": a.name, "client": a.client, "size": a.size, "per_study": a.per_study,
              "seed": a.seed, "key_studies": a.key_studies, "count": a.count,
              "derived_keys": not a.no_derived,
              "echo_ms": 1000 * statistics.median(echoes), "kinds": {}}
    problems = []
    for kind in qr_data.KINDS:
        qs = queries[kind]
        encoded = [client.encode(identifier(q["level"], q["keys"])) for q in qs]
        want = [len(qr_data.expected(scheme, a.size, q)) for q in qs]
        times, cpu, got = [], [], []
        for i, enc in enumerate(encoded):
            c0, t0 = time.process_time(), time.perf_counter()
            ans = client.find(enc)
            t1, c1 = time.perf_counter(), time.process_time()
            if ans.status != 0:
                problems.append(f"{kind} query {i}: final status {ans.status!r} {ans.comment}")
            if i >= a.warmup:
                times.append(1000 * (t1 - t0))
                cpu.append(1000 * (c1 - c0))
                got.append(ans.matches)
            if ans.matches != want[i]:
                problems.append(f"{kind} query {i} ({qs[i]['match'][1]}): {ans.matches} "
                                f"matches, a system with {a.size} studies must give {want[i]}")
        # Untimed: do the matches name the right studies/series, and the derived keys?
        uid_kw = "SeriesInstanceUID" if qs[0]["level"] == "SERIES" else "StudyInstanceUID"
        derived = {}
        for i in range(a.warmup, a.warmup + min(3, a.count)):
            ans = client.find(encoded[i], keep=True)
            uids = sorted(str(d.get(uid_kw, "")) for d in ans.identifiers)
            if uids != qr_data.expected(scheme, a.size, qs[i]):
                problems.append(f"{kind} query {i}: matched UIDs differ from the data set's")
            for d in ans.identifiers:
                study = next((st for st in scheme.studies(a.size)
                              if st["StudyInstanceUID"] == str(d.get("StudyInstanceUID"))), None)
                for kw, must in (("ModalitiesInStudy", study and study["Modality"]),
                                 ("NumberOfStudyRelatedInstances", str(a.per_study)),
                                 ("NumberOfStudyRelatedSeries",
                                  str(scheme.series_per_study)),
                                 ("NumberOfSeriesRelatedInstances", None)):
                    if kw in qs[i]["keys"]:
                        v = str(d.get(kw, "") or "").strip()
                        ok = v != "" and (must is None or v == must)
                        derived.setdefault(kw, set()).add("ok" if ok else (v or "empty"))
        result["kinds"][kind] = {
            "title": qr_data.KIND_TITLES[kind],
            "median_ms": statistics.median(times),
            "p99_ms": p99(times),
            "min_ms": min(times),
            "max_ms": max(times),
            "client_cpu_ms": statistics.median(cpu),
            "matches": got,
            "matches_total": sum(got),
            "derived": {k: sorted(v) for k, v in derived.items()},
        }
    client.release()
    result["problems"] = problems
    return result


def print_result(r):
    print(f"{r['name']} ({r['size']} studies, client {r['client']}): C-ECHO "
          f"{r['echo_ms']:.2f} ms")
    for kind, k in r["kinds"].items():
        m = k["matches"]
        der = " ".join(f"{kw}={'/'.join(v)}" for kw, v in k["derived"].items())
        print(f"  {k['title']:32s} median {k['median_ms']:8.2f} ms  p99 {k['p99_ms']:8.2f} ms"
              f"  client CPU {k['client_cpu_ms']:6.2f} ms  matches/query "
              f"{min(m)}..{max(m)} (sum {sum(m)})  {der}")
    for p in r["problems"][:20]:
        print(f"  PROBLEM: {p}")


def report(files, base_name):
    """Tables: per system and client, median/p99; ratios to `base_name` (same client)."""
    rs = []
    for f in files:
        if os.path.exists(f):
            rs.append(json.load(open(f)))
        else:
            print(f"(no result: {os.path.basename(f)}, see the errors above)")
    for client in sorted({r["client"] for r in rs}):
        print(f"\n### client {client}\n")
        print("| system | studies | C-ECHO ms | " + " | ".join(
            qr_data.KIND_TITLES[k] + " median / p99 ms" for k in qr_data.KINDS) + " |")
        print("|---|---|---|" + "---|" * len(qr_data.KINDS))
        for r in rs:
            if r["client"] != client:
                continue
            cells = []
            for k in qr_data.KINDS:
                x = r["kinds"][k]
                cells.append(f"{x['median_ms']:.2f} / {x['p99_ms']:.2f} "
                             f"({x['matches_total'] / len(x['matches']):.1f} matches)")
            bad = " **PROBLEMS**" if r["problems"] else ""
            print(f"| {r['name']}{bad} | {r['size']} | {r['echo_ms']:.2f} | "
                  + " | ".join(cells) + " |")
        bases = [r for r in rs if r["client"] == client and r["name"].startswith(base_name)]
        for r in rs:
            if r["client"] != client or r["name"].startswith(base_name):
                continue
            for b in bases:
                ratios = [r["kinds"][k]["median_ms"] / b["kinds"][k]["median_ms"]
                          for k in qr_data.KINDS]
                same = " (same size)" if b["size"] == r["size"] else ""
                print(f"\nmedian {r['name']} / {b['name']}{same} (> 1: {b['name']} is faster): "
                      + ", ".join(
                    f"{qr_data.KIND_TITLES[k]} {x:.2f}x" for k, x in zip(qr_data.KINDS, ratios)))
    return 1 if any(r["problems"] for r in rs) or len(rs) < len(files) else 0


def count_studies(a):
    client = RawClient(a.host, a.port, a.aet, a.aec)
    ans = client.find(client.encode(identifier("STUDY", {"StudyInstanceUID": ""})))
    client.release()
    if ans.status != 0:
        raise RuntimeError(f"universal query: status {ans.status!r} {ans.comment}")
    return ans.matches


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int)
    ap.add_argument("--aec", help="the SCP's AE title")
    ap.add_argument("--aet", default="QRSCU", help="our AE title")
    ap.add_argument("--name", help="the system's name in the output")
    ap.add_argument("--size", type=int, help="studies the system holds (0..size-1)")
    ap.add_argument("--key-studies", type=int, help="draw keys from the first N studies "
                    "(default --size)")
    ap.add_argument("--per-study", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=100, help="timed queries per kind")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--client", choices=("raw", "pynetdicom"), default="pynetdicom")
    ap.add_argument("--no-derived", action="store_true",
                    help="leave Modalities in Study and the Number of ... keys out")
    ap.add_argument("--json-out")
    ap.add_argument("--count-studies", action="store_true")
    ap.add_argument("--report", nargs="+", metavar="JSON")
    ap.add_argument("--base", default="node", help="--report: ratios against systems "
                    "whose name starts with this")
    a = ap.parse_args()
    if a.report:
        return report(a.report, a.base)
    if a.count_studies:
        print(count_studies(a))
        return 0
    a.key_studies = a.key_studies or a.size
    r = measure(a)
    print_result(r)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(r, f, indent=1)
    return 1 if r["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
