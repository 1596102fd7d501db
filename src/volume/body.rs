//! The patient's body as a voxel mask, for telling apart what belongs to the patient (bone,
//! skin) from what lies beside it (table, head-rest, cushions, positioning aids).
//!
//! Method: threshold at the skin (CT: -300 HU; other modalities:
//! [`super::background_threshold`]), keep the largest 6-connected component, then fill its
//! holes: every voxel that cannot be reached from the volume border through non-body voxels
//! (airways, sinuses, the inside of a closed skull in a badly windowed series) is body.
//!
//! Why this way: it runs on 512x512x300 CTs before the surfaces of every structure are
//! filtered, so it is one flat `u8` state per voxel (no labels array: the largest component is
//! found by flooding each component once and remembering its seed, then flooded again), and all
//! floods are iterative scanline fills (runs along x) with one reused stack, never recursive,
//! no allocation per voxel. Known limit: a head-rest or table that touches the skin at the skin threshold is
//! part of the largest component, hence "body".

use super::{Volume, Voxels};

/// Skin threshold for CT in HU: between air/foam (about -1000..-500) and fat (-100).
pub const CT_SKIN_HU: f64 = -300.0;

/// Voxel states during construction.
const OUT: u8 = 0;
const FOREGROUND: u8 = 1;
const SEEN: u8 = 2;
const LARGEST: u8 = 3;
const OUTSIDE: u8 = 4;

/// The patient's body on the grid of a [`Volume`]: one byte per voxel (1 = body).
#[derive(Debug, Clone)]
pub struct BodyMask {
    dims: [usize; 3],
    /// 1 = body, 0 = not, x fastest as in [`Volume`].
    body: Vec<u8>,
    /// Patient (LPS mm) to continuous voxel index: `ijk = inv * (p - origin)`.
    inv: [[f64; 3]; 3],
    origin: [f64; 3],
    /// Voxel volume in mm³.
    voxel_mm3: f64,
    /// The threshold used, in modality units.
    threshold: f64,
}

impl BodyMask {
    /// The body of `vol` at the skin threshold of its modality (CT: [`CT_SKIN_HU`], others:
    /// [`super::background_threshold`]).
    pub fn of(vol: &Volume) -> BodyMask {
        let t = if vol.modality == "CT" {
            CT_SKIN_HU
        } else {
            super::background_threshold(vol)
        };
        BodyMask::at(vol, t)
    }

