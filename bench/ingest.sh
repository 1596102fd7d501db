#!/usr/bin/env bash
# C-STORE ingest throughput of `m3dnode serve` side by side with DCMTK storescp, on loopback.
#
#   bench/ingest.sh [RUNS]          (default 7 runs; needs ../shared/bench beside the repo)
#   SHIPPED_RUNS=N                  runs against storescp as shipped (default 3)
#
# Series: a synthetic 512x512 16-bit MR series of 200 slices (105 MB), written once by the
# shared generator. Harness: ../shared/bench/ingest.sh, which starts every SCP once on its own
# port, then per run sends the series with DCMTK storescu (TCP_NODELAY=1) to each SCP in turn,
# rotating the order, and reports medians and per-run ratios against the first SCP named.
# SCPs compared:
#   dcmtk            storescp as shipped (Nagle on: ~22 instances/s)
#   dcmtk-nd         storescp with TCP_NODELAY=1 (tuned)
#   dcmtk-fork-nd    storescp --fork with TCP_NODELAY=1 (for the 4-association runs)
#   m3dnode durable  the default: fsync file + directory before each success status
#   m3dnode sync=false  durability off, for comparison only
# Neither storescp variant ever fsyncs (see ../shared/bench/README.md).
# Note: the harness empties each output dir between runs, including the node's index and tmp/;
# the node recreates tmp/ and keeps writing its (unlinked) index, which does not change what
# is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
shipped_runs=${SHIPPED_RUNS:-3}
shared=${SHARED_BENCH:-../shared/bench}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/m3dnode-bench}
mkdir -p "$scratch/tmp"

command -v storescu >/dev/null || { echo "install dcmtk first (scripts/test does)" >&2; exit 2; }
if [ ! -x "$scratch/venv/bin/python" ]; then
    python3 -m venv "$scratch/venv"
    "$scratch/venv/bin/pip" install -q numpy pydicom
fi
py=$scratch/venv/bin/python
series=$scratch/series/mr200
[ -d "$series" ] || "$py" "$shared/make_series.py" --modality MR --rows 512 --cols 512 --slices 200 "$series"

cargo build --release -q
node=$PWD/target/release/m3dnode
scp="$node serve --listen 127.0.0.1:{port} --storage {outdir} --ae-title {aet}"
durable="env M3DNODE__NODE__MIN_FREE_MB=1 RUST_LOG=warn $scp"
nosync="env M3DNODE__NODE__SYNC=false M3DNODE__NODE__MIN_FREE_MB=1 RUST_LOG=warn $scp"

harness() { TMPDIR=$scratch/tmp PYTHON=$py "$shared/ingest.sh" -d "$series" -e -1 "$@"; }
echo "## one association"
harness -n "$runs" dcmtk-nd "$durable" "$nosync"
echo "## four concurrent associations"
harness -c 4 -n "$runs" dcmtk-fork-nd "$durable" "$nosync"
# storescp as shipped takes ~9 s per run (Nagle), during which the machine idles; in the
# rotation above it would leave the SCP after it starting cold, so it is compared on its own.
echo "## storescp as shipped (one and four associations)"
harness -n "$shipped_runs" dcmtk "$durable" "$nosync"
harness -c 4 -n "$shipped_runs" dcmtk "$durable" "$nosync"
