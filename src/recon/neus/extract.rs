//! The surface of the fitted field by the project's marching cubes, in two passes as
//! instant-nsr-pl's `isosurface()`: the whole box, then the coarse surface's bounding box
//! grown by 10 % of its size on each side (clamped to the box), both at the same
//! resolution, the second directly in patient mm.

use burn::tensor::backend::Backend;

use super::field::{Grid, SdfField};
use super::{NeusError, Placement};
use crate::mesh::{self, Affine, McOptions, Mesh};

/// Points per network call while sampling the grid.
const CHUNK: usize = 1 << 15;

/// `-sdf` (inside >= 0, as marching cubes wants it) on a `res^3` lattice from `lo` to `hi`.
fn sample<B: Backend>(
    field: &SdfField<B>,
    grid: &Grid,
    active: usize,
    lo: [f64; 3],
    hi: [f64; 3],
    res: usize,
    device: &B::Device,
) -> Result<Vec<f32>, NeusError> {
    let step: [f64; 3] = std::array::from_fn(|a| (hi[a] - lo[a]) / (res - 1) as f64);
    let total = res * res * res;
    let mut out = Vec::with_capacity(total);
    let mut pts = Vec::with_capacity(CHUNK);
    let mut start = 0;
    while start < total {
        let end = (start + CHUNK).min(total);
        pts.clear();
        for q in start..end {
            let idx = [q % res, (q / res) % res, q / (res * res)];
            pts.push(std::array::from_fn(|a| {
                (lo[a] + idx[a] as f64 * step[a]) as f32
            }));
        }
        let sdf = field.sdf(grid, &pts, active, device).neg();
        let v = sdf
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| NeusError::Backend(format!("{e:?}")))?;
        out.extend(v);
        start = end;
    }
    Ok(out)
}

/// The zero level set of the field in patient mm: the largest connected component.
pub(super) fn surface<B: Backend>(
    field: &SdfField<B>,
    grid: &Grid,
    active: usize,
    res: usize,
    placement: &Placement,
    device: &B::Device,
) -> Result<Mesh, NeusError> {
    let dims = [res; 3];
    let opts = McOptions::default();
    let (lo, hi) = ([-1.0; 3], [1.0; 3]);
    let coarse = sample(field, grid, active, lo, hi, res, device)?;
    let step = 2.0 / (res - 1) as f64;
    let world: Affine = [
        [step, 0.0, 0.0, -1.0],
        [0.0, step, 0.0, -1.0],
        [0.0, 0.0, step, -1.0],
    ];
    let m = mesh::marching_cubes(&coarse, dims, 0.0, &world, &opts)?;
    if m.is_empty() {
        return Err(NeusError::EmptySurface);
    }
    let b = mesh::metrics(&m);
    let (lo, hi): ([f64; 3], [f64; 3]) = (
        std::array::from_fn(|a| {
            (b.bbox_min[a] - 0.1 * (b.bbox_max[a] - b.bbox_min[a])).clamp(-1.0, 1.0)
        }),
        std::array::from_fn(|a| {
            (b.bbox_max[a] + 0.1 * (b.bbox_max[a] - b.bbox_min[a])).clamp(-1.0, 1.0)
        }),
    );
    let fine = sample(field, grid, active, lo, hi, res, device)?;
    let step: [f64; 3] = std::array::from_fn(|a| ((hi[a] - lo[a]) / (res - 1) as f64).max(1e-9));
    let affine = placement.grid_affine(lo, step);
    let m = mesh::marching_cubes(&fine, dims, 0.0, &affine, &opts)?;
    if m.is_empty() {
        return Err(NeusError::EmptySurface);
    }
    Ok(mesh::keep_largest_component(&m))
}
