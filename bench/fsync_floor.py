#!/usr/bin/env python3
"""The disk's floor for durable ingest: files/s of write + fdatasync + rename + directory
fsync alone, with no network and no DICOM, for the same file sizes as the ingest benchmark.

    bench/fsync_floor.py DIR [--files 200] [--size 525693] [--writers 1|4]

DIR must be on the storage volume under test. Run it next to bench/ingest.sh: a durable SCP
cannot beat this figure, so `floor / dcmtk-nd` bounds the durable ratio this disk allows.
"""
import argparse
import os
import shutil
import statistics
import threading
import time


def writer(root, names, data, lat):
    tmp = os.path.join(root, "tmp")
    final = os.path.join(root, "series")
    for name in names:
        t0 = time.perf_counter()
        path = os.path.join(tmp, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, data)
        os.fdatasync(fd)
        os.close(fd)
        os.rename(path, os.path.join(final, name))
        dfd = os.open(final, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        lat.append(time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--size", type=int, default=525693)
    ap.add_argument("--writers", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    data = os.urandom(a.size)
    rates = []
    for run in range(a.runs):
        root = os.path.join(a.dir, f"floor-{os.getpid()}-{run}")
        os.makedirs(os.path.join(root, "tmp"))
        os.makedirs(os.path.join(root, "series"))
        names = [f"{i:05}.dcm" for i in range(a.files)]
        lat = []
        threads = [
            threading.Thread(target=writer, args=(root, names[w :: a.writers], data, lat))
            for w in range(a.writers)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.perf_counter() - t0
        rates.append(a.files / secs)
        print(
            f"run {run}: {a.files / secs:.1f} files/s, per-file latency median "
            f"{statistics.median(lat) * 1e3:.2f} ms"
        )
        shutil.rmtree(root)
    print(f"floor ({a.writers} writer(s)): median {statistics.median(rates):.1f} files/s")


if __name__ == "__main__":
    main()
