"""Storage Commitment latency (issue 19): from sending the N-ACTION-RQ to receiving the
N-EVENT-REPORT-RQ, for N instances already stored, on the requester's association ("same")
and on a new association to the requester's own SCP ("new").

Used by bench/commit.sh, which starts the node. This script stores N small synthetic MR
instances (64x64; size matters only for the node's 132-byte preamble read) on one association,
then times RUNS requests of each kind, each with a new Transaction UID listing all N.

With --node-log, also the node's own part (from its debug log: Action Information read to
N-EVENT-REPORT-RQ written), which leaves out pynetdicom's encoding and decoding of the 300-item
data sets in Python.

"new": the requester answers the report on its own association with 0x0110 (processing
failure), which sends the node to a new association to the requester's [[peers]] address (the
path a report takes when the requester's association is gone). The figure therefore includes
that refused round trip (well under a millisecond on loopback) besides the new association.
"""
import argparse, json, statistics, sys, threading, time

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, StorageCommitmentPushModel

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True, help="the node's DICOM port")
p.add_argument("--server-port", type=int, required=True, help="this scanner's own SCP port")
p.add_argument("--n", type=int, default=300)
p.add_argument("--runs", type=int, default=5)
p.add_argument("--node-log", help="the node's log (RUST_LOG=m3dnode=debug): adds its own part")
a = p.parse_args()

MR = str(MRImageStorage)


def instance(study, series, i):
    ds = Dataset()
    ds.SOPClassUID = MR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = "MR"
    ds.PatientID, ds.PatientName = "BENCH", "BENCH^COMMIT"
    ds.InstanceNumber = i + 1
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16) % 4096).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


lock = threading.Condition()
arrived = {}  # transaction UID -> (perf_counter, event type, where)


def note(event, where):
    t = time.perf_counter()
    uid = str(event.event_information.TransactionUID)
    with lock:
        arrived[uid] = (t, event.event_type, where)
        lock.notify_all()


refuse_same = False


def on_same(event):
    note(event, "same") if not refuse_same else None
    return (0x0110 if refuse_same else 0x0000), None


def on_new(event):
    note(event, "new")
    return 0x0000, None


server = AE(ae_title="SCANNER")
server.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
server.start_server(("127.0.0.1", a.server_port), block=False,
                    evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_new)])

ae = AE(ae_title="SCANNER")
ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 60
ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
ae.add_requested_context(StorageCommitmentPushModel)
assoc = ae.associate("127.0.0.1", a.port, ae_title="M3DNODE",
                     evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_same)])
assert assoc.is_established, "no association with the node"
study, series = generate_uid(), generate_uid()
items = []
for i in range(a.n):
    ds = instance(study, series, i)
    st = assoc.send_c_store(ds)
    assert st.Status == 0, hex(st.Status)
    items.append((MR, str(ds.SOPInstanceUID)))


def request(tx):
    ds = Dataset()
    ds.TransactionUID = tx
    ds.ReferencedSOPSequence = Sequence()
    for cls, inst in items:
        it = Dataset()
        it.ReferencedSOPClassUID, it.ReferencedSOPInstanceUID = cls, inst
        ds.ReferencedSOPSequence.append(it)
    return ds


results = {"same": [], "new": []}
# One untimed request of each kind first (warm-up: caches, first association setup).
for kind in ["same", "new"] * (a.runs + 1):
    refuse_same = kind == "new"
    tx = generate_uid()
    ds = request(tx)
    t0 = time.perf_counter()
    st, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    assert st.Status == 0, hex(st.Status)
    with lock:
        ok = lock.wait_for(lambda: tx in arrived, timeout=60)
    assert ok, f"no report for {kind}"
    t1, event_type, where = arrived[tx]
    assert where == kind and event_type == 1, (where, event_type)
    results[kind].append((t1 - t0) * 1e3)
assoc.release()
server.shutdown()


def node_side():
    """The node's own part, from its log: "N-ACTION received" (its Action Information read) to
    the last "N-EVENT-REPORT-RQ sent" before the next request (for "new", the one on the new
    association), in request order: same, new, same, new, ..."""
    from datetime import datetime
    stamps = []
    for line in open(a.node_log):
        if "N-ACTION received" in line or "N-EVENT-REPORT-RQ sent" in line:
            t = datetime.strptime(line.split()[0].rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f")
            stamps.append(("rq" if "N-ACTION received" in line else "sent", t.timestamp()))
    spans, start, last = [], None, None
    for kind, t in stamps + [("rq", None)]:
        if kind == "rq":
            if start is not None and last is not None:
                spans.append((last - start) * 1e3)
            start, last = t, None
        else:
            last = t
    return {"same": spans[0::2], "new": spans[1::2]}


time.sleep(0.5)  # the log line of the last report
sides = node_side() if a.node_log else {}
out = {}
for kind, ms in results.items():
    timed = ms[1:]  # the first of each kind is the warm-up
    out[kind] = {"runs_ms": [round(x, 2) for x in timed],
                 "median_ms": round(statistics.median(timed), 2),
                 "max_ms": round(max(timed), 2)}
    if kind in sides and len(sides[kind]) == len(ms):
        node = sides[kind][1:]
        out[kind]["node_median_ms"] = round(statistics.median(node), 2)
        out[kind]["node_max_ms"] = round(max(node), 2)
print(json.dumps(out))
