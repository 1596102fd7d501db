#!/usr/bin/env bash
# The shared PostgreSQL index (issue 17): its cost at ingest and what workers add.
#
#   bench/cluster.sh [RUNS] [SERIES]      (defaults 3 runs, 12 series)
#   PARTS="2 3" bench/cluster.sh          only some parts (default "1 2 3")
#
# 1. Ingest, PostgreSQL index as a ratio to SQLite on one machine: a synthetic 512x512 MR
#    series of 200 slices (105 MB, ../shared/bench/make_series.py) sent by DCMTK storescu
#    (TCP_NODELAY=1) to `m3dnode serve --no-workers` on fresh storage and a fresh database per
#    run, with one association and with four (the files split in four, one storescu each).
#    Both durable: node.sync = true, and the PostgreSQL server with fsync and
#    synchronous_commit on (PG_CLUSTER_DURABLE=1), as production runs.
# 2. Jobs per minute on the `iso` pipeline with 1 and 2 `worker` processes (jobs.workers = 1
#    each): SERIES series of 256x256x100 are received with no worker running, then the workers
#    start; timed from the first "job started" to the last "job done" in their logs.
# 3. Claim latency: from a receiver's "job queued" line to a worker's "job started" line for
#    the same job, with one worker idle and waiting (JSON logs, the lines' timestamps).
#
# Needs DCMTK, PostgreSQL 15 and the test venv ($PY, default target/pyenv: numpy, pydicom).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
nseries=${2:-12}
py=${PY:-$PWD/target/pyenv/bin/python}
shared=${SHARED_BENCH:-../shared/bench}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/m3dnode-bench}
mkdir -p "$scratch"
command -v storescu >/dev/null || { echo "install dcmtk first (scripts/test does)" >&2; exit 2; }

cargo build --release -q
node=$PWD/target/release/m3dnode
work=$(mktemp -d "$scratch/cluster.XXXXXX")
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    scripts/pg-cluster stop "$work/pg" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

url=$(PG_CLUSTER_DURABLE=1 scripts/pg-cluster start "$work/pg" | sed -n 's/^M3DNODE_TEST_PG_URL=//p')
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# fresh_db NAME: a new database on the cluster, its url.
fresh_db() { scripts/pg-cluster createdb "$url" "$1"; }

# The rules' destination: a DCMTK storescp (the results are delivered, not measured).
dest_port=$(free_port)
mkdir -p "$work/dest"
storescp -aet DEST -od "$work/dest" "$dest_port" >/dev/null 2>&1 &
pids+=($!)

big=$scratch/series/mr200
[ -d "$big" ] || "$py" "$shared/make_series.py" --modality MR --rows 512 --cols 512 --slices 200 "$big" >/dev/null

# config DIR PORT URL INSTANCE -> DIR/m3dnode.toml
config() {
    local dir=$1 port=$2 index=$3 instance=$4
    mkdir -p "$dir"
    cat >"$dir/m3dnode.toml" <<TOML
[node]
listen = "127.0.0.1:$port"
storage = "$work/storage-$(basename "$(dirname "$dir")")"
min_free_mb = 1
[http]
listen = ""
[log]
format = "json"
[index]
url = "$index"
instance = "$instance"
lease_seconds = 30
[series]
quiet_seconds = 1
[jobs]
workers = 1
[[peers]]
ae_title = "DEST"
address = "127.0.0.1:$dest_port"
[[rules]]
name = "mr"
modality = "MR"
preset = "otsu"
send_to = ["DEST"]
TOML
}

