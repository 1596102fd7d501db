//! Iso-surface extraction by marching cubes.
//!
//! Method: marching cubes (Lorensen & Cline 1987, SIGGRAPH '87) with shared,
//! edge-indexed vertices placed by linear interpolation along each crossed
//! grid edge, and a case table whose ambiguous faces are always resolved by
//! separating the inside corners (see `mc_table.rs` for the derivation and
//! why that makes every output closed and manifold). The traversal borrows
//! the row-trimming idea of Flying Edges (Schroeder, Maynard & Geveci 2015,
//! "Flying edges: A high-performance scalable isocontouring algorithm"):
//! each row records the first and last inside sample, and only the cells
//! between them are visited.
//!
//! Why it is written this way:
//! * **Closed output for any input.** The volume is treated as if it were
//!   surrounded by one layer of virtual "outside" samples (cells run from -1
//!   to n along each axis), so objects touching the border are capped. A
//!   vertex on an edge to a virtual sample is placed half a voxel outside the
//!   last real sample, i.e. on the boundary of the voxels' footprint.
//! * **Speed.** Each slice is first classified into a padded byte mask (one
//!   vectorisable pass over the samples) and every row remembers its first
//!   and last inside sample. Crossed edges and active cells are then found
//!   eight mask bytes at a time with `u64` operations, so uniform runs (air,
//!   brain) cost a few instructions per eight voxels. Vertices are created
//!   once per crossed edge into per-slice index caches; cells only look
//!   indices up. Nothing is allocated per voxel. `benches/mc.rs` measures it.
//! * **Ties.** A sample exactly equal to `iso` is inside. The crossing on
//!   an edge leaving it would sit on the sample itself, where the vertices of
//!   all its crossed edges would coincide and make zero-area triangles (closed
//!   and manifold by index, non-manifold once merged by position as STL
//!   readers do). So the crossing parameter is kept [`TIE_MARGIN`] away from
//!   both ends of the edge: those vertices stay distinct, each moved by at
//!   most 1/256 of a voxel along its own edge. `recon::iso` also moves integer
//!   thresholds half a stored unit off the samples, so that on integer data
//!   ties do not occur at all.
//! * **Determinism across threads.** Work is split into slabs of cell layers
//!   processed in parallel (rayon). Vertices are numbered in a canonical
//!   order (per slice: x- and y-edges, then the z-edges up to the next slice)
//!   independent of the slab split. A slab also computes the vertices of the
//!   first slice of the next slab (needed by its last cell layer); they are the
//!   same, in the same order, as that slab's first vertices, so stitching is
//!   a plain index offset. The output is byte-identical for any thread count.

use std::sync::Mutex;

use rayon::prelude::*;

use super::mc_table::{CaseTable, MAX_TRIS, TABLE_CCW, TABLE_CW};
use super::{Affine, Mesh, MeshError};

/// Options for [`marching_cubes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct McOptions {
    /// Number of worker threads. `None` (or `Some(0)`) uses the current rayon
    /// pool (the global one unless called inside `ThreadPool::install`);
    /// `Some(n)` runs on a dedicated pool of `n` threads. The result does not
    /// depend on this value.
    pub threads: Option<usize>,
}

/// Marker in the per-row `first` array for a row without inside samples.
const EMPTY: u32 = u32::MAX;