    /// The body of `vol` at an explicit threshold in modality units (voxels `>= threshold`
    /// are tissue). A volume where nothing reaches it has an empty body.
    pub fn at(vol: &Volume, threshold: f64) -> BodyMask {
        let n = vol.voxel_count().min(vol.voxels.len());
        let mut state = vec![OUT; n];
        if let Some(t) = vol.stored_threshold(threshold) {
            fn mark<T: Copy + Into<f32>>(src: &[T], t: f32, dst: &mut [u8]) {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = u8::from(v.into() >= t);
                }
            }
            match &vol.voxels {
                Voxels::U8(v) => mark(v, t, &mut state),
                Voxels::I16(v) => mark(v, t, &mut state),
                Voxels::U16(v) => mark(v, t, &mut state),
                Voxels::F32(v) => mark(v, t, &mut state),
            }
        }
        let dims = if n == vol.voxel_count() {
            vol.dims
        } else {
            [0; 3]
        };
        let body = if n == 0 || dims.contains(&0) {
            vec![0; n]
        } else {
            fill(dims, state)
        };
        let (inv, origin) = invert(&vol.affine);
        let voxel_mm3 = vol.spacing.iter().product::<f64>().abs();
        BodyMask {
            dims,
            body,
            inv,
            origin,
            voxel_mm3,
            threshold,
        }
    }

    /// Grid dimensions (those of the volume).
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// The threshold used, in modality units.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Number of body voxels.
    pub fn voxels(&self) -> usize {
        self.body.iter().map(|&b| usize::from(b)).sum()
    }

    /// Body volume in mm³.
    pub fn volume_mm3(&self) -> f64 {
        self.voxels() as f64 * self.voxel_mm3
    }

    /// True when voxel `(i, j, k)` is body; false outside the grid.
    pub fn contains_voxel(&self, i: usize, j: usize, k: usize) -> bool {
        let [nx, ny, nz] = self.dims;
        i < nx && j < ny && k < nz && self.body[i + nx * (j + ny * k)] != 0
    }

    /// Continuous voxel index of a patient point (LPS mm).
    pub fn to_voxel(&self, p: [f64; 3]) -> [f64; 3] {
        let d = [
            p[0] - self.origin[0],
            p[1] - self.origin[1],
            p[2] - self.origin[2],
        ];
        std::array::from_fn(|r| {
            self.inv[r][0] * d[0] + self.inv[r][1] * d[1] + self.inv[r][2] * d[2]
        })
    }

    /// True when the voxel nearest to patient point `p` (LPS mm) is body.
    pub fn contains(&self, p: [f64; 3]) -> bool {
        let q = self.to_voxel(p);
        match q.map(|c| c.round()) {
            [i, j, k] if i >= 0.0 && j >= 0.0 && k >= 0.0 => {
                self.contains_voxel(i as usize, j as usize, k as usize)
            }
            _ => false,
        }
    }

    /// True when any of the (up to 8) voxels of the grid cell holding `p` is body: the mask
    /// dilated by up to one voxel. A surface vertex lies on an edge between two voxel
    /// centres, one of them inside the surface; this test calls it "in the body" when that
    /// voxel, or a neighbour across the cell, is body.
    pub fn touches(&self, p: [f64; 3]) -> bool {
        let q = self.to_voxel(p);
        if !q.iter().all(|c| c.is_finite()) {
            return false;
        }
        let lo = q.map(|c| c.floor());
        for dk in 0..2 {
            for dj in 0..2 {
                for di in 0..2 {
                    let (i, j, k) = (lo[0] + di as f64, lo[1] + dj as f64, lo[2] + dk as f64);
                    if i >= 0.0
                        && j >= 0.0
                        && k >= 0.0
                        && self.contains_voxel(i as usize, j as usize, k as usize)
                    {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// Largest 6-connected component of `FOREGROUND` voxels, holes filled. Returns 1/0 per voxel.
fn fill(dims: [usize; 3], mut state: Vec<u8>) -> Vec<u8> {
    let mut stack: Vec<usize> = Vec::new();
    // 1. Size of every component, flooding each once (FOREGROUND -> SEEN).
    let mut best: Option<(usize, usize)> = None; // (seed, size)
    for seed in 0..state.len() {
        if state[seed] != FOREGROUND {
            continue;
        }
        let size = flood(dims, &mut state, &mut stack, seed, FOREGROUND, SEEN);
        if best.is_none_or(|(_, s)| size > s) {
            best = Some((seed, size));
        }
    }
    let Some((seed, _)) = best else {
        return vec![0; state.len()];
    };
    // 2. The largest again (SEEN -> LARGEST).
    flood(dims, &mut state, &mut stack, seed, SEEN, LARGEST);
    // 3. Everything not LARGEST and reachable from the border is outside.
    for v in &mut state {
        if *v != LARGEST {
            *v = OUT;
        }
    }
    let [nx, ny, nz] = dims;
    let idx = |i: usize, j: usize, k: usize| i + nx * (j + ny * k);
    let mut border = |i: usize, j: usize, k: usize, state: &mut Vec<u8>| {
        let p = idx(i, j, k);
        if state[p] == OUT {
            flood(dims, state, &mut stack, p, OUT, OUTSIDE);
        }
    };
    for k in 0..nz {
        for j in 0..ny {
            if k == 0 || j == 0 || k + 1 == nz || j + 1 == ny {
                for i in 0..nx {
                    border(i, j, k, &mut state);
                }
            } else {
                border(0, j, k, &mut state);
                border(nx - 1, j, k, &mut state);
            }
        }
    }
    state.into_iter().map(|v| u8::from(v != OUTSIDE)).collect()
}

/// Scanline flood of the 6-connected region of `from` voxels around `seed`, marking them
/// `to`; returns how many were marked. Each popped seed is grown into a whole run along x
/// (marked with one `fill`), and the four neighbouring rows (y +-1, z +-1) are scanned over
/// the run's span, pushing one seed per run of `from` voxels found there: a few stack
/// entries and index divisions per run instead of per voxel. `stack` is reused between calls.
fn flood(
    dims: [usize; 3],
    state: &mut [u8],
    stack: &mut Vec<usize>,
    seed: usize,
    from: u8,
    to: u8,
) -> usize {
    let [nx, ny, nz] = dims;
    let plane = nx * ny;
    stack.clear();
    stack.push(seed);
    let mut count = 0usize;
    while let Some(p) = stack.pop() {
        if state[p] != from {
            continue;
        }
        let row = p - p % nx;
        let (mut lo, mut hi) = (p, p);
        while lo > row && state[lo - 1] == from {
            lo -= 1;
        }
        while hi + 1 < row + nx && state[hi + 1] == from {
            hi += 1;
        }
        state[lo..=hi].fill(to);
        count += hi - lo + 1;
        let j = (row / nx) % ny;
        let k = row / plane;
        let (x0, x1) = (lo - row, hi - row);
        let mut scan = |other_row: usize, state: &[u8]| {
            let mut in_run = false;
            let start = other_row + x0;
            for (q, &v) in state[start..=other_row + x1].iter().enumerate() {
                if v == from {
                    if !in_run {
                        stack.push(start + q);
                        in_run = true;
                    }
                } else {
                    in_run = false;
                }
            }
        };
        if j > 0 {
            scan(row - nx, state);
        }
        if j + 1 < ny {
            scan(row + nx, state);
        }
        if k > 0 {
            scan(row - plane, state);
        }
        if k + 1 < nz {
            scan(row + plane, state);
        }
    }
    count
}

/// Inverse of the affine's 3x3 part and its origin column; a singular affine gives an
/// all-NaN inverse, so that no point is in the body.
fn invert(a: &super::Affine) -> ([[f64; 3]; 3], [f64; 3]) {
    let m = |r: usize, c: usize| a[r][c];
    let det = m(0, 0) * (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1))
        - m(0, 1) * (m(1, 0) * m(2, 2) - m(1, 2) * m(2, 0))
        + m(0, 2) * (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0));
    let origin = [a[0][3], a[1][3], a[2][3]];
    if det == 0.0 || !det.is_finite() {
        return ([[f64::NAN; 3]; 3], origin);
    }
    let inv = [
        [
            (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) / det,
            (m(0, 2) * m(2, 1) - m(0, 1) * m(2, 2)) / det,
            (m(0, 1) * m(1, 2) - m(0, 2) * m(1, 1)) / det,
        ],
        [
            (m(1, 2) * m(2, 0) - m(1, 0) * m(2, 2)) / det,
            (m(0, 0) * m(2, 2) - m(0, 2) * m(2, 0)) / det,
            (m(0, 2) * m(1, 0) - m(0, 0) * m(1, 2)) / det,
        ],
        [
            (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0)) / det,
            (m(0, 1) * m(2, 0) - m(0, 0) * m(2, 1)) / det,
            (m(0, 0) * m(1, 1) - m(0, 1) * m(1, 0)) / det,
        ],
    ];
    (inv, origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Rescale;

    fn vol(dims: [usize; 3], v: Vec<i16>) -> Volume {
        Volume {
            dims,
            voxels: Voxels::I16(v),
            rescale: Rescale {
                slope: 1.0,
                intercept: -1024.0,
            },
            affine: [
                [2.0, 0.0, 0.0, -10.0],
                [0.0, 1.0, 0.0, 5.0],
                [0.0, 0.0, 3.0, 0.0],
            ],
            spacing: [2.0, 1.0, 3.0],
            study_instance_uid: "1".into(),
            series_instance_uid: "2".into(),
            frame_of_reference_uid: None,
            modality: "CT".into(),
            sources: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// A hollow box (tissue walls, air inside) plus a separate small blob: the body is the
    /// box with its cavity filled; the blob is not body.
    #[test]
    fn largest_component_with_holes_filled() {
        let n = 12;
        let air = -1000 + 1024;
        let tissue = 40 + 1024;
        let mut v = vec![air as i16; n * n * n];
        let at = |i: usize, j: usize, k: usize| i + n * (j + n * k);
        for k in 2..9 {
            for j in 2..9 {
                for i in 2..9 {
                    let wall = [i, j, k].iter().any(|&c| c == 2 || c == 8);
                    if wall {
                        v[at(i, j, k)] = tissue as i16;
                    }
                }
            }
        }
        v[at(10, 10, 10)] = tissue as i16;
        let m = BodyMask::of(&vol([n, n, n], v));
        assert_eq!(m.voxels(), 7 * 7 * 7);
        assert!(m.contains_voxel(5, 5, 5), "the cavity is filled");
        assert!(m.contains_voxel(2, 2, 2));
        assert!(!m.contains_voxel(10, 10, 10), "the blob is not the body");
        assert!(!m.contains_voxel(1, 5, 5));
        assert_eq!(m.volume_mm3(), 343.0 * 6.0);
        // Voxel (5, 5, 5) is at patient (-10 + 10, 5 + 5, 15).
        assert!(m.contains([0.0, 10.0, 15.0]));
        assert!(!m.contains([-10.0, 5.0, 0.0]));
        assert!(!m.contains([-1000.0, 5.0, 0.0]));
        // Voxel (1, 5, 5) is not body but touches (2, 5, 5) across its cell.
        assert!(m.touches([-10.0 + 2.0 * 1.5, 10.0, 15.0]));
        assert!(!m.touches([-10.0 + 2.0 * 0.5, 10.0, 15.0]));
    }

    #[test]
    fn a_cavity_open_to_the_border_stays_outside() {
        // A tube along z through the whole volume: its lumen reaches the border.
        let (nx, ny, nz) = (9, 9, 5);
        let mut v = vec![0i16; nx * ny * nz];
        for k in 0..nz {
            for j in 2..7 {
                for i in 2..7 {
                    if i == 2 || i == 6 || j == 2 || j == 6 {
                        v[i + nx * (j + ny * k)] = 1100;
                    }
                }
            }
        }
        let m = BodyMask::of(&vol([nx, ny, nz], v));
        assert_eq!(m.voxels(), 16 * nz);
        assert!(!m.contains_voxel(4, 4, 2));
    }

    #[test]
    fn nothing_at_the_threshold_gives_an_empty_body() {
        let m = BodyMask::of(&vol([3, 3, 3], vec![0; 27]));
        assert_eq!(m.voxels(), 0);
        assert!(!m.contains([0.0; 3]));
    }
}
