//! Shrink-free surface smoothing.
//!
//! Method: Taubin's λ|μ algorithm (G. Taubin 1995, "A signal processing
//! approach to fair surface design", SIGGRAPH '95): alternate a Laplacian
//! step with positive factor λ and one with negative factor μ (|μ| > λ),
//! using the uniform ("umbrella") Laplacian `L(p) = mean(neighbours) - p`.
//! The pair acts as a low-pass filter with pass-band frequency
//! `k_PB = 1/λ + 1/μ`, so low-frequency shape (and hence volume) is kept
//! while the voxel staircase of marching cubes is removed.
//!
//! Why: plain Laplacian smoothing shrinks closed surfaces at every step,
//! which would bias the volumes this product reports. Vertices on a boundary
//! edge (open meshes only) are held fixed so rims do not retract.

use rayon::prelude::*;

use super::Mesh;

/// Parameters of [`taubin_smooth`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaubinOptions {
    /// Number of λ|μ pairs.
    pub iterations: u32,
    /// Positive shrink factor λ, typically 0.3..0.7.
    pub lambda: f32,
    /// Negative inflate factor μ, with |μ| slightly larger than λ.
    pub mu: f32,
}

impl Default for TaubinOptions {
    /// 10 iterations, λ = 0.5, μ = -0.53 (k_PB ≈ 0.11).
    fn default() -> Self {
        TaubinOptions {
            iterations: 10,
            lambda: 0.5,
            mu: -0.53,
        }
    }
}

/// Unique neighbours per vertex (CSR) and a per-vertex "on a boundary edge"
/// flag, from valid, non-degenerate triangles.
fn neighbours(mesh: &Mesh) -> (Vec<usize>, Vec<u32>, Vec<bool>) {
    let nv = mesh.vertices.len();
    let valid: Vec<[u32; 3]> = mesh
        .valid_triangles()
        .filter(|t| t[0] != t[1] && t[1] != t[2] && t[0] != t[2])
        .collect();
    let mut offsets = vec![0usize; nv + 1];
    for t in &valid {
        for &v in t {
            offsets[v as usize + 1] += 2;
        }
    }
    for v in 0..nv {
        offsets[v + 1] += offsets[v];
    }
    let mut fill = offsets.clone();
    let mut raw = vec![0u32; offsets[nv]];
    for t in &valid {
        for k in 0..3 {
            let v = t[k] as usize;
            raw[fill[v]] = t[(k + 1) % 3];
            raw[fill[v] + 1] = t[(k + 2) % 3];
            fill[v] += 2;
        }
    }
    // Sort each list; a neighbour seen once lies across a boundary edge.
    let mut boundary = vec![false; nv];
    let mut out_off = vec![0usize; nv + 1];
    let mut out = Vec::with_capacity(raw.len() / 2);
    for v in 0..nv {
        let list = &mut raw[offsets[v]..offsets[v + 1]];
        list.sort_unstable();
        let mut g = 0;
        while g < list.len() {
            let mut e = g;
            while e < list.len() && list[e] == list[g] {
                e += 1;
            }
            if e - g == 1 {
                boundary[v] = true;
            }
            out.push(list[g]);
            g = e;
        }
        out_off[v + 1] = out.len();
    }
    (out_off, out, boundary)
}

/// Smooths `mesh` in place with Taubin's λ|μ filter. Connectivity is not
/// changed; positions stay in mm. Vertices without neighbours or on a
/// boundary edge do not move.
pub fn taubin_smooth(mesh: &mut Mesh, opts: &TaubinOptions) {
    if opts.iterations == 0 || mesh.vertices.is_empty() {
        return;
    }
    let (off, nb, boundary) = neighbours(mesh);
    let mut cur: Vec<[f64; 3]> = mesh
        .vertices
        .iter()
        .map(|p| [f64::from(p[0]), f64::from(p[1]), f64::from(p[2])])
        .collect();
    let mut next = cur.clone();
    let factors = [f64::from(opts.lambda), f64::from(opts.mu)];
    for _ in 0..opts.iterations {
        for &f in &factors {
            next.par_iter_mut()
                .with_min_len(4096)
                .enumerate()
                .for_each(|(v, out)| {
                    let list = &nb[off[v]..off[v + 1]];
                    let p = cur[v];
                    if list.is_empty() || boundary[v] {
                        *out = p;
                        return;
                    }
                    let mut s = [0.0f64; 3];
                    for &w in list {
                        let q = cur[w as usize];
                        s[0] += q[0];
                        s[1] += q[1];
                        s[2] += q[2];
                    }
                    let inv = 1.0 / list.len() as f64;
                    for a in 0..3 {
                        out[a] = p[a] + f * (s[a] * inv - p[a]);
                    }
                });
            std::mem::swap(&mut cur, &mut next);
        }
    }
    for (dst, src) in mesh.vertices.iter_mut().zip(&cur) {
        *dst = [src[0] as f32, src[1] as f32, src[2] as f32];
    }
}