/// Extracts the iso-surface `value == iso` of a volume as a closed mesh.
///
/// * `data` holds `nx * ny * nz` samples, x fastest:
///   `index = i + nx * (j + ny * k)`, with `dims = [nx, ny, nz]`.
/// * A sample is *inside* when `value >= iso` (NaN samples are outside).
/// * `affine` maps voxel indices to patient coordinates in mm (see
///   [`Affine`]); vertices are transformed in f64 and stored as f32.
///
/// The result is watertight and manifold for every input: samples outside
/// the grid count as outside, so surfaces touching the volume border are
/// closed by a cap half a voxel beyond the outermost samples. Triangles are
/// wound so that normals point from inside to outside, also for affines with
/// negative determinant. If nothing crosses `iso` the mesh is empty (not an
/// error).
///
/// # Errors
/// [`MeshError::InvalidDims`] for a zero dimension, [`MeshError::DataLength`]
/// if `data.len() != nx * ny * nz`, [`MeshError::InvalidIso`] for a NaN
/// `iso`, [`MeshError::DegenerateAffine`] for a singular or non-finite affine,
/// [`MeshError::TooLarge`] beyond `u32` indices, [`MeshError::ThreadPool`] if
/// a dedicated pool cannot be started.
pub fn marching_cubes<T: Copy + Into<f32> + Send + Sync>(
    data: &[T],
    dims: [usize; 3],
    iso: f32,
    affine: &Affine,
    opts: &McOptions,
) -> Result<Mesh, MeshError> {
    let flip = validate(data, dims, iso, affine)?;
    let g = make_grid(data, dims, iso, affine);
    let table = if flip { &TABLE_CW } else { &TABLE_CCW };
    match opts.threads {
        None | Some(0) => run_parallel(&g, table, None),
        Some(1) => run_sequential(&g, table, None),
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| MeshError::ThreadPool(e.to_string()))?;
            pool.install(|| run_parallel(&g, table, None))
        }
    }
}

/// Test hook: like [`marching_cubes`] on the current pool, but with an
/// explicit slab height (in cell layers) and sequential when `parallel` is
/// false.
#[cfg(test)]
pub(crate) fn marching_cubes_slabbed<T: Copy + Into<f32> + Send + Sync>(
    data: &[T],
    dims: [usize; 3],
    iso: f32,
    affine: &Affine,
    slab: usize,
    parallel: bool,
) -> Result<Mesh, MeshError> {
    let flip = validate(data, dims, iso, affine)?;
    let g = make_grid(data, dims, iso, affine);
    let table = if flip { &TABLE_CW } else { &TABLE_CCW };
    if parallel {
        run_parallel(&g, table, Some(slab))
    } else {
        run_sequential(&g, table, Some(slab))
    }
}

/// Read-only description of the job shared by all slabs.
struct Grid<'a, T> {
    data: &'a [T],
    nx: usize,
    ny: usize,
    nz: usize,
    /// Padded row width `nx + 2`.
    w: usize,
    /// Padded slice height `ny + 2`.
    h: usize,
    iso: f32,
    affine: Affine,
}

/// Classification of one padded slice.
struct SliceMask {
    /// `w * h` bytes, 1 = inside. The padding ring is always 0.
    inside: Vec<u8>,
    /// Per padded row: first inside column (padded index) or [`EMPTY`].
    first: Vec<u32>,
    /// Per padded row: last inside column (padded index), 0 when empty.
    last: Vec<u32>,
}

/// Reusable per-worker buffers.
struct Scratch {
    mask: [SliceMask; 2],
    /// Vertex index of the x-edge at padded (i, j) of the lower/upper slice.
    xi: [Vec<u32>; 2],
    /// Vertex index of the y-edge from (i, j) to (i, j + 1).
    yi: [Vec<u32>; 2],
    /// Vertex index of the z-edge at (i, j) between the two slices.
    zi: Vec<u32>,
}

impl Scratch {
    fn new(w: usize, h: usize) -> Self {
        let mask = || SliceMask {
            inside: vec![0; w * h],
            first: vec![EMPTY; h],
            last: vec![0; h],
        };
        Scratch {
            mask: [mask(), mask()],
            xi: [vec![0; w * h], vec![0; w * h]],
            yi: [vec![0; w * h], vec![0; w * h]],
            zi: vec![0; w * h],
        }
    }
}

/// Output of one slab. `verts[own..]` are the first vertices of the next slab.
struct SlabOut {
    verts: Vec<[f32; 3]>,
    own: usize,
    tris: Vec<u32>,
}