wait_line() { for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timed out waiting for '$2' in $1" >&2; exit 1; }

# send DIR CONCURRENCY PORT: prints seconds
send() {
    local dir=$1 c=$2 port=$3
    local files=("$dir"/*.dcm)
    local n=${#files[@]} per=$(( (${#files[@]} + c - 1) / c ))
    local t0 t1
    t0=$(date +%s.%N)
    local spids=()
    for ((i = 0; i < c; i++)); do
        TCP_NODELAY=1 storescu -aec M3DNODE 127.0.0.1 "$port" "${files[@]:i*per:per}" &
        spids+=($!)
    done
    for p in "${spids[@]}"; do wait "$p"; done
    t1=$(date +%s.%N)
    echo "$t0 $t1 $n" | awk '{printf "%.3f", $2 - $1}'
}

parts=${PARTS:-1 2 3}
part() { [[ " $parts " == *" $1 "* ]]; }

part 1 && echo "## 1. ingest: 200 x 512x512 MR (105 MB), PostgreSQL index vs SQLite, durable"
part 1 && for c in 1 4; do
    for backend in sqlite pg; do
        times=()
        for r in $(seq "$runs"); do
            d=$work/ingest-$backend-$c-$r/cfg
            port=$(free_port)
            index=""
            [ "$backend" = pg ] && index=$(fresh_db "ingest_${c}_$r")
            config "$d" "$port" "$index" "rx"
            RUST_LOG=warn "$node" serve --no-workers --config "$d/m3dnode.toml" >"$d/stdout" 2>"$d/log" &
            pids+=($!)
            wait_line "$d/stdout" "listening on"
            times+=("$(send "$big" "$c" "$port")")
            stored=$(find "$work/storage-ingest-$backend-$c-$r" -name '*.dcm' | wc -l)
            [ "$stored" -eq 200 ] || { echo "only $stored of 200 stored" >&2; exit 1; }
            kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
            rm -rf "$work/storage-ingest-$backend-$c-$r"
        done
        med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
        echo "associations=$c backend=$backend seconds=[${times[*]}] median=$med instances/s=$(awk -v m="$med" 'BEGIN{printf "%.1f", 200/m}')"
        eval "med_${backend}_$c=$med"
    done
    eval "echo \"associations=$c pg/sqlite throughput ratio: \$(awk -v s=\$med_sqlite_$c -v p=\$med_pg_$c 'BEGIN{printf \"%.3f\", s/p}')\""
done

for s in $(seq "$nseries"); do
    d=$scratch/series/mr256-$s
    [ -d "$d" ] || "$py" "$shared/make_series.py" --modality MR --rows 256 --cols 256 --slices 100 --seed "$((s + 100))" "$d" >/dev/null
done
part 2 && echo "## 2. jobs per minute, iso pipeline, $nseries series of 256x256x100"
part 2 && for k in 1 2; do
    index=$(fresh_db "jobs_$k")
    base=$work/jobs-$k
    port=$(free_port)
    config "$base/rx" "$port" "$index" "rx"
    RUST_LOG=info "$node" serve --no-workers --config "$base/rx/m3dnode.toml" >"$base/rx/stdout" 2>"$base/rx/log" &
    pids+=($!)
    wait_line "$base/rx/stdout" "listening on"
    for s in $(seq "$nseries"); do send "$scratch/series/mr256-$s" 1 "$port" >/dev/null; done
    for _ in $(seq 300); do [ "$(grep -c 'job queued' "$base/rx/log")" -ge "$nseries" ] && break; sleep 0.2; done
    for w in $(seq "$k"); do
        config "$base/w$w" "$(free_port)" "$index" "w$w"
        RUST_LOG=info "$node" worker --config "$base/w$w/m3dnode.toml" >"$base/w$w/stdout" 2>"$base/w$w/log" &
        pids+=($!)
    done
    for _ in $(seq 3000); do
        done_n=$(cat "$base"/w*/log | grep -c '"job done"' || true)
        [ "$done_n" -ge "$nseries" ] && break
        sleep 0.2
    done
    "$py" - "$nseries" "$k" "$base"/w*/log <<'PY'
import json, sys, datetime
n, k, logs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def ts(s): return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
starts, ends = [], []
for path in logs:
    for line in open(path):
        try: e = json.loads(line)
        except ValueError: continue
        m = e.get("fields", {}).get("message")
        if m == "job started": starts.append(ts(e["timestamp"]))
        if m == "job done": ends.append(ts(e["timestamp"]))
span = max(ends) - min(starts)
print(f"workers={k} jobs={len(ends)} of {n} seconds={span:.1f} jobs/min={60 * len(ends) / span:.1f}")
PY
done

part 3 || exit 0
echo "## 3. claim latency: receiver's 'job queued' to the idle worker's 'job started'"
index=$(fresh_db claim)
base=$work/claim
port=$(free_port)
config "$base/rx" "$port" "$index" "rx"
config "$base/w1" "$(free_port)" "$index" "w1"
RUST_LOG=info "$node" serve --no-workers --config "$base/rx/m3dnode.toml" >"$base/rx/stdout" 2>"$base/rx/log" &
pids+=($!)
RUST_LOG=info "$node" worker --config "$base/w1/m3dnode.toml" >"$base/w1/stdout" 2>"$base/w1/log" &
pids+=($!)
wait_line "$base/rx/stdout" "listening on"
wait_line "$base/w1/stdout" "worker running"
for s in $(seq "$nseries"); do
    send "$scratch/series/mr256-$s" 1 "$port" >/dev/null
    # One job at a time, so that the worker is idle when the next is queued.
    for _ in $(seq 600); do [ "$(grep -c '"job done"' "$base/w1/log" || true)" -ge "$s" ] && break; sleep 0.1; done
done
"$py" - "$base/rx/log" "$base/w1/log" <<'PY'
import json, sys, datetime, statistics
def ts(s): return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
def job_id(e):
    for s in [e.get("span", {})] + e.get("spans", []):
        if "job_id" in s: return str(s["job_id"])
    return str(e.get("fields", {}).get("job_id"))
queued, started = {}, {}
for path, msg, into in ((sys.argv[1], "series complete: job queued", queued), (sys.argv[2], "job started", started)):
    for line in open(path):
        try: e = json.loads(line)
        except ValueError: continue
        if e.get("fields", {}).get("message") == msg:
            into.setdefault(job_id(e), ts(e["timestamp"]))
lat = sorted(1000 * (started[j] - queued[j]) for j in queued if j in started)
print(f"jobs={len(lat)} claim latency ms: median={statistics.median(lat):.0f} min={lat[0]:.0f} max={lat[-1]:.0f}")
PY
