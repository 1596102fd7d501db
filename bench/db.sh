#!/usr/bin/env bash
# The index database's figures (issue 13): ingest with the query index against the release
# before it, the index size per instance, and the migration of a large old storage.
#
#   bench/db.sh ingest OLD_BINARY [RUNS]          A/B C-STORE ingest, old vs this tree
#   bench/db.sh cpu OLD_BINARY [RUNS]             A/B CPU seconds of the node per series
#                                                 received (SYNC=true for durable)
#   bench/db.sh migration OLD_BINARY [SERIES] [PER_SERIES]
#                                                 old-schema storage of SERIES x PER_SERIES
#                                                 64x64 instances (default 1000 x 100), then
#                                                 the migration by `serve`, timed; a second
#                                                 copy is killed (-9) mid-migration and restarted
#
# OLD_BINARY: `m3dnode` built from commit 3255488 (the last release without the query index):
#   git worktree add /tmp/oldsrc 3255488
#   (cd /tmp/oldsrc && CARGO_TARGET_DIR=/tmp/oldbuild cargo build --release)
#   git worktree remove /tmp/oldsrc
#
# ingest: a 300-instance 512x512 16-bit MR series from ../shared/bench/make_series.py, sent by
# DCMTK storescu (one association) to both binaries in turn, order rotated per run, by the
# shared harness (../shared/bench/ingest.sh), durable and with `sync = false`. The harness
# empties the output dirs between runs, index included (the node keeps writing its unlinked
# index), so every run is a first arrival of the series' files for both binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: bench/db.sh ingest|cpu|migration OLD_BINARY ...}
old=${2:?usage: bench/db.sh ingest|migration OLD_BINARY ...}
shared=${SHARED_BENCH:-../shared/bench}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/m3dnode-bench}
mkdir -p "$scratch/tmp"
py=${PYTHON:-$PWD/target/pyenv/bin/python}
# NEW_BINARY: an already built binary of this tree (skips the build).
if [ -n "${NEW_BINARY:-}" ]; then
    new=$NEW_BINARY
else
    cargo build --release -q
    new=$PWD/target/release/m3dnode
fi

