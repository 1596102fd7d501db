//! Distances between surfaces, for validation and for comparing meshes of
//! the same anatomy (e.g. an oblique acquisition against an axial one).
//!
//! Method: vertex-to-surface distance (the sampled one-sided Hausdorff
//! distance of Aspert, Santa-Cruz & Ebrahimi 2002, "MESH: Measuring errors
//! between surfaces using the Hausdorff distance", using vertices as
//! samples). The exact closest point on a triangle uses the Voronoi-region
//! test described in C. Ericson 2005, "Real-Time Collision Detection", §5.1.5.
//! Candidate triangles come from a bounding volume hierarchy (median split
//! of triangle centroids, Ericson 2005 ch. 6), searched nearest-box first
//! and pruned by the best distance found so far.
//!
//! Why: tests need an objective geometric error in millimetres (against an
//! analytic surface or another mesh), and it must stay fast enough
//! (100k × 100k triangles well under a second) to be used in CI.

use rayon::prelude::*;

use super::Mesh;
use super::metrics::{dot, sub};

/// Distance statistics in mm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistanceStats {
    /// Mean distance, mm.
    pub mean: f64,
    /// Maximum distance, mm.
    pub max: f64,
    /// Root mean square distance, mm.
    pub rms: f64,
}

impl DistanceStats {
    fn from_samples(d: &[f64]) -> Self {
        if d.is_empty() {
            return DistanceStats {
                mean: 0.0,
                max: 0.0,
                rms: 0.0,
            };
        }
        let n = d.len() as f64;
        let mut sum = 0.0;
        let mut sq = 0.0;
        let mut max = 0.0f64;
        for &x in d {
            sum += x;
            sq += x * x;
            max = max.max(x);
        }
        DistanceStats {
            mean: sum / n,
            max,
            rms: (sq / n).sqrt(),
        }
    }
}

fn p64(v: [f32; 3]) -> [f64; 3] {
    [f64::from(v[0]), f64::from(v[1]), f64::from(v[2])]
}

/// Vertices referenced by at least one valid triangle, in index order.
fn used_vertices(m: &Mesh) -> Vec<[f64; 3]> {
    let mut used = vec![false; m.vertices.len()];
    for t in m.valid_triangles() {
        for i in t {
            used[i as usize] = true;
        }
    }
    m.vertices
        .iter()
        .zip(&used)
        .filter(|&(_, &u)| u)
        .map(|(&v, _)| p64(v))
        .collect()
}

/// Squared distance from `p` to triangle (a, b, c) (Ericson 2005, §5.1.5).
fn point_triangle_dist2(p: [f64; 3], a: [f64; 3], b: [f64; 3], c: [f64; 3]) -> f64 {
    let ab = sub(b, a);
    let ac = sub(c, a);
    let ap = sub(p, a);
    let d2 = |q: [f64; 3]| {
        let d = sub(p, q);
        dot(d, d)
    };
    let lerp =
        |o: [f64; 3], e: [f64; 3], t: f64| [o[0] + t * e[0], o[1] + t * e[1], o[2] + t * e[2]];
    let d1 = dot(ab, ap);
    let d2v = dot(ac, ap);
    if d1 <= 0.0 && d2v <= 0.0 {
        return d2(a);
    }
    let bp = sub(p, b);
    let d3 = dot(ab, bp);
    let d4 = dot(ac, bp);
    if d3 >= 0.0 && d4 <= d3 {
        return d2(b);
    }
    let vc = d1 * d4 - d3 * d2v;
    if vc <= 0.0 && d1 >= 0.0 && d3 <= 0.0 {
        return d2(lerp(a, ab, d1 / (d1 - d3)));
    }
    let cp = sub(p, c);
    let d5 = dot(ab, cp);
    let d6 = dot(ac, cp);
    if d6 >= 0.0 && d5 <= d6 {
        return d2(c);
    }
    let vb = d5 * d2v - d1 * d6;
    if vb <= 0.0 && d2v >= 0.0 && d6 <= 0.0 {
        return d2(lerp(a, ac, d2v / (d2v - d6)));
    }
    let va = d3 * d6 - d5 * d4;
    if va <= 0.0 && (d4 - d3) >= 0.0 && (d5 - d6) >= 0.0 {
        let bc = sub(c, b);
        return d2(lerp(b, bc, (d4 - d3) / ((d4 - d3) + (d5 - d6))));
    }
    let denom = va + vb + vc;
    if denom.abs() < f64::MIN_POSITIVE {
        // Degenerate (zero-area) triangle: nearest of its three edges' ends.
        return d2(a).min(d2(b)).min(d2(c));
    }
    let v = vb / denom;
    let w = vc / denom;
    d2([
        a[0] + ab[0] * v + ac[0] * w,
        a[1] + ab[1] * v + ac[1] * w,
        a[2] + ab[2] * v + ac[2] * w,
    ])
}

