#!/usr/bin/env bash
# Latency of the whole loop: from the acknowledgement of a series' last instance to the
# destination's acknowledgement of the mesh, minus the quiet time.
#
#   bench/latency.sh [RUNS]      (default 3; needs ../shared/bench for the 512x512x300 CT)
#
# Series: testdata ct_head_axial_small (54 x 128x128) and a synthetic 512x512x300 CT (bone
# at 300 HU) from ../shared/bench/make_series.py. The node runs with quiet_seconds = 2 and a
# rule sending ct-bone results to a DCMTK storescp on loopback. Times are read from the node's
# own log: the last "stored" line (written as its success status is sent) and the
# "result delivered" line (written when the destination's success status has arrived).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shared=${SHARED_BENCH:-../shared/bench}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/m3dnode-bench}
mkdir -p "$scratch"
if [ ! -d "$scratch/series/ct300" ]; then
    [ -x "$scratch/venv/bin/python" ] || { python3 -m venv "$scratch/venv"; "$scratch/venv/bin/pip" install -q numpy pydicom; }
    "$scratch/venv/bin/python" "$shared/make_series.py" --modality CT --rows 512 --cols 512 --slices 300 "$scratch/series/ct300"
fi
cargo build --release -q
node=$PWD/target/release/m3dnode
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dport=$(port); nport=$(port)
mkdir -p "$work/dest"
TCP_NODELAY=1 storescp -aet DEST +xa -od "$work/dest" "$dport" &
quiet=2
cat > "$work/c.toml" <<TOML
[node]
listen = "127.0.0.1:$nport"
storage = "$work/var"
min_free_mb = 1
[series]
quiet_seconds = $quiet
[[peers]]
ae_title = "DEST"
address = "127.0.0.1:$dport"
[[rules]]
name = "ct bone"
modality = "CT"
preset = "ct-bone"
send_to = ["DEST"]
TOML
RUST_LOG=info,m3dnode::net=debug "$node" serve -c "$work/c.toml" > /dev/null 2> "$work/node.log" &
sleep 1
ts() { date -d "$1" +%s.%N; }
for name in ct_head_axial_small ct300; do
    dir=testdata/series/$name; [ "$name" = ct300 ] && dir=$scratch/series/ct300
    for r in $(seq "$runs"); do
        : > "$work/node.log"
        # A fresh series each run: the same files again would be duplicates, not a new series.
        rm -rf "$work/var"/* 2>/dev/null || true
        pkill -f "m3dnode serve -c $work/c.toml" || true; sleep 0.5
        RUST_LOG=info,m3dnode::net=debug "$node" serve -c "$work/c.toml" > /dev/null 2> "$work/node.log" &
        sleep 1
        TCP_NODELAY=1 storescu -aec M3DNODE +sd +r 127.0.0.1 "$nport" "$dir"
        for _ in $(seq 600); do grep -q "result delivered" "$work/node.log" && break; sleep 0.1; done
        last=$(grep ' stored' "$work/node.log" | tail -1 | cut -d' ' -f1)
        done_at=$(grep 'result delivered' "$work/node.log" | tail -1 | cut -d' ' -f1)
        python3 - "$name" "$last" "$done_at" "$quiet" <<'PY'
import sys
from datetime import datetime
name, a, b, q = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
p = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
print(f"{name}: last instance acknowledged -> mesh acknowledged {(p(b) - p(a)).total_seconds():.3f} s, minus quiet {q:.0f} s = {(p(b) - p(a)).total_seconds() - q:.3f} s")
PY
    done
done