case $what in
ingest)
    runs=${3:-21}
    series=$scratch/series/mr300
    [ -d "$series" ] || "$py" "$shared/make_series.py" --modality MR --rows 512 --cols 512 --slices 300 "$series"
    scp="serve --listen 127.0.0.1:{port} --storage {outdir} --ae-title {aet}"
    env_d="env M3DNODE__NODE__MIN_FREE_MB=1 RUST_LOG=warn"
    env_n="env M3DNODE__NODE__SYNC=false M3DNODE__NODE__MIN_FREE_MB=1 RUST_LOG=warn"
    echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    TMPDIR=$scratch/tmp PYTHON=$py "$shared/ingest.sh" -d "$series" -e -1 -n "$runs" \
        "$env_n $old $scp" "$env_n $new $scp" "$env_d $old $scp" "$env_d $new $scp"
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    ;;
cpu)
    # CPU seconds the node spends per series received (user + system, from /proc), old and
    # new alternating: less sensitive than throughput to a machine shared with other work.
    runs=${3:-15}
    series=$scratch/series/mr300
    [ -d "$series" ] || "$py" "$shared/make_series.py" --modality MR --rows 512 --cols 512 --slices 300 "$series"
    root=$scratch/cpu
    rm -rf "$root"
    mkdir -p "$root"
    declare -A pid port
    for b in old new; do
        bin=$old; [ $b = new ] && bin=$new
        M3DNODE__NODE__SYNC=${SYNC:-false} M3DNODE__NODE__MIN_FREE_MB=1 RUST_LOG=warn \
            "$bin" serve --listen 127.0.0.1:0 --storage "$root/$b" > "$root/$b.out" 2> "$root/$b.log" &
        pid[$b]=$!
        until grep -qs listening "$root/$b.out"; do sleep 0.05; done
        port[$b]=$(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' "$root/$b.out")
    done
    # User and system ticks. System time is mostly ext4 creating files (inode allocation in
    # a directory whose files the runs keep deleting, `recently_deleted` in perf), which
    # depends on the directory's history, not on the node: user time is the node's own work.
    ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
    hz=$(getconf CLK_TCK)
    echo "# sync=${SYNC:-false}, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    for r in $(seq "$runs"); do
        order="old new"; [ $((r % 2)) = 0 ] && order="new old"
        for b in $order; do
            rm -rf "${root:?}/$b"/1.* "${root:?}/$b"/2.*
            read -r u0 s0 < <(ticks "${pid[$b]}")
            TCP_NODELAY=1 storescu -aec M3DNODE +sd "127.0.0.1" "${port[$b]}" "$series" >/dev/null
            read -r u1 s1 < <(ticks "${pid[$b]}")
            echo "run $r $b $(echo "scale=3; ($u1 - $u0) / $hz" | bc) $(echo "scale=3; ($s1 - $s0) / $hz" | bc)"
        done
    done | tee "$root/runs"
    kill -TERM "${pid[old]}" "${pid[new]}"; wait || true
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    "$py" - "$root/runs" <<'PY'
import sys, statistics, collections
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    _, r, b, user, system = line.split()
    runs[r][b] = (float(user), float(system))
for i, what in enumerate(["user", "system"]):
    old = [v["old"][i] for v in runs.values()]
    new = [v["new"][i] for v in runs.values()]
    ratio = [v["new"][i] / v["old"][i] for v in runs.values() if v["old"][i] > 0]
    print(f"# {what} CPU s per 300 instances: old median {statistics.median(old):.3f}, new median {statistics.median(new):.3f}; "
          f"sums old {sum(old):.2f} new {sum(new):.2f} ({sum(new) / sum(old):.3f}); "
          f"new/old per run: median {statistics.median(ratio):.3f} [{min(ratio):.3f}-{max(ratio):.3f}]")
PY
    ;;
migration)
    nseries=${3:-1000}
    per=${4:-100}
    root=$scratch/migration
    rm -rf "$root"
    mkdir -p "$root"
    # The old release makes its (empty) index; the storage is then filled in its layout with
    # the rows that release writes, straight into its tables.
    "$old" serve --listen 127.0.0.1:0 --storage "$root/v0" > "$root/out" 2> "$root/old.log" &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$root/out" && break; sleep 0.1; done
    kill -TERM $pid; wait $pid || true
    "$py" - "$root/v0" "$nseries" "$per" "$PWD/testdata/files/pydicom/MR_small.dcm" <<'PY'