/// Leaf size of the triangle BVH.
const LEAF: usize = 4;

/// Node of the bounding volume hierarchy: a box and either two children
/// (`count == 0`, children at `first` and `first + 1`) or a leaf with
/// `count` triangles starting at `first` in the permuted triangle order.
#[derive(Clone, Copy)]
struct Node {
    lo: [f64; 3],
    hi: [f64; 3],
    first: u32,
    count: u32,
}

/// Bounding volume hierarchy over triangles (median split on the longest
/// centroid axis) for nearest-triangle queries.
struct Bvh {
    tris: Vec<[[f64; 3]; 3]>,
    nodes: Vec<Node>,
}

impl Bvh {
    fn new(m: &Mesh) -> Option<Self> {
        let mut tris: Vec<[[f64; 3]; 3]> = m
            .valid_triangles()
            .map(|t| t.map(|i| p64(m.vertices[i as usize])))
            .filter(|t| t.iter().flatten().all(|c| c.is_finite()))
            .collect();
        if tris.is_empty() || tris.len() > u32::MAX as usize / 2 {
            return None;
        }
        // Partition compact (centroid, triangle) records in place; node
        // boxes are filled bottom-up afterwards. This keeps the O(n log n)
        // part of the build on 16-byte records.
        let mut items: Vec<([f32; 3], u32)> = tris
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let c = std::array::from_fn(|a| ((t[0][a] + t[1][a] + t[2][a]) / 3.0) as f32);
                (c, i as u32)
            })
            .collect();
        let empty = Node {
            lo: [f64::INFINITY; 3],
            hi: [f64::NEG_INFINITY; 3],
            first: 0,
            count: 0,
        };
        let mut nodes = vec![empty];
        // (node index, start, end) still to be split.
        let mut todo = vec![(0usize, 0usize, items.len())];
        while let Some((ni, s, e)) = todo.pop() {
            if e - s <= LEAF {
                nodes[ni].first = s as u32;
                nodes[ni].count = (e - s) as u32;
                continue;
            }
            let mut clo = [f32::INFINITY; 3];
            let mut chi = [f32::NEG_INFINITY; 3];
            for (c, _) in &items[s..e] {
                for a in 0..3 {
                    clo[a] = clo[a].min(c[a]);
                    chi[a] = chi[a].max(c[a]);
                }
            }
            let ext = [chi[0] - clo[0], chi[1] - clo[1], chi[2] - clo[2]];
            let axis = if ext[0] >= ext[1] && ext[0] >= ext[2] {
                0
            } else if ext[1] >= ext[2] {
                1
            } else {
                2
            };
            let mid = s + (e - s) / 2;
            items[s..e].select_nth_unstable_by(mid - s, |x, y| x.0[axis].total_cmp(&y.0[axis]));
            let left = nodes.len();
            nodes.push(empty);
            nodes.push(empty);
            nodes[ni].first = left as u32;
            todo.push((left, s, mid));
            todo.push((left + 1, mid, e));
        }
        // Triangles in leaf order for locality.
        tris = items.iter().map(|&(_, i)| tris[i as usize]).collect();
        // Children always come after their parent: fill boxes in reverse.
        for ni in (0..nodes.len()).rev() {
            let n = nodes[ni];
            let (mut lo, mut hi) = (n.lo, n.hi);
            if n.count > 0 {
                let s = n.first as usize;
                for t in &tris[s..s + n.count as usize] {
                    for p in t {
                        for a in 0..3 {
                            lo[a] = lo[a].min(p[a]);
                            hi[a] = hi[a].max(p[a]);
                        }
                    }
                }
            } else {
                for child in [&nodes[n.first as usize], &nodes[n.first as usize + 1]] {
                    for a in 0..3 {
                        lo[a] = lo[a].min(child.lo[a]);
                        hi[a] = hi[a].max(child.hi[a]);
                    }
                }
            }
            nodes[ni].lo = lo;
            nodes[ni].hi = hi;
        }
        Some(Bvh { tris, nodes })
    }

    /// Squared distance from `p` to the box of node `n`.
    #[inline]
    fn box_dist2(n: &Node, p: [f64; 3]) -> f64 {
        let mut s = 0.0;
        for (a, &x) in p.iter().enumerate() {
            let e = (n.lo[a] - x).max(x - n.hi[a]).max(0.0);
            s += e * e;
        }
        s
    }

    /// Distance from `p` to the nearest triangle.
    fn nearest(&self, p: [f64; 3]) -> f64 {
        if !p.iter().all(|c| c.is_finite()) {
            return f64::INFINITY;
        }
        let mut best = f64::INFINITY;
        let mut stack: [(u32, f64); 64] = [(0, 0.0); 64];
        let mut sp = 1;
        while sp > 0 {
            sp -= 1;
            let (ni, d) = stack[sp];
            if d >= best {
                continue;
            }
            let n = &self.nodes[ni as usize];
            if n.count > 0 {
                let s = n.first as usize;
                for t in &self.tris[s..s + n.count as usize] {
                    best = best.min(point_triangle_dist2(p, t[0], t[1], t[2]));
                }
                continue;
            }
            let (a, b) = (n.first, n.first + 1);
            let da = Self::box_dist2(&self.nodes[a as usize], p);
            let db = Self::box_dist2(&self.nodes[b as usize], p);
            // Push the farther child first so the nearer one is searched first.
            let (near, far) = if da <= db {
                ((a, da), (b, db))
            } else {
                ((b, db), (a, da))
            };
            if sp + 2 > stack.len() {
                // Cannot happen for a median-split tree of < 2^32 leaves;
                // fall back to exhaustive search rather than overflow.
                return self.brute(p);
            }
            if far.1 < best {
                stack[sp] = far;
                sp += 1;
            }
            if near.1 < best {
                stack[sp] = near;
                sp += 1;
            }
        }
        best.sqrt()
    }

    fn brute(&self, p: [f64; 3]) -> f64 {
        self.tris
            .iter()
            .map(|t| point_triangle_dist2(p, t[0], t[1], t[2]))
            .fold(f64::INFINITY, f64::min)
            .sqrt()
    }
}