fn validate<T>(data: &[T], dims: [usize; 3], iso: f32, affine: &Affine) -> Result<bool, MeshError> {
    let [nx, ny, nz] = dims;
    let expected = nx
        .checked_mul(ny)
        .and_then(|v| v.checked_mul(nz))
        .filter(|&v| v > 0)
        .ok_or(MeshError::InvalidDims { dims })?;
    // Padded sizes must not overflow either.
    nx.checked_add(2)
        .zip(ny.checked_add(2))
        .and_then(|(w, h)| w.checked_mul(h))
        .filter(|&wh| wh <= u32::MAX as usize)
        .ok_or(MeshError::InvalidDims { dims })?;
    if data.len() != expected {
        return Err(MeshError::DataLength {
            dims,
            expected,
            len: data.len(),
        });
    }
    if iso.is_nan() {
        return Err(MeshError::InvalidIso);
    }
    if affine.iter().flatten().any(|v| !v.is_finite()) {
        return Err(MeshError::DegenerateAffine);
    }
    let a = affine;
    let det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    let scale: f64 = (0..3)
        .map(|c| (0..3).map(|r| a[r][c] * a[r][c]).sum::<f64>().sqrt())
        .product();
    if det.is_nan() || det.abs() <= 1e-12 * scale {
        return Err(MeshError::DegenerateAffine);
    }
    Ok(det < 0.0)
}

fn make_grid<'a, T>(data: &'a [T], dims: [usize; 3], iso: f32, affine: &Affine) -> Grid<'a, T> {
    let [nx, ny, nz] = dims;
    Grid {
        data,
        nx,
        ny,
        nz,
        w: nx + 2,
        h: ny + 2,
        iso,
        affine: *affine,
    }
}

/// Cell layers run over padded slices 0..=nz (layer p between padded
/// slices p and p + 1). Splits them into slabs of `height` layers.
fn slabs(layers: usize, height: usize) -> Vec<(usize, usize)> {
    let height = height.max(1);
    (0..layers)
        .step_by(height)
        .map(|k0| (k0, (k0 + height).min(layers)))
        .collect()
}

fn run_parallel<T: Copy + Into<f32> + Send + Sync>(
    g: &Grid<'_, T>,
    table: &CaseTable,
    slab: Option<usize>,
) -> Result<Mesh, MeshError> {
    let layers = g.nz + 1;
    let threads = rayon::current_num_threads().max(1);
    let height = slab.unwrap_or_else(|| {
        if threads == 1 {
            layers
        } else {
            // About four slabs per thread for load balance, but not so thin
            // that the duplicated boundary slices matter.
            layers.div_ceil(4 * threads).max(8)
        }
    });
    // Scratch buffers are recycled through a small pool: at most one per
    // concurrently running slab is ever allocated.
    let pool: Mutex<Vec<Scratch>> = Mutex::new(Vec::new());
    let outs: Vec<SlabOut> = slabs(layers, height)
        .into_par_iter()
        .map(|(k0, k1)| {
            let taken = pool.lock().ok().and_then(|mut p| p.pop());
            let mut sc = taken.unwrap_or_else(|| Scratch::new(g.w, g.h));
            let out = run_slab(g, k0, k1, &mut sc, table);
            if let Ok(mut p) = pool.lock() {
                p.push(sc);
            }
            out
        })
        .collect();
    merge(outs, true)
}

fn run_sequential<T: Copy + Into<f32>>(
    g: &Grid<'_, T>,
    table: &CaseTable,
    slab: Option<usize>,
) -> Result<Mesh, MeshError> {
    let layers = g.nz + 1;
    let mut sc = Scratch::new(g.w, g.h);
    let outs: Vec<SlabOut> = slabs(layers, slab.unwrap_or(layers))
        .into_iter()
        .map(|(k0, k1)| run_slab(g, k0, k1, &mut sc, table))
        .collect();
    merge(outs, false)
}

