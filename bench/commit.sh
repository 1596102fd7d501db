#!/usr/bin/env bash
# Storage Commitment latency for 300 stored instances (issue 19): N-ACTION-RQ sent to
# N-EVENT-REPORT-RQ received, on the requester's association and on a new association,
# median and max of RUNS requests each, with the node durable (sync = true) and not.
#
#   bench/commit.sh [RUNS] [N]     (defaults 5 and 300)
#
# Needs pydicom, pynetdicom and numpy in $PY (default: the test venv, target/pyenv). Builds
# and starts the release node on fresh storage per sync setting; bench/commit.py is the
# scanner (see its header for how the new-association case is made).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
n=${2:-300}
py=${PY:-$PWD/target/pyenv/bin/python}
cargo build --release -q
node=$PWD/target/release/m3dnode
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pid=
work=$(mktemp -d "${TMPDIR:-/tmp}/m3dnode-commit.XXXXXX")
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
for sync in true false; do
    port=$(free_port)
    scanner=$(free_port)
    dir=$work/sync-$sync
    mkdir -p "$dir"
    cat >"$dir/m3dnode.toml" <<TOML
[node]
listen = "127.0.0.1:$port"
storage = "$dir/var"
sync = $sync
min_free_mb = 1
[http]
listen = ""
[[peers]]
ae_title = "SCANNER"
address = "127.0.0.1:$scanner"
TOML
    RUST_LOG=warn,m3dnode::net=debug "$node" serve --config "$dir/m3dnode.toml" >"$dir/stdout" 2>"$dir/node.log" &
    pid=$!
    for _ in $(seq 100); do grep -q "listening on" "$dir/stdout" 2>/dev/null && break; sleep 0.1; done
    result=$("$py" bench/commit.py --port "$port" --server-port "$scanner" --n "$n" --runs "$runs" --node-log "$dir/node.log")
    echo "sync=$sync n=$n $result"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
done
