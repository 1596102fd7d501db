#!/usr/bin/env bash
# Query/Retrieve benchmarks of issue 13, side by side with Orthanc (Debian, SQLite index) and
# DCMTK dcmqrscp, on loopback. See bench/README.md ("Q/R") for the data set and what each
# figure means.
#
#   bench/qr.sh find     [options]   C-FIND latency (qr_latency.py) on the qr_data.py data set
#   bench/qr.sh retrieve [options]   C-MOVE / C-GET of a 300 x 512x512 CT series, inst/s and
#                                    the ratio to storescu -> storescp in the same run
#   bench/qr.sh all      [options]   both
#
# Options (defaults are the issue's full size; validate at small size first):
#   --studies N        studies in the data set (10000); the node loads all of them
#   --per-study M      instances per study, in min(4, M) series (100)
#   --minutes T        loading time limit per peer, Orthanc and dcmqrscp (10)
#   --workers W        concurrent storescu while loading Orthanc (4); dcmqrscp gets one:
#                      its forked children race for file names and index records
#   --dcmqrscp-max S   studies dcmqrscp can hold (500: DCMTK's DB_UpperMaxStudies)
#   --systems LIST     of node,orthanc,dcmqrscp (all three)
#   --clients LIST     of raw,pynetdicom: the C-FIND clients (both)
#   --count Q          timed queries per kind (100), after 5 warm-up ones
#   --no-derived       leave Modalities in Study and Number of Study Related Series/Instances
#                      out of the STUDY-level return keys
#   --rounds R         find rounds, each over every system, order rotated (1)
#   --runs R           retrieve runs, order rotated per run (5)
#   --slices S         instances in the retrieve series (300)
#   --seed S           data set seed, 0..999 (1)
#   --node BIN         m3dnode binary (target/release/m3dnode); skipped with a message if it
#                      lacks `bench qr-load` (find) or Q/R support (retrieve)
#   --work DIR         keep loaded peers, node indexes and results there and reuse loaded
#                      ones on the next call with the same data-set options (default: a
#                      temporary folder, removed at exit)
# Environment: PYTHON (with pydicom, pynetdicom, numpy; default target/pyenv/bin/python, else
# a venv made under $SCRATCH), SCRATCH (/tmp/m3dnode-bench: the retrieve series),
# ORTHANC (/usr/sbin/Orthanc), ORTHANC_SYNC (false: SyncStorageArea while loading; the index
# and queries are the same either way), SHARED_BENCH (../shared/bench).
#
# Every DCMTK process and Orthanc run with TCP_NODELAY=1 (../shared/bench/README.md: without
# it DCMTK waits for delayed ACKs). Cleanup kills only the process groups this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=${1:-}
case $mode in find|retrieve|all) shift ;; *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;; esac
studies=10000 per_study=100 minutes=10 workers=4 dcmqr_max=500 systems=node,orthanc,dcmqrscp
clients=raw,pynetdicom count=100 rounds=1 runs=5 slices=300 seed=1 derived=()
node_bin=$root/target/release/m3dnode work=
while [ $# -gt 0 ]; do
    case $1 in
        --studies) studies=$2 ;; --per-study) per_study=$2 ;; --minutes) minutes=$2 ;;
        --workers) workers=$2 ;; --dcmqrscp-max) dcmqr_max=$2 ;; --systems) systems=$2 ;;
        --clients) clients=$2 ;; --count) count=$2 ;; --rounds) rounds=$2 ;; --runs) runs=$2 ;;
        --slices) slices=$2 ;; --seed) seed=$2 ;; --node) node_bin=$(realpath "$2") ;;
        --work) work=$2 ;;
        --no-derived) derived=(--no-derived); shift; continue ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
has() { [[ ",$systems," == *",$1,"* ]]; }
shared=${SHARED_BENCH:-$root/../shared/bench}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/m3dnode-bench}
orthanc_bin=${ORTHANC:-/usr/sbin/Orthanc}
mkdir -p "$scratch"
if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x "$root/target/pyenv/bin/python" ]; then py=$root/target/pyenv/bin/python
else
    py=$scratch/venv/bin/python
    [ -x "$py" ] || { python3 -m venv "$scratch/venv"; "$scratch/venv/bin/pip" install -q numpy pydicom pynetdicom; }