/// Concatenates slab outputs. Because the vertices a slab borrowed from its
/// successor are exactly the successor's first vertices, every local index
/// `l` of slab `s` maps to `base_s + l`.
fn merge(outs: Vec<SlabOut>, parallel: bool) -> Result<Mesh, MeshError> {
    let total_v: usize = outs.iter().map(|o| o.own).sum();
    if total_v > u32::MAX as usize {
        return Err(MeshError::TooLarge);
    }
    for pair in outs.windows(2) {
        let borrowed = &pair[0].verts[pair[0].own..];
        let same = pair[1].verts.get(..borrowed.len()).is_some_and(|head| {
            head.iter()
                .zip(borrowed)
                .all(|(a, b)| a.map(f32::to_bits) == b.map(f32::to_bits))
        });
        if !same {
            // Unreachable by construction; refuse to emit a cracked mesh.
            return Err(MeshError::Internal("slab seam vertices differ"));
        }
    }
    if outs.len() == 1 {
        // One slab: its buffers are the result (nothing was borrowed).
        if let Some(o) = outs.into_iter().next() {
            let mut vertices = o.verts;
            vertices.truncate(o.own);
            return Ok(Mesh {
                vertices,
                indices: o.tris,
            });
        }
        return Ok(Mesh::default());
    }
    // Both outputs are filled per slab, in parallel: vertices are copied,
    // indices shifted by the slab's base.
    let total_i: usize = outs.iter().map(|o| o.tris.len()).sum();
    let mut vertices = vec![[0.0f32; 3]; total_v];
    let mut indices = vec![0u32; total_i];
    let mut jobs = Vec::with_capacity(outs.len());
    let (mut vrest, mut irest) = (vertices.as_mut_slice(), indices.as_mut_slice());
    let mut base = 0u32;
    for o in &outs {
        let (vdst, vtail) = vrest.split_at_mut(o.own);
        let (idst, itail) = irest.split_at_mut(o.tris.len());
        jobs.push((vdst, idst, o, base));
        (vrest, irest) = (vtail, itail);
        base += o.own as u32;
    }
    let fill = |(vdst, idst, o, base): (&mut [[f32; 3]], &mut [u32], &SlabOut, u32)| {
        vdst.copy_from_slice(&o.verts[..o.own]);
        for (d, s) in idst.iter_mut().zip(&o.tris) {
            *d = s + base;
        }
    };
    if parallel {
        jobs.into_par_iter().for_each(fill);
    } else {
        jobs.into_iter().for_each(fill);
    }
    Ok(Mesh { vertices, indices })
}

fn run_slab<T: Copy + Into<f32>>(
    g: &Grid<'_, T>,
    k0: usize,
    k1: usize,
    sc: &mut Scratch,
    table: &CaseTable,
) -> SlabOut {
    let mut verts: Vec<[f32; 3]> = Vec::new();
    let mut tris: Vec<u32> = Vec::new();
    let mut own = 0;
    {
        let [m0, _] = &mut sc.mask;
        classify(g, k0, m0);
        gen_xy(g, k0, m0, &mut sc.xi[0], &mut sc.yi[0], &mut verts);
    }
    for p in k0..k1 {
        let [m0, m1] = &mut sc.mask;
        classify(g, p + 1, m1);
        gen_z(g, p, m0, m1, &mut sc.zi, &mut verts);
        if p + 1 == k1 {
            own = verts.len();
        }
        let [xi0, xi1] = &mut sc.xi;
        let [yi0, yi1] = &mut sc.yi;
        gen_xy(g, p + 1, m1, xi1, yi1, &mut verts);
        cells(g, m0, m1, [xi0, xi1, yi0, yi1, &sc.zi], table, &mut tris);
        sc.mask.swap(0, 1);
        sc.xi.swap(0, 1);
        sc.yi.swap(0, 1);
        // Grow the outputs by extrapolating the layers seen so far (checked
        // at powers of two), instead of many doubling copies.
        let done = p + 1 - k0;
        if done >= 4 && done.is_power_of_two() {
            let total = k1 - k0;
            reserve_projected(&mut verts, done, total);
            reserve_projected(&mut tris, done, total);
        }
    }
    SlabOut { verts, own, tris }
}