import sys, sqlite3, time, pathlib, pydicom
root, nseries, per, template = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ds = pydicom.dcmread(template)
# Fixed-width UIDs, patched per file as bytes: 100,000 pydicom writes would take minutes.
def uid(kind, a, b): return f"1.2.826.0.1.3680043.10.1338.{kind}.1{a:06d}.1{b:06d}"
ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid(1, 0, 0), uid(2, 0, 0), uid(3, 0, 0)
ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
ds.SpecificCharacterSet = "ISO_IR 100"
ds.PatientName = "Bench^Patient^000000"
ds.PatientID = "PID000000"
ds.StudyDate, ds.AccessionNumber, ds.StudyDescription = "20240101", "ACC000000", "bench study"
ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "bench series", 1, 1
tmp = root / "template.dcm"
ds.save_as(tmp, enforce_file_format=True)
raw = tmp.read_bytes()
tmp.unlink()
db = sqlite3.connect(root / "index.sqlite")
t0 = time.time()
rows = []
for s in range(nseries):
    study, series = uid(1, s // 2, 0), uid(2, s, 0)   # two series per study
    d = root / study / series
    d.mkdir(parents=True, exist_ok=True)
    base = (raw.replace(uid(1, 0, 0).encode(), study.encode())
               .replace(uid(2, 0, 0).encode(), series.encode())
               .replace(b"PID000000", f"PID{s // 4:06d}".encode())     # two studies per patient
               .replace(b"Bench^Patient^000000", f"Bench^Patient^{s // 4:06d}".encode())
               .replace(b"ACC000000", f"ACC{s // 2:06d}".encode()))
    for i in range(per):
        sop = uid(3, s, i)
        (d / f"{sop}.dcm").write_bytes(base.replace(uid(3, 0, 0).encode(), sop.encode()))
        rows.append((sop, ds.SOPClassUID, study, series, "MR", i + 1, ds.file_meta.TransferSyntaxUID,
                     f"{study}/{series}/{sop}.dcm", len(base), "BENCH", time.time()))
    if len(rows) >= 20000:
        db.executemany("INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows); db.commit(); rows = []
db.executemany("INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
db.commit()
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
print(f"# wrote {nseries * per} instances in {time.time() - t0:.1f} s")
PY
    sync
    size() { stat -c %s "$1/index.sqlite"; }
    # Starts the new node on storage $1 (log $2), waits for its listening line (the
    # migration runs before it), stops it; sets start and end.
    serve_timed() {
        rm -f "$root/out"
        start=$(date +%s.%N)
        "$new" serve --listen 127.0.0.1:0 --storage "$1" > "$root/out" 2> "$2" &
        pid=$!
        until grep -qs listening "$root/out"; do sleep 0.05; kill -0 $pid; done
        end=$(date +%s.%N)
        kill -TERM $pid; wait $pid || true
    }
    n=$((nseries * per))
    echo "# old-schema index: $(size "$root/v0") bytes, $(( $(size "$root/v0") / n )) bytes/instance"
    cp -a "$root/v0" "$root/killed"
    sync   # dirty pages cannot be dropped from the cache
    # Cold start: the stored files out of the page cache (as after a reboot), so that the
    # back-fill reads them from the disk.
    "$py" - "$root/v0" "$root/killed" <<'PY'
import os, sys
for top in sys.argv[1:]:
    for d, _, files in os.walk(top):
        for f in files:
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
PY
    echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    # The migration, timed from start to the listening line (the migration runs before it).
    serve_timed "$root/v0" "$root/new.log"
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    grep -E "back-filling|migrated" "$root/new.log" | sed 's/^/#   /' || true
    printf "# migration of %d instances: %.1f s to listening\n" "$n" "$(echo "$end - $start" | bc)"
    echo "# new-schema index after a clean stop: $(size "$root/v0") bytes, $(( $(size "$root/v0") / n )) bytes/instance"
    sqlite3 "$root/v0/index.sqlite" "SELECT 'patients', COUNT(*) FROM patients UNION ALL SELECT 'studies', COUNT(*) FROM studies UNION ALL SELECT 'series', COUNT(*) FROM series UNION ALL SELECT 'user_version', user_version FROM pragma_user_version" | sed 's/^/#   /'
    # Killed mid-migration, then restarted: it finishes where it stopped.
    "$new" serve --listen 127.0.0.1:0 --storage "$root/killed" > "$root/out2" 2> "$root/killed.log" &
    pid=$!
    until grep -q "migrating the index to schema 2" "$root/killed.log" 2>/dev/null; do sleep 0.05; kill -0 $pid; done
    sleep 1
    kill -9 $pid; wait $pid || true
    echo "# killed (-9) 1 s into the back-fill: $(sqlite3 "$root/killed/index.sqlite" "SELECT COUNT(*) FROM instances WHERE rowid <= (SELECT last_rowid FROM backfill)") instances done, user_version $(sqlite3 "$root/killed/index.sqlite" "PRAGMA user_version")"
    serve_timed "$root/killed" "$root/killed2.log"
    grep -E "migrating|migrated" "$root/killed2.log" | sed 's/^/#   /' || true
    printf "# restart finished in %.1f s\n" "$(echo "$end - $start" | bc)"
    sqlite3 "$root/killed/index.sqlite" "SELECT 'patients', COUNT(*) FROM patients UNION ALL SELECT 'studies', COUNT(*) FROM studies UNION ALL SELECT 'series', COUNT(*) FROM series UNION ALL SELECT 'user_version', user_version FROM pragma_user_version" | sed 's/^/#   /'
    ;;
*) echo "unknown: $what" >&2; exit 2 ;;
esac