fi
keep_work=1
if [ -z "$work" ]; then work=$(mktemp -d); keep_work=0; fi
mkdir -p "$work" && work=$(realpath "$work")
groups=()
cleanup() {
    for g in "${groups[@]}"; do kill -- "-$g" 2>/dev/null || true; done
    for g in "${groups[@]}"; do
        for _ in $(seq 50); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
    done
    [ "$keep_work" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export TCP_NODELAY=1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# spawn LOG CMD...: runs CMD in its own process group (killed by cleanup); sets $spawned.
spawn() { local log=$1; shift; setsid "$@" >"$log" 2>&1 & spawned=$!; groups+=("$spawned"); }
wait_echo() { # AE PORT PID LOG
    for _ in $(seq 300); do
        echoscu -aec "$1" 127.0.0.1 "$2" >/dev/null 2>&1 && return 0
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    echo "$1 on port $2 did not answer C-ECHO; log tail:" >&2; tail -5 "$4" >&2; return 1
}
stop() { kill -- "-$1" 2>/dev/null || true; for _ in $(seq 50); do kill -0 -- "-$1" 2>/dev/null || break; sleep 0.1; done; }

# start_orthanc DIR PORT DEST_PORT: Orthanc as AE ORTHANC, QRSCU may find/move/get, DEST is a
# move destination. Sets $pid.
start_orthanc() {
    local dir=$1 port=$2 dport=$3 hport; hport=$(free_port); mkdir -p "$dir/db"
    cat >"$dir/orthanc.json" <<JSON
{"Name": "qrbench", "StorageDirectory": "$dir/db", "IndexDirectory": "$dir/db",
 "DicomAet": "ORTHANC", "DicomPort": $port, "HttpPort": $hport, "RemoteAccessAllowed": false,
 "AuthenticationEnabled": false, "DicomCheckCalledAet": false, "DicomAlwaysAllowEcho": true,
 "DicomAlwaysAllowStore": true, "SyncStorageArea": ${ORTHANC_SYNC:-false},
 "StorageCompression": false, "Plugins": [], "LuaScripts": [], "DicomScpTimeout": 120,
 "LimitFindResults": 0, "LimitFindInstances": 0, "StableAge": 3600, "SaveJobs": false,
 "DicomModalities": {
   "qrscu": {"AET": "QRSCU", "Host": "127.0.0.1", "Port": 1, "AllowEcho": true,
             "AllowFind": true, "AllowMove": true, "AllowGet": true, "AllowStore": true},
   "dest": {"AET": "DEST", "Host": "127.0.0.1", "Port": $dport}}}
JSON
    spawn "$dir/orthanc.log" "$orthanc_bin" "$dir/orthanc.json"; pid=$spawned
    wait_echo ORTHANC "$port" "$pid" "$dir/orthanc.log"
}

# start_dcmqrscp DIR PORT DEST_PORT: AE DCMQRSCP, any peer, DEST a move destination.
start_dcmqrscp() {
    local dir=$1 port=$2 dport=$3; mkdir -p "$dir/db"
    cat >"$dir/dcmqrscp.cfg" <<CFG
NetworkTCPPort  = $port
MaxPDUSize      = 65536
MaxAssociations = 16
HostTable BEGIN
dest = (DEST, 127.0.0.1, $dport)
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
DCMQRSCP  $dir/db  RW  ($dcmqr_max, 1024mb)  ANY
AETable END
CFG
    spawn "$dir/dcmqrscp.log" dcmqrscp -c "$dir/dcmqrscp.cfg" "$port"; pid=$spawned
    wait_echo DCMQRSCP "$port" "$pid" "$dir/dcmqrscp.log"
}

# start_node STORAGE PORT DEST_PORT LOG: `m3dnode serve`, AE M3DNODE; QRSCU may query and
# retrieve, DEST is a known move destination, no result limit.
start_node() {
    local storage=$1 port=$2 dport=$3 log=$4 conf; conf=$storage.toml
    cat >"$conf" <<TOML
[node]
ae_title = "M3DNODE"
listen = "127.0.0.1:$port"
storage = "$storage"
min_free_mb = 1
[query]
max_results = 0
[[peers]]
ae_title = "QRSCU"
address = "127.0.0.1:1"
may = ["echo", "store", "find", "move", "get"]
[[peers]]
ae_title = "DEST"
address = "127.0.0.1:$dport"
TOML
    RUST_LOG=warn spawn "$log" "$node_bin" serve -c "$conf"; pid=$spawned
    wait_echo M3DNODE "$port" "$pid" "$log"
}

node_can_load() {
    [ -x "$node_bin" ] || { echo "node: skipped, no binary at $node_bin (cargo build --release, or --node BIN)"; return 1; }
    "$node_bin" bench qr-load --help >/dev/null 2>&1 || { echo "node: skipped, $node_bin has no 'bench qr-load' (issue 13 not merged in this build)"; return 1; }
}

# ---- C-FIND latency ---------------------------------------------------------------------

run_find() {
    local res=$work/find-results params
    mkdir -p "$res"
    params="studies=$studies per_study=$per_study seed=$seed minutes=$minutes workers=$workers"
    local -a names=() ports=() aets=() sizes=()
    local dport; dport=$(free_port)  # move destination named in configs; not running here
    for peer in orthanc dcmqrscp; do
        has $peer || continue
        local dir=$work/$peer port cap=$studies w=$workers; port=$(free_port)
        if [ $peer = dcmqrscp ]; then w=1; [ "$dcmqr_max" -lt "$cap" ] && cap=$dcmqr_max; fi
        if [ -f "$dir/loaded.json" ] && [ "$(cat "$dir/params")" = "$params" ]; then
            echo "$peer: reusing the load in $dir"
            rm -f "$dir/db/"*.lock 2>/dev/null || true
        else
            rm -rf "$dir"; mkdir -p "$dir"
        fi
        if [ $peer = orthanc ]; then start_orthanc "$dir" "$port" "$dport"; aet=ORTHANC
        else start_dcmqrscp "$dir" "$port" "$dport"; aet=DCMQRSCP; fi
        if [ ! -f "$dir/loaded.json" ]; then
            echo "$peer: loading up to $cap studies x $per_study for at most $minutes min ($w storescu)"
            "$py" bench/qr_load.py --port "$port" --aec $aet --studies "$cap" --per-study "$per_study" \
                --seed "$seed" --minutes "$minutes" --workers "$w" --spool "$work/spool-$peer" \
                --out "$dir/loaded.json.tmp" || { echo "$peer: loading failed" >&2; exit 1; }
            mv "$dir/loaded.json.tmp" "$dir/loaded.json"; echo "$params" >"$dir/params"
        fi
        local k held; k=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["studies"])' "$dir/loaded.json")
        held=$("$py" bench/qr_latency.py --count-studies --port "$port" --aec $aet)
        echo "$peer: holds $held studies (a universal STUDY query), loaded $k: $(cat "$dir/loaded.json")"
        [ "$held" = "$k" ] || { echo "$peer: holds $held studies, expected $k" >&2; exit 1; }
        names+=("$peer@$k"); ports+=("$port"); aets+=($aet); sizes+=("$k")
    done
    if has node && node_can_load; then
        local -a nsizes=("$studies")
        for k in "${sizes[@]}"; do [[ " ${nsizes[*]} " == *" $k "* ]] || nsizes+=("$k"); done
        for k in "${nsizes[@]}"; do
            local storage=$work/node-$k port; port=$(free_port)
            if [ ! -f "$storage.loaded" ] || [ "$(cat "$storage.loaded")" != "$params" ]; then
                rm -rf "$storage"; mkdir -p "$storage"
                local seedarg=(); [ "$seed" = 1 ] || seedarg=(--seed "$seed")
                local t0 t1; t0=$(date +%s.%N)
                "$node_bin" bench qr-load --storage "$storage" --studies "$k" --per-study "$per_study" "${seedarg[@]}"
                t1=$(date +%s.%N)
                echo "node: qr-load of $k studies x $per_study took $(python3 -c "print(f'{$t1-$t0:.1f}')") s, index $(du -sh "$storage" | cut -f1)"
                echo "$params" >"$storage.loaded"
            fi
            start_node "$storage" "$port" "$dport" "$storage.log"
            local held; held=$("$py" bench/qr_latency.py --count-studies --port "$port" --aec M3DNODE)
            [ "$held" = "$k" ] || { echo "node: holds $held studies, expected $k" >&2; exit 1; }
            names+=("node@$k"); ports+=("$port"); aets+=(M3DNODE); sizes+=("$k")
        done
    fi
    [ ${#names[@]} -gt 0 ] || { echo "no system to measure" >&2; exit 1; }
    local n=${#names[@]} fail=0
    for r in $(seq "$rounds"); do
        local files=()
        for i in $(seq 0 $((n - 1))); do
            local j=$(((i + r - 1) % n))
            for c in ${clients//,/ }; do
                local out=$res/round$r-${names[$j]}-$c.json
                "$py" bench/qr_latency.py --port "${ports[$j]}" --aec "${aets[$j]}" --name "${names[$j]}" \
                    --size "${sizes[$j]}" --per-study "$per_study" --seed "$seed" \
                    --count "$count" --client "$c" "${derived[@]}" --json-out "$out" || fail=1
                files+=("$out")
            done
        done
        echo; echo "## C-FIND round $r of $rounds ($(date -u +%FT%TZ))"
        "$py" bench/qr_latency.py --report "${files[@]}" || fail=1
    done
    [ "$fail" = 0 ] || { echo "C-FIND: some answers differ from the data set (PROBLEM lines above)" >&2; exit 1; }
    # Idle, but they hold memory and wake now and then: stop them before `retrieve` is timed.
    for g in "${groups[@]}"; do stop "$g"; done
    groups=()
}

# ---- C-MOVE / C-GET throughput ----------------------------------------------------------

run_retrieve() {
    local series=$scratch/series/ct$slices
    if [ ! -f "$series/.complete" ]; then
        rm -rf "$series"
        "$py" "$shared/make_series.py" --modality CT --rows 512 --cols 512 --slices "$slices" "$series"
        touch "$series/.complete"
    fi
    mapfile -t files < <(find "$series" -name '*.dcm' | sort)
    local n=${#files[@]} study uid_series
    read -r study uid_series < <("$py" -c 'import pydicom,sys; d=pydicom.dcmread(sys.argv[1], stop_before_pixels=True); print(d.StudyInstanceUID, d.SeriesInstanceUID)' "${files[0]}")
    local dir=$work/retrieve; rm -rf "$dir"; mkdir -p "$dir/dest"
    local dport; dport=$(free_port)
    spawn "$dir/storescp.log" storescp -aet DEST -od "$dir/dest" "$dport"
    wait_echo DEST "$dport" "$spawned" "$dir/storescp.log"
    cat "${files[@]}" >/dev/null
    local -a methods=(base) mport=() ; declare -A aet_of port_of
    for sys in node orthanc dcmqrscp; do
        has $sys || continue
        local port; port=$(free_port)
        case $sys in
            node) [ -x "$node_bin" ] || { echo "node: skipped, no binary at $node_bin"; continue; }
                  mkdir -p "$dir/node"
                  start_node "$dir/node" "$port" "$dport" "$dir/node.log" || { echo "node: skipped, it did not start with the Q/R configuration"; continue; }
                  aet_of[$sys]=M3DNODE ;;
            orthanc) start_orthanc "$dir/orthanc" "$port" "$dport"; aet_of[$sys]=ORTHANC ;;
            dcmqrscp) start_dcmqrscp "$dir/dcmqrscp" "$port" "$dport"; aet_of[$sys]=DCMQRSCP ;;
        esac
        port_of[$sys]=$port
        storescu -aet STORESCU -aec "${aet_of[$sys]}" 127.0.0.1 "$port" "${files[@]}" >"$dir/$sys.store.log" 2>&1 \
            || { echo "$sys: storing the series failed: $(tail -2 "$dir/$sys.store.log")"; continue; }
        # One untimed move and get: a check that the system supports them, and a warm cache.
        for m in move get; do
            if retrieve_once "$sys" "$m" >/dev/null 2>"$dir/$sys.$m.check"; then methods+=("$sys-$m")
            else echo "$sys: C-${m^^} skipped: $(tail -3 "$dir/$sys.$m.check" | tr '\n' ' ')"; fi
        done
    done
    local log=$dir/runs.txt; : >"$log"
    local m=${#methods[@]}
    echo "retrieve: $n instances, $runs runs, order rotated per run: ${methods[*]}"
    for r in $(seq "$runs"); do
        for i in $(seq 0 $((m - 1))); do
            local meth=${methods[$(((i + r - 1) % m))]} rate
            if rate=$(retrieve_once "${meth%-*}" "${meth##*-}"); then :; else rate=FAIL; fi
            echo "$r $meth $rate" >>"$log"; echo "  run $r $meth: $rate inst/s"
        done
    done
    "$py" - "$log" "$n" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r, meth, rate = line.split()
    runs.setdefault(int(r), {})[meth] = None if rate == "FAIL" else float(rate)
methods = list(dict.fromkeys(m for rr in runs.values() for m in rr))
print(f"\n## C-MOVE / C-GET, {sys.argv[2]} x 512x512 CT, {len(runs)} runs (medians [min-max]; "
      "ratio = median of per-run ratios to storescu -> storescp)\n")
print("| method | inst/s | ratio to base |\n|---|---|---|")
for m in methods:
    v = [rr[m] for rr in runs.values() if rr.get(m)]
    q = [rr[m] / rr["base"] for rr in runs.values() if rr.get(m) and rr.get("base")]
    fails = sum(1 for rr in runs.values() if m in rr and rr[m] is None)
    if not v:
        print(f"| {m} | FAIL | |"); continue
    print(f"| {m} | {statistics.median(v):.0f} [{min(v):.0f}-{max(v):.0f}] | "
          f"{statistics.median(q):.3f}{f' ({fails} failed runs)' if fails else ''} |")
PY
}

# retrieve_once SYSTEM METHOD: one timed transfer of the series; prints inst/s, fails unless
# exactly $n files arrived. base = storescu -> storescp DEST.
retrieve_once() {
    local sys=$1 meth=$2 out t0 t1 rc=0
    if [ "$meth" = get ]; then out=$dir/get; else out=$dir/dest; fi
    rm -rf "$out"; mkdir -p "$out"
    local keys=(-k QueryRetrieveLevel=SERIES -k "StudyInstanceUID=$study" -k "SeriesInstanceUID=$uid_series")
    t0=$(date +%s.%N)
    case $sys-$meth in
        base-base|base-*) storescu -aet STORESCU -aec DEST 127.0.0.1 "$dport" "${files[@]}" >"$dir/last.log" 2>&1 || rc=$? ;;
        *-move) movescu -S -aet QRSCU -aec "${aet_of[$sys]}" -aem DEST "${keys[@]}" 127.0.0.1 "${port_of[$sys]}" >"$dir/last.log" 2>&1 || rc=$? ;;
        *-get) getscu -S -aet QRSCU -aec "${aet_of[$sys]}" -od "$out" "${keys[@]}" 127.0.0.1 "${port_of[$sys]}" >"$dir/last.log" 2>&1 || rc=$? ;;
    esac
    t1=$(date +%s.%N)
    local got; got=$(find "$out" -type f | wc -l)
    if [ "$rc" != 0 ] || [ "$got" != "$n" ]; then
        echo "$sys-$meth: exit $rc, $got of $n files; $(tail -3 "$dir/last.log" | tr '\n' ' ')" >&2; return 1
    fi
    python3 -c "print(f'{$n/($t1-$t0):.1f}')"
}

echo "# bench/qr.sh $mode: $(date -u +%FT%TZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); systems $systems"
echo "# Orthanc $("$orthanc_bin" --version 2>/dev/null | head -1 | awk '{print $2}'), $(dcmqrscp --version 2>&1 | head -1), $("$py" -c 'import pynetdicom,pydicom; print("pynetdicom", pynetdicom.__version__, "pydicom", pydicom.__version__)')"
# One compound command, read whole before it runs: editing this file during a run cannot
# change what the running shell reads next.
{
    case $mode in
        find) run_find ;;
        retrieve) run_retrieve ;;
        all) run_find; run_retrieve ;;
    esac
    exit
}
