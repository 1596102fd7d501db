#!/usr/bin/env bash
# C-MOVE and C-GET served by `m3dnode serve`, as instances/s and as a ratio to DCMTK
# storescu -> storescp in the same run, on loopback (issue 13: goal >= 0.9x).
#
#   bench/qr_retrieve.sh [RUNS]     (default 5 runs; needs ../shared/bench beside the repo)
#   PROFILE=release|debug           which build of the node (default release)
#
# Series: a synthetic 512x512 16-bit MR series of 300 slices (158 MB) from the shared
# generator, loaded into the node once (sync = false; loading is not what is measured).
# Per run, in turn:
#   baseline   storescu (TCP_NODELAY=1) of the 300 files -> storescp
#   c-move     movescu -> node, which sends the 300 instances to the same storescp
#   c-get      getscu -> node, which sends them back on getscu's own association
# storescp and getscu write each instance to a file and never fsync; the node reads the
# stored files (page cache, as storescu does). Medians and the per-run ratios are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
profile=${PROFILE:-release}
shared=${SHARED_BENCH:-../shared/bench}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/m3dnode-bench-qr}
mkdir -p "$scratch"

command -v storescu >/dev/null || { echo "install dcmtk first (scripts/test does)" >&2; exit 2; }
py=${PYTHON:-$PWD/target/pyenv/bin/python}
"$py" -c "import numpy, pydicom" 2>/dev/null || { echo "need numpy and pydicom in $py" >&2; exit 2; }
series=$scratch/series/mr300
[ -d "$series" ] || "$py" "$shared/make_series.py" --modality MR --rows 512 --cols 512 --slices 300 "$series" >/dev/null

if [ "$profile" = release ]; then cargo build --release -q; node=$PWD/target/release/m3dnode
else cargo build -q; node=$PWD/target/debug/m3dnode; fi

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
node_port=$(free_port); dest_port=$(free_port)
rm -rf "$scratch/node" "$scratch/dest" "$scratch/get"
mkdir -p "$scratch/node" "$scratch/dest" "$scratch/get"
cat > "$scratch/node.toml" <<EOF
[node]
listen = "127.0.0.1:$node_port"
storage = "$scratch/node/var"
sync = false
min_free_mb = 1
[[peers]]
ae_title = "BENCH"
address = "127.0.0.1:1"
[[peers]]
ae_title = "DEST"
address = "127.0.0.1:$dest_port"
EOF
"$node" serve --config "$scratch/node.toml" >/dev/null 2>"$scratch/node.log" &
node_pid=$!
TCP_NODELAY=1 storescp -aet DEST -od "$scratch/dest" "$dest_port" >/dev/null 2>&1 &
dest_pid=$!
trap 'kill $node_pid $dest_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    echoscu -aec M3DNODE 127.0.0.1 "$node_port" 2>/dev/null && echoscu -aec DEST 127.0.0.1 "$dest_port" 2>/dev/null && break
    sleep 0.2
done
TCP_NODELAY=1 storescu -aet BENCH -aec M3DNODE +sd 127.0.0.1 "$node_port" "$series" >/dev/null
study=$(dcmdump -q +P 0020,000d "$(ls "$series"/* | head -1)" | sed 's/.*\[\(.*\)\].*/\1/')
n=$(ls "$series" | wc -l)

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
declare -a base move get
for r in $(seq "$runs"); do
    rm -rf "$scratch/dest"/* "$scratch/get"/*
    b=$(secs env TCP_NODELAY=1 storescu -aet BENCH -aec DEST +sd 127.0.0.1 "$dest_port" "$series")
    rm -rf "$scratch/dest"/*
    m=$(secs movescu -aet BENCH -aec M3DNODE -aem DEST -S -k QueryRetrieveLevel=STUDY -k StudyInstanceUID="$study" 127.0.0.1 "$node_port")
    [ "$(ls "$scratch/dest" | wc -l)" -eq "$n" ] || { echo "C-MOVE delivered $(ls "$scratch/dest" | wc -l) of $n" >&2; exit 1; }
    g=$(secs env TCP_NODELAY=1 getscu -aet BENCH -aec M3DNODE -S -od "$scratch/get" -k QueryRetrieveLevel=STUDY -k StudyInstanceUID="$study" 127.0.0.1 "$node_port")
    [ "$(ls "$scratch/get" | wc -l)" -eq "$n" ] || { echo "C-GET delivered $(ls "$scratch/get" | wc -l) of $n" >&2; exit 1; }
    base+=("$b"); move+=("$m"); get+=("$g")
    printf 'run %d: storescu->storescp %.0f/s  C-MOVE %.0f/s (%.2fx)  C-GET %.0f/s (%.2fx)\n' "$r" \
        "$(echo "$n/$b" | bc -l)" "$(echo "$n/$m" | bc -l)" "$(echo "$b/$m" | bc -l)" \
        "$(echo "$n/$g" | bc -l)" "$(echo "$b/$g" | bc -l)"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mb=$(median "${base[@]}"); mm=$(median "${move[@]}"); mg=$(median "${get[@]}")
printf 'median of %d runs (%d instances, 512x512x16 bit): storescu->storescp %.0f/s, C-MOVE %.0f/s = %.2fx, C-GET %.0f/s = %.2fx\n' \
    "$runs" "$n" "$(echo "$n/$mb" | bc -l)" "$(echo "$n/$mm" | bc -l)" "$(echo "$mb/$mm" | bc -l)" \
    "$(echo "$n/$mg" | bc -l)" "$(echo "$mb/$mg" | bc -l)"
