#!/usr/bin/env bash
# Time from an MPPS COMPLETED (every listed instance already stored) to the job's start, read
# from the node's own log: the "mpps COMPLETED" line (written when the N-SET is in the index,
# just before its N-SET-RSP), "series complete (MPPS): job queued" (the tracker) and "job
# started" (the worker). The rule's quiet time is 600 s, so only the MPPS can complete the
# series; without MPPS the same series would wait its quiet time (20 s by default).
#
#   bench/mpps.sh [RUNS] [SLICES]      (default 5 runs of a 100-slice 64x64 CT)
#
# Needs pynetdicom, pydicom and numpy (the test venv: M3DNODE_PYTHON, or target/pyenv).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
slices=${2:-100}
py=${M3DNODE_PYTHON:-$PWD/target/pyenv/bin/python}
cargo build --release -q
node=$PWD/target/release/m3dnode
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nport=$(port)
cat > "$work/c.toml" <<TOML
[node]
listen = "127.0.0.1:$nport"
storage = "$work/var"
min_free_mb = 1
[http]
listen = ""
[[rules]]
name = "ct"
modality = "CT"
preset = "ct-bone"
quiet_seconds = 600
reply_to_sender = true
TOML
RUST_LOG=info,m3dnode::net=debug "$node" serve -c "$work/c.toml" > /dev/null 2> "$work/node.log" &
for _ in $(seq 100); do grep -q "listening" "$work/node.log" 2>/dev/null && break; sleep 0.1; done
for r in $(seq "$runs"); do
    uid=$("$py" -c 'from pydicom.uid import generate_uid; print(generate_uid())')
    "$py" bench/mpps.py make "$work/s$r" "$slices"
    "$py" bench/mpps.py create "$nport" "$uid"
    TCP_NODELAY=1 storescu -aec M3DNODE -aet SCANNER +sd +r 127.0.0.1 "$nport" "$work/s$r"
    "$py" bench/mpps.py complete "$nport" "$uid" "$work/s$r"
    for _ in $(seq 300); do [ "$(grep -c 'job started' "$work/node.log")" -ge "$r" ] && break; sleep 0.05; done
done
"$py" - "$work/node.log" "$runs" <<'PY'
import re, statistics, sys
from datetime import datetime
log, runs = open(sys.argv[1]).read().splitlines(), int(sys.argv[2])
t = lambda l: datetime.fromisoformat(l.split(" ")[0].replace("Z", "+00:00"))
def times(marker):
    return [t(l) for l in log if marker in l]
completed, queued, started = times("mpps COMPLETED"), times("series complete (MPPS): job queued"), times("job started")
assert len(completed) == len(queued) == len(started) == runs, (len(completed), len(queued), len(started))
q = [(b - a).total_seconds() * 1e3 for a, b in zip(completed, queued)]
s = [(b - a).total_seconds() * 1e3 for a, b in zip(completed, started)]
print("runs:", runs)
print("mpps COMPLETED -> job queued : " + " ".join("%.1f" % x for x in q) + " ms; median %.1f ms" % statistics.median(q))
print("mpps COMPLETED -> job started: " + " ".join("%.1f" % x for x in s) + " ms; median %.1f ms" % statistics.median(s))
PY