/// Distances from every vertex of `a` (used by a triangle) to the surface
/// of `b`, in mm. If `b` has no triangles the distances are infinite.
pub fn one_sided_distance(a: &Mesh, b: &Mesh) -> DistanceStats {
    let pts = used_vertices(a);
    let Some(bvh) = Bvh::new(b) else {
        let inf = if pts.is_empty() { 0.0 } else { f64::INFINITY };
        return DistanceStats {
            mean: inf,
            max: inf,
            rms: inf,
        };
    };
    let d: Vec<f64> = pts
        .par_iter()
        .with_min_len(256)
        .map(|&p| bvh.nearest(p))
        .collect();
    DistanceStats::from_samples(&d)
}

/// Symmetric vertex-to-nearest-triangle distance between `a` and `b`, in mm:
/// `mean` is the average of the two one-sided means, `max` the larger
/// one-sided maximum (a sampled Hausdorff distance), `rms` the root of the
/// averaged mean squares. Identical meshes give 0.
pub fn surface_distance(a: &Mesh, b: &Mesh) -> DistanceStats {
    let (ab, ba) = rayon::join(|| one_sided_distance(a, b), || one_sided_distance(b, a));
    DistanceStats {
        mean: 0.5 * (ab.mean + ba.mean),
        max: ab.max.max(ba.max),
        rms: (0.5 * (ab.rms * ab.rms + ba.rms * ba.rms)).sqrt(),
    }
}

/// Statistics of `|f(v)|` over the vertices of `mesh` used by a triangle,
/// where `f` returns the (signed or unsigned, exact or first-order) distance
/// in mm from a point in mm to an analytic surface.
pub fn distance_to_fn(mesh: &Mesh, f: impl Fn([f64; 3]) -> f64 + Sync) -> DistanceStats {
    let pts = used_vertices(mesh);
    let d: Vec<f64> = pts
        .par_iter()
        .with_min_len(1024)
        .map(|&p| f(p).abs())
        .collect();
    DistanceStats::from_samples(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_triangle_regions() {
        let a = [0.0, 0.0, 0.0];
        let b = [1.0, 0.0, 0.0];
        let c = [0.0, 1.0, 0.0];
        let d = |p| point_triangle_dist2(p, a, b, c).sqrt();
        assert!((d([0.2, 0.2, 2.0]) - 2.0).abs() < 1e-12); // face
        assert!((d([-1.0, -1.0, 0.0]) - 2f64.sqrt()).abs() < 1e-12); // vertex a
        assert!((d([0.5, -3.0, 0.0]) - 3.0).abs() < 1e-12); // edge ab
        assert!((d([1.0, 1.0, 0.0]) - 0.5f64.sqrt()).abs() < 1e-12); // edge bc
        assert!((d([3.0, 0.0, 4.0]) - 20f64.sqrt()).abs() < 1e-12); // vertex b
    }
}
