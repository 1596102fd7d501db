#!/usr/bin/env python3
"""Loads the Q/R data set (qr_data.py) into a Storage SCP by C-STORE, for at most T minutes.

Studies go in order 0, 1, 2, ...; each is written to a spool folder just before it is sent and
sent whole by one DCMTK `storescu` (one association per study, TCP_NODELAY=1, see
../shared/bench/README.md for why), W of them at a time. At the deadline no new study is
started and the ones under way finish, so the SCP holds exactly studies 0..K-1 (a study whose
storescu failed is reported and makes the exit status 1). Writes a JSON summary.

  qr_load.py --port 4242 --aec ORTHANC --studies 10000 --minutes 10 --workers 4 \
      --spool /tmp/spool --out loaded.json
"""
import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qr_data import Scheme  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--aec", required=True, help="the SCP's AE title")
    ap.add_argument("--aet", default="QRLOAD", help="our AE title")
    ap.add_argument("--studies", type=int, default=10000, help="load at most this many")
    ap.add_argument("--per-study", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=4, help="concurrent storescu")
    ap.add_argument("--spool", required=True, help="scratch folder for the files in flight")
    ap.add_argument("--out", help="JSON summary")
    a = ap.parse_args()

    scheme = Scheme(a.seed, a.per_study)
    t0 = time.monotonic()
    deadline = t0 + a.minutes * 60
    todo = queue.Queue(maxsize=2 * a.workers)  # generated, not yet taken
    lock = threading.Lock()
    state = {"taken": 0, "done": 0, "failed": []}
    env = dict(os.environ, TCP_NODELAY="1")

    def produce():
        for s in range(a.studies):
            if time.monotonic() >= deadline:
                break
            d = os.path.join(a.spool, str(s))
            todo.put((s, d, scheme.write_study(s, d)))
        for _ in range(a.workers):
            todo.put(None)

    def work():
        while True:
            item = todo.get()
            if item is None:
                return
            s, d, paths = item
            with lock:
                # Taken in queue order, so that the studies loaded stay a prefix 0..K-1.
                if time.monotonic() >= deadline:
                    shutil.rmtree(d, ignore_errors=True)
                    continue
                state["taken"] += 1
            r = subprocess.run(
                ["storescu", "-aet", a.aet, "-aec", a.aec, a.host, str(a.port)] + paths,
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            shutil.rmtree(d, ignore_errors=True)
            with lock:
                if r.returncode == 0:
                    state["done"] += 1
                else:
                    state["failed"].append(s)
                    print(f"study {s}: storescu exit {r.returncode}: "
                          f"{r.stdout.strip().splitlines()[-2:]}", file=sys.stderr)

    threads = [threading.Thread(target=produce, daemon=True)]
    threads += [threading.Thread(target=work, daemon=True) for _ in range(a.workers)]
    for t in threads:
        t.start()
    last = t0
    while any(t.is_alive() for t in threads[1:]):
        time.sleep(0.5)
        now = time.monotonic()
        if now - last >= 15:
            last = now
            with lock:
                done = state["done"]
            print(f"  {a.aec}: {done} studies ({done * a.per_study} instances) in "
                  f"{now - t0:.0f} s, {done * a.per_study / (now - t0):.0f} inst/s", flush=True)
    secs = time.monotonic() - t0
    done, failed = state["done"], sorted(state["failed"])
    summary = {
        "aec": a.aec,
        "studies": done,
        "per_study": a.per_study,
        "instances": done * a.per_study,
        "seconds": round(secs, 1),
        "instances_per_second": round(done * a.per_study / secs, 1),
        "stopped_by": "all loaded" if done + len(failed) >= a.studies else "time limit",
        "minutes": a.minutes,
        "workers": a.workers,
        "seed": a.seed,
        "failed_studies": failed,
    }
    print(json.dumps(summary))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
