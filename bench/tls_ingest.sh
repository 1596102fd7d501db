#!/usr/bin/env bash
# C-STORE ingest over DICOM TLS as a ratio to plain TCP, one association (issue 16).
#
#   bench/tls_ingest.sh [RUNS]      (default 5; needs ../shared/bench beside the repo)
#   SYNC=false bench/tls_ingest.sh  durability off, so that the TLS cost is not hidden
#                                   behind the per-instance fsync
#
# Series: the synthetic 512x512 16-bit MR series of 200 slices (105 MB) of bench/ingest.sh.
# Certificates: a CA, the node's and the client's (ECDSA P-256), made here with the openssl
# command. Each run starts the release node on fresh storage with both listeners and sends the
# series once with DCMTK storescu (TCP_NODELAY=1) to the plain port and once with
# `storescu +tls` (DCMTK's default BCP 195 profile; OpenSSL negotiates TLS 1.3,
# TLS_AES_256_GCM_SHA384) to the TLS port, in alternating order; only storescu is timed.
# Prints each run and the medians, and the median of the per-run ratios TLS/plain.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
sync=${SYNC:-true}
shared=${SHARED_BENCH:-../shared/bench}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/m3dnode-bench}
mkdir -p "$scratch"
command -v storescu >/dev/null || { echo "install dcmtk first (scripts/test does)" >&2; exit 2; }
if [ ! -x "$scratch/venv/bin/python" ]; then
    python3 -m venv "$scratch/venv"
    "$scratch/venv/bin/pip" install -q numpy pydicom
fi
py=$scratch/venv/bin/python
series=$scratch/series/mr200
[ -d "$series" ] || "$py" "$shared/make_series.py" --modality MR --rows 512 --cols 512 --slices 200 "$series"
mapfile -t files < <(find "$series" -type f | sort)
cat "${files[@]}" >/dev/null
mb=$(du -cb "${files[@]}" | tail -1 | awk '{printf "%.1f", $1/1e6}')

cargo build --release -q
node=$PWD/target/release/m3dnode
work=$(mktemp -d "$scratch/tls.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

pki=$work/pki
mkdir -p "$pki"
(
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=bench CA" -keyout ca.key -out ca.crt 2>/dev/null
    for who in node client; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=$who" -keyout $who.key -out $who.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\n' >$who.ext
        openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile $who.ext -out $who.crt 2>/dev/null
    done
)

# One send of the whole series on one association; prints seconds.
send() { # port [tls options...]
    local port=$1
    shift
    local t0 t1
    t0=$(date +%s.%N)
    TCP_NODELAY=1 storescu -aet BENCH -aec M3DNODE "$@" 127.0.0.1 "$port" "${files[@]}"
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}

results=()
for run in $(seq "$runs"); do
    order=(plain tls)
    [ $((run % 2)) -eq 0 ] && order=(tls plain)
    line="run $run:"
    declare -A secs=()
    for mode in "${order[@]}"; do
        storage=$work/var-$run-$mode
        cat >"$work/node.toml" <<EOF
[node]
listen = "127.0.0.1:0"
storage = "$storage"
min_free_mb = 1
sync = $sync
[http]
listen = ""
[tls]
enabled = true
listen = "127.0.0.1:0"
certificate = "$pki/node.crt"
key = "$pki/node.key"
ca = "$pki/ca.crt"
EOF
        RUST_LOG=warn "$node" serve --config "$work/node.toml" >"$work/out" 2>"$work/err" &
        pid=$!
        for _ in $(seq 100); do grep -q "^m3dnode listening" "$work/out" && break; sleep 0.1; done
        plain_port=$(sed -n 's/^m3dnode listening on .*://p' "$work/out")
        tls_port=$(sed -n 's/^m3dnode tls listening on .*://p' "$work/out")
        if [ "$mode" = plain ]; then
            secs[$mode]=$(send "$plain_port")
        else
            secs[$mode]=$(send "$tls_port" +tls "$pki/client.key" "$pki/client.crt" +cf "$pki/ca.crt")
        fi
        kill "$pid"
        wait "$pid" || true
        n=$(find "$storage" -name '*.dcm' | wc -l)
        [ "$n" -eq "${#files[@]}" ] || { echo "$mode run $run stored $n of ${#files[@]}" >&2; exit 1; }
        rm -rf "$storage"
        line+=$(printf ' %s %.2f s (%.1f MB/s)' "$mode" "${secs[$mode]}" "$(awk -v a="$mb" -v b="${secs[$mode]}" 'BEGIN { print a / b }')")
    done
    ratio=$(awk -v a="${secs[plain]}" -v b="${secs[tls]}" 'BEGIN { print a / b }')
    echo "$line; TLS/plain throughput $(printf %.3f "$ratio")"
    results+=("${secs[plain]} ${secs[tls]} $ratio")
done
printf '%s\n' "${results[@]}" | sort -n -k3 | awk -v n="$runs" -v mb="$mb" -v sync="$sync" '
    { p[NR]=$1; t[NR]=$2; r[NR]=$3 }
    END {
        m = int((n + 1) / 2)
        printf "median TLS/plain throughput ratio (sync=%s, %s MB, 200 instances, one association): %.3f\n", sync, mb, r[m]
    }'
