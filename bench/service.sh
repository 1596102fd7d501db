#!/usr/bin/env bash
# The service figures of issue 14: what metrics and the HTTP side cost on ingest, and how
# fast the status page's data is.
#
#   bench/service.sh ingest OLD_BINARY [RUNS]   A/B C-STORE ingest: the release before the
#                                                metrics and HTTP side vs this tree with both
#                                                on (recorder installed, /metrics scraped
#                                                every SCRAPE_SECONDS, default 1, during the runs)
#   bench/service.sh page                        the status page's endpoints with 1,000 series
#                                                and 1,000 jobs (benches/status_page.rs)
#
# OLD_BINARY: `m3dnode` built from commit 52a843f (the last commit before issue 14):
#   git worktree add /tmp/oldsrc 52a843f
#   (cd /tmp/oldsrc && CARGO_TARGET_DIR=/tmp/oldbuild cargo build --release)
#   git worktree remove /tmp/oldsrc
#
# ingest: a 300-instance 512x512 16-bit MR series from ../shared/bench/make_series.py, sent by
# DCMTK storescu (one association) to both binaries in turn, order rotated per run, by the
# shared harness (../shared/bench/ingest.sh), durable (the default) and with `sync = false`
# (where per-instance CPU costs show most). NEW_BINARY skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: bench/service.sh ingest OLD_BINARY [RUNS] | page}
shared=${SHARED_BENCH:-../shared/bench}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/m3dnode-bench}
mkdir -p "$scratch/tmp"
py=${PYTHON:-$PWD/target/pyenv/bin/python}

case $what in
ingest)
    old=${2:?usage: bench/service.sh ingest OLD_BINARY [RUNS]}
    runs=${3:-15}
    if [ -n "${NEW_BINARY:-}" ]; then
        new=$NEW_BINARY
    else
        cargo build --release -q
        new=$PWD/target/release/m3dnode
    fi
    series=$scratch/series/mr300
    [ -d "$series" ] || "$py" "$shared/make_series.py" --modality MR --rows 512 --cols 512 --slices 300 "$series"
    scp="serve --listen 127.0.0.1:{port} --storage {outdir} --ae-title {aet}"
    # The new binary's HTTP side on fixed ports, so that the scraper finds them.
    http_n=127.0.0.1:18081 http_d=127.0.0.1:18082
    env_d="env M3DNODE__NODE__MIN_FREE_MB=1 RUST_LOG=warn"
    env_n="env M3DNODE__NODE__SYNC=false M3DNODE__NODE__MIN_FREE_MB=1 RUST_LOG=warn"
    scrape=${SCRAPE_SECONDS:-1}
    (
        while sleep "$scrape"; do
            for h in $http_n $http_d; do curl -s -o /dev/null "http://$h/metrics" || true; done
        done
    ) &
    scraper=$!
    trap 'kill $scraper 2>/dev/null || true' EXIT
    echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    TMPDIR=$scratch/tmp PYTHON=$py "$shared/ingest.sh" -d "$series" -e -1 -n "$runs" \
        "$env_n $old $scp" "$env_n $new $scp --http-listen $http_n" \
        "$env_d $old $scp" "$env_d $new $scp --http-listen $http_d"
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    curl -s "http://$http_d/metrics" | grep -E '^m3dnode_(instances_stored_total|store_receive_to_ack_seconds_(count|sum)) ' || true
    ;;
page)
    cargo bench --bench status_page
    ;;
*)
    echo "usage: bench/service.sh ingest OLD_BINARY [RUNS] | page" >&2
    exit 2
    ;;
esac