/// Reserves room for `v.len() * total / done` elements plus 1/8 slack.
fn reserve_projected<E>(v: &mut Vec<E>, done: usize, total: usize) {
    let projected = v.len() / done * total;
    let want = projected + projected / 8;
    if want > v.capacity() {
        v.reserve_exact(want - v.len());
    }
}

/// Fills the mask of padded slice `p` (0 and nz + 1 are virtual).
fn classify<T: Copy + Into<f32>>(g: &Grid<'_, T>, p: usize, m: &mut SliceMask) {
    let (w, nx, ny) = (g.w, g.nx, g.ny);
    if p == 0 || p == g.nz + 1 {
        m.inside.fill(0);
        m.first.fill(EMPTY);
        m.last.fill(0);
        return;
    }
    let plane = nx * ny;
    let src = &g.data[(p - 1) * plane..p * plane];
    let iso = g.iso;
    for (j, src_row) in src.chunks_exact(nx).enumerate() {
        let jp = j + 1;
        let row = &mut m.inside[jp * w + 1..jp * w + 1 + nx];
        let mut acc = 0u8;
        for (o, &v) in row.iter_mut().zip(src_row) {
            let b = u8::from(v.into() >= iso);
            *o = b;
            acc |= b;
        }
        let (first, last) = if acc == 0 {
            (EMPTY, 0)
        } else {
            match (first_set(row), last_set(row)) {
                (Some(f), Some(l)) => (f as u32 + 1, l as u32 + 1),
                _ => (EMPTY, 0),
            }
        };
        m.first[jp] = first;
        m.last[jp] = last;
    }
}

/// How close (as a fraction of the edge) a crossing may come to a sample; see "Ties" in the
/// module documentation. 1/256 of a voxel is far above `f32` resolution of patient
/// coordinates (1e-5 mm at 200 mm) and far below any accuracy this module promises.
pub(crate) const TIE_MARGIN: f64 = 1.0 / 256.0;

/// Interpolation parameter of the iso crossing between `v0` and `v1`, kept within
/// `[TIE_MARGIN, 1 - TIE_MARGIN]`; falls back to the midpoint for non-finite samples.
#[inline]
fn lerp_t(iso: f32, v0: f32, v1: f32) -> f64 {
    let (iso, v0, v1) = (f64::from(iso), f64::from(v0), f64::from(v1));
    let t = (iso - v0) / (v1 - v0);
    if (0.0..=1.0).contains(&t) {
        t.clamp(TIE_MARGIN, 1.0 - TIE_MARGIN)
    } else {
        0.5
    }
}

impl<T: Copy + Into<f32>> Grid<'_, T> {
    #[inline]
    fn value(&self, i: usize, j: usize, k: usize) -> f32 {
        self.data[i + self.nx * (j + self.ny * k)].into()
    }

    /// Voxel-space (x, y, z) to patient mm.
    #[inline]
    fn map(&self, x: f64, y: f64, z: f64) -> [f32; 3] {
        let a = &self.affine;
        [
            (a[0][0] * x + a[0][1] * y + a[0][2] * z + a[0][3]) as f32,
            (a[1][0] * x + a[1][1] * y + a[1][2] * z + a[1][3]) as f32,
            (a[2][0] * x + a[2][1] * y + a[2][2] * z + a[2][3]) as f32,
        ]
    }

    /// Coordinate of the crossing on the edge from padded index `q` to
    /// `q + 1` along an axis with `n` real samples; `sample(r)` reads real
    /// index `r`.
    #[inline]
    fn crossing(&self, q: usize, n: usize, sample: impl Fn(usize) -> f32) -> f64 {
        if q == 0 {
            -0.5
        } else if q == n {
            n as f64 - 0.5
        } else {
            (q - 1) as f64 + lerp_t(self.iso, sample(q - 1), sample(q))
        }
    }

    /// Vertex on the x-edge from padded (i, j, p) to (i + 1, j, p).
    fn x_vertex(&self, i: usize, j: usize, p: usize) -> [f32; 3] {
        let x = self.crossing(i, self.nx, |r| self.value(r, j - 1, p - 1));
        self.map(x, (j - 1) as f64, (p - 1) as f64)
    }

    /// Vertex on the y-edge from padded (i, j, p) to (i, j + 1, p).
    fn y_vertex(&self, i: usize, j: usize, p: usize) -> [f32; 3] {
        let y = self.crossing(j, self.ny, |r| self.value(i - 1, r, p - 1));
        self.map((i - 1) as f64, y, (p - 1) as f64)
    }

    /// Vertex on the z-edge from padded (i, j, p) to (i, j, p + 1).
    fn z_vertex(&self, i: usize, j: usize, p: usize) -> [f32; 3] {
        let z = self.crossing(p, self.nz, |r| self.value(i - 1, j - 1, r));
        self.map((i - 1) as f64, (j - 1) as f64, z)
    }
}

