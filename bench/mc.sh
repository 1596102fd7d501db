#!/usr/bin/env bash
# Surface extraction and end-to-end reconstruction, side by side with VTK and scikit-image.
#
#   bench/mc.sh [ROUNDS]        (default 3; needs ../shared/bench beside the repo)
#
# Volumes: a 256^3 float32 "blobs" volume (level 0.5) from ../shared/bench/mc_anchor.py and a
# synthetic 512x512x300 int16 CT (bone iso 300 HU, 1 x 0.7 x 0.7 mm) from make_series.py, which
# also writes it as a DICOM series for the end-to-end run. Each round runs mc_anchor.py
# (vtkFlyingEdges3D sequential and STDThread x2, skimage Lewiner) and `m3dnode bench mc`
# (1 and 2 threads) on the same .npy, one after the other, so drift hits both; compare the
# Mvoxel/s columns within a round. Then `m3dnode recon` on the CT series under
# /usr/bin/time -v: wall seconds and maximum resident set size.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shared=${SHARED_BENCH:-../shared/bench}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/m3dnode-bench}
mkdir -p "$scratch"
if [ ! -x "$scratch/venv-mc/bin/python" ]; then
    python3 -m venv "$scratch/venv-mc"
    "$scratch/venv-mc/bin/pip" install -q numpy pydicom scikit-image vtk
fi
py=$scratch/venv-mc/bin/python
[ -f "$scratch/blobs256.npy" ] || "$py" "$shared/mc_anchor.py" --synth blobs256 --level 0.5 \
    --save-npy "$scratch/blobs256.npy" --methods read --reps 1 --no-probe >/dev/null
[ -d "$scratch/series/ct300" ] || "$py" "$shared/make_series.py" --modality CT --rows 512 --cols 512 \
    --slices 300 --npy "$scratch/ct300.npy" "$scratch/series/ct300"

cargo build --release -q
node=$PWD/target/release/m3dnode
for r in $(seq "$rounds"); do
    echo "## round $r: blobs256 float32, level 0.5"
    "$py" "$shared/mc_anchor.py" --npy "$scratch/blobs256.npy" --level 0.5 \
        --methods read,vtk-fe-seq,vtk-fe-std2,skimage --reps 3 --no-probe | grep -E "^(method|read|vtk|skimage)" || true
    "$node" bench mc "$scratch/blobs256.npy" --level 0.5 --threads 1,2 --reps 5
    echo "## round $r: CT 300x512x512 int16, level 300"
    "$py" "$shared/mc_anchor.py" --npy "$scratch/ct300.npy" --level 300 --spacing 1,0.7,0.7 \
        --methods read,vtk-fe-seq,vtk-fe-std2,skimage --reps 3 --no-probe | grep -E "^(method|read|vtk|skimage)" || true
    "$node" bench mc "$scratch/ct300.npy" --level 300 --spacing 1,0.7,0.7 --threads 1,2 --reps 5
done
echo "## end to end: m3dnode recon on the CT series (pixel bytes: $((512 * 512 * 300 * 2)))"
for r in $(seq "$rounds"); do
    /usr/bin/time -f "wall %e s, max RSS %M KB" "$node" recon "$scratch/series/ct300" --preset ct-bone \
        -o "$scratch/ct300.stl" 2>&1 | tail -2
done
