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
//!
//! Taubin's filter still shrinks a little where the surface is curved at the
//! scale of a voxel: on a 1.9 x 1.9 x 3 mm CT head at the bone threshold, 10
//! passes took 1.06 % of the bone volume, mostly by thinning thin bone. So
//! after the passes every closed connected component gets its enclosed volume
//! back by moving its vertices along their normals by one common offset
//! (solved by Newton steps on `V(d) = V_before`, `dV/dd` = the component's
//! area): a uniform offset undoes a uniform shrink without distorting the
//! shape, and works for hollow shells (a skull's inner and outer surfaces both
//! move outward along their own normals), where scaling about a centroid would not.
//! The offset is a few hundredths of a millimetre on clinical data.

use rayon::prelude::*;

use super::Mesh;
use super::metrics::{cross, dot, norm, sub};

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

/// Smooths `mesh` in place with Taubin's λ|μ filter, then restores the
/// enclosed volume of every closed connected component (see the module
/// documentation). Connectivity is not changed; positions stay in mm.
/// Vertices without neighbours or on a boundary edge do not move, nor does
/// any vertex of a component that is not closed.
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
    let volumes = ComponentVolumes::new(mesh, &boundary, &cur);
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
    volumes.restore(&mut cur);
    for (dst, src) in mesh.vertices.iter_mut().zip(&cur) {
        *dst = [src[0] as f32, src[1] as f32, src[2] as f32];
    }
}

/// Enclosed volume of each closed connected component before smoothing, to restore after.
struct ComponentVolumes {
    /// Valid, non-degenerate triangles of closed components, with their component.
    tris: Vec<([u32; 3], usize)>,
    /// Component of each vertex (`usize::MAX`: unused or in an open component).
    vertex: Vec<usize>,
    /// Signed volume before, per component (0 for open ones, which are left alone).
    target: Vec<f64>,
}

/// Newton steps of the volume correction; the second already leaves < 1e-6 relative error.
const RESTORE_STEPS: usize = 3;

impl ComponentVolumes {
    fn new(mesh: &Mesh, boundary: &[bool], pos: &[[f64; 3]]) -> Self {
        let labels = super::clean::connected_components(mesh);
        let count = labels.iter().max().map_or(0, |m| m + 1);
        let mut closed = vec![true; count];
        let nv = mesh.vertices.len();
        let mut vertex = vec![usize::MAX; nv];
        for (t, &c) in mesh.indices.chunks_exact(3).zip(&labels) {
            for &i in t {
                match boundary.get(i as usize) {
                    Some(&b) => {
                        closed[c] &= !b;
                        vertex[i as usize] = c;
                    }
                    None => closed[c] = false,
                }
            }
        }
        for v in &mut vertex {
            if *v != usize::MAX && !closed[*v] {
                *v = usize::MAX;
            }
        }
        let tris: Vec<([u32; 3], usize)> = mesh
            .valid_triangles()
            .zip(&labels)
            .filter(|(t, c)| closed[**c] && t[0] != t[1] && t[1] != t[2] && t[0] != t[2])
            .map(|(t, &c)| (t, c))
            .collect();
        let mut out = ComponentVolumes {
            tris,
            vertex,
            target: vec![0.0; count],
        };
        out.target = out.volumes(pos);
        out
    }

    fn volumes(&self, pos: &[[f64; 3]]) -> Vec<f64> {
        let mut v = vec![0.0; self.target.len()];
        for &(t, c) in &self.tris {
            let (a, b, d) = (pos[t[0] as usize], pos[t[1] as usize], pos[t[2] as usize]);
            v[c] += dot(a, cross(b, d)) / 6.0;
        }
        v
    }

    /// Moves each closed component along its vertex normals until it encloses its volume
    /// before smoothing again.
    fn restore(&self, pos: &mut [[f64; 3]]) {
        if self.tris.is_empty() {
            return;
        }
        let mut grad = vec![[0.0f64; 3]; pos.len()];
        for _ in 0..RESTORE_STEPS {
            let now = self.volumes(pos);
            // dV/dp_v = sum over the faces around v of (face normal * area) / 3.
            grad.iter_mut().for_each(|g| *g = [0.0; 3]);
            for &(t, _) in &self.tris {
                let (a, b, d) = (pos[t[0] as usize], pos[t[1] as usize], pos[t[2] as usize]);
                let n = cross(sub(b, a), sub(d, a));
                for &i in &t {
                    let g = &mut grad[i as usize];
                    for k in 0..3 {
                        g[k] += n[k] / 6.0;
                    }
                }
            }
            // dV/dd for a unit-normal offset d: the sum of |grad| over the component.
            let mut rate = vec![0.0f64; now.len()];
            for (g, &c) in grad.iter().zip(&self.vertex) {
                if let Some(r) = rate.get_mut(c) {
                    *r += norm(*g);
                }
            }
            let offset: Vec<f64> = (0..now.len())
                .map(|c| {
                    let d = (self.target[c] - now[c]) / rate[c];
                    if self.target[c] != 0.0 && d.is_finite() {
                        d
                    } else {
                        0.0
                    }
                })
                .collect();
            for ((p, g), &c) in pos.iter_mut().zip(&grad).zip(&self.vertex) {
                let (Some(&d), len) = (offset.get(c), norm(*g)) else {
                    continue;
                };
                if len > 0.0 {
                    for k in 0..3 {
                        p[k] += d * g[k] / len;
                    }
                }
            }
        }
    }
}