/// Creates the vertices of the crossed x- and y-edges of padded slice `p`.
fn gen_xy<T: Copy + Into<f32>>(
    g: &Grid<'_, T>,
    p: usize,
    m: &SliceMask,
    xi: &mut [u32],
    yi: &mut [u32],
    verts: &mut Vec<[f32; 3]>,
) {
    if p == 0 || p == g.nz + 1 {
        return;
    }
    let w = g.w;
    for j in 0..g.h - 1 {
        let row = &m.inside[j * w..(j + 1) * w];
        let (f, l) = (m.first[j], m.last[j]);
        if f <= l {
            for_each_diff(row, &row[1..], f as usize - 1, l as usize, |i| {
                xi[j * w + i] = verts.len() as u32;
                verts.push(g.x_vertex(i, j, p));
            });
        }
        let f = f.min(m.first[j + 1]);
        let l = l.max(m.last[j + 1]);
        if f <= l {
            let next = &m.inside[(j + 1) * w..(j + 2) * w];
            for_each_diff(row, next, f as usize, l as usize, |i| {
                yi[j * w + i] = verts.len() as u32;
                verts.push(g.y_vertex(i, j, p));
            });
        }
    }
}

/// Creates the vertices of the crossed z-edges between padded slices `p`
/// and `p + 1`.
fn gen_z<T: Copy + Into<f32>>(
    g: &Grid<'_, T>,
    p: usize,
    m0: &SliceMask,
    m1: &SliceMask,
    zi: &mut [u32],
    verts: &mut Vec<[f32; 3]>,
) {
    let w = g.w;
    for j in 1..g.h - 1 {
        let f = m0.first[j].min(m1.first[j]);
        let l = m0.last[j].max(m1.last[j]);
        if f > l {
            continue;
        }
        let r0 = &m0.inside[j * w..(j + 1) * w];
        let r1 = &m1.inside[j * w..(j + 1) * w];
        for_each_diff(r0, r1, f as usize, l as usize, |i| {
            zi[j * w + i] = verts.len() as u32;
            verts.push(g.z_vertex(i, j, p));
        });
    }
}

/// Emits the triangles of the cell layer between the slices of `m0` and
/// `m1`. `idx` = [x-edges low, x-edges high, y-edges low, y-edges high,
/// z-edges].
fn cells<T>(
    g: &Grid<'_, T>,
    m0: &SliceMask,
    m1: &SliceMask,
    idx: [&[u32]; 5],
    table: &CaseTable,
    tris: &mut Vec<u32>,
) {
    let w = g.w;
    let [xi0, xi1, yi0, yi1, zi] = idx;
    for j in 0..g.h - 1 {
        let f = m0.first[j]
            .min(m0.first[j + 1])
            .min(m1.first[j])
            .min(m1.first[j + 1]);
        let l = m0.last[j]
            .max(m0.last[j + 1])
            .max(m1.last[j])
            .max(m1.last[j + 1]);
        if f > l {
            continue;
        }
        // Cells lo..=hi touch every inside sample of the four rows.
        let lo = f as usize - 1;
        let hi = l as usize;
        let n = hi - lo + 2; // sample columns lo..=hi+1
        fn r(m: &SliceMask, s: usize, n: usize) -> &[u8] {
            &m.inside[s..s + n]
        }
        let (s0, s1) = (j * w + lo, (j + 1) * w + lo);
        let (a, b, c, d) = (r(m0, s0, n), r(m0, s1, n), r(m1, s0, n), r(m1, s1, n));
        let col = |t: usize| a[t] | (b[t] << 2) | (c[t] << 4) | (d[t] << 6);
        let mut emit = |t: usize| {
            let case = (col(t) | (col(t + 1) << 1)) as usize;
            let base = j * w + lo + t;
            let e = [
                xi0[base],
                xi0[base + w],
                xi1[base],
                xi1[base + w],
                yi0[base],
                yi0[base + 1],
                yi1[base],
                yi1[base + 1],
                zi[base],
                zi[base + 1],
                zi[base + w],
                zi[base + w + 1],
                0,
                0,
                0,
                0,
            ];
            let cnt = 3 * table.count[case] as usize;
            let mut out = [0u32; 3 * MAX_TRIS];
            for (o, &edge) in out.iter_mut().zip(&table.tris[case][..cnt]) {
                // `& 15` lets the compiler drop the bounds check (ids are < 12).
                *o = e[edge as usize & 15];
            }
            tris.extend_from_slice(&out[..cnt]);
        };
        // Eight cells at a time: a cell is skipped when its two columns are
        // both all-outside or both all-inside (one byte per column).
        let ncell = n - 1;
        let mut t = 0;
        while t + 9 <= n {
            let (a0, b0, c0, d0) = (load8(a, t), load8(b, t), load8(c, t), load8(d, t));
            let (a1, b1, c1, d1) = (
                load8(a, t + 1),
                load8(b, t + 1),
                load8(c, t + 1),
                load8(d, t + 1),
            );
            let any = (a0 | b0 | c0 | d0) | (a1 | b1 | c1 | d1);
            let all = (a0 & b0 & c0 & d0) & (a1 & b1 & c1 & d1);
            let mut active = ((any ^ ONES) | all) ^ ONES;
            while active != 0 {
                emit(t + (active.trailing_zeros() / 8) as usize);
                active &= active - 1;
            }
            t += 8;
        }
        while t < ncell {
            let cs = col(t) | (col(t + 1) << 1);
            if cs != 0 && cs != 255 {
                emit(t);
            }
            t += 1;
        }
    }
}

/// One byte set in every lane.
const ONES: u64 = 0x0101_0101_0101_0101;

/// Eight mask bytes starting at `i`, little endian (byte k = column i + k).
#[inline(always)]
fn load8(s: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[i..i + 8]);
    u64::from_le_bytes(w)
}

/// Calls `f(i)` in increasing order for each `i` in `lo..=hi` with
/// `a[i] != b[i]` (mask bytes are 0 or 1), comparing eight at a time.
#[inline(always)]
fn for_each_diff(a: &[u8], b: &[u8], lo: usize, hi: usize, mut f: impl FnMut(usize)) {
    let end = hi + 1;
    let lim = a.len().min(b.len()).min(end);
    let mut i = lo;
    while i + 8 <= lim {
        let mut x = load8(a, i) ^ load8(b, i);
        while x != 0 {
            f(i + (x.trailing_zeros() / 8) as usize);
            x &= x - 1;
        }
        i += 8;
    }
    while i < end {
        if a[i] != b[i] {
            f(i);
        }
        i += 1;
    }
}

/// Index of the first non-zero byte, scanning eight bytes at a time.
#[inline]
fn first_set(row: &[u8]) -> Option<usize> {
    let mut chunks = row.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        if w != 0 {
            return Some(base + (w.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b != 0)
        .map(|k| base + k)
}

/// Index of the last non-zero byte, scanning eight bytes at a time.
#[inline]
fn last_set(row: &[u8]) -> Option<usize> {
    let mut chunks = row.rchunks_exact(8);
    let mut end = row.len();
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        if w != 0 {
            return Some(end - 1 - (w.leading_zeros() / 8) as usize);
        }
        end -= 8;
    }
    chunks.remainder().iter().rposition(|&b| b != 0)
}
