//! Size, volume and topology checks of a mesh.
//!
//! Method: area and enclosed volume by the divergence theorem (signed
//! tetrahedra against a reference point, see e.g. Zhang & Chen 2001,
//! "Efficient feature extraction for 2D/3D objects in mesh representation");
//! topology from per-vertex triangle fans: an edge is manifold when it has
//! at most two triangles, a vertex when the triangles around it form one fan
//! (its link is a single path or cycle).
//!
//! Why here: every stage of the pipeline (extraction, cleanup, smoothing,
//! decimation, file round trips) is tested and reported through these
//! numbers, so they are computed exactly from the index structure, with
//! deterministic summation order (fixed chunks) regardless of thread count.

use rayon::prelude::*;

use super::Mesh;

/// Summary measurements of a mesh. Lengths in mm, areas in mm², volumes in
/// mm³ (given vertices in mm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeshMetrics {
    /// Number of triangles (complete index triples).
    pub triangles: usize,
    /// Number of vertices in the vertex array (used or not).
    pub vertices: usize,
    /// Total surface area in mm².
    pub area_mm2: f64,
    /// Signed enclosed volume in mm³: positive for a closed mesh with
    /// outward (counter-clockwise seen from outside) winding.
    pub volume_mm3: f64,
    /// Triangles with zero area: two corners at the same position (same index or not), or
    /// three collinear corners (exactly, in the stored `f32` coordinates). Marching cubes
    /// makes them when a sample equals the iso value; merged by position (as every STL
    /// reader does) they are non-manifold edges, so they make the mesh neither
    /// [`watertight`](Self::watertight) nor [`manifold`](Self::manifold).
    pub degenerate_triangles: usize,
    /// Every edge belongs to exactly two triangles (no boundary), all
    /// triangles are valid (indices in range, three distinct vertices), and
    /// none is degenerate.
    pub watertight: bool,
    /// Edge-manifold (no edge in more than two triangles) and
    /// vertex-manifold (the triangles around each vertex form one fan), with
    /// all triangles valid and none degenerate.
    pub manifold: bool,
    /// Every edge shared by two triangles is traversed in opposite
    /// directions by them (consistent winding).
    pub consistently_oriented: bool,
    /// Minimum corner of the axis-aligned bounding box of all vertices, mm
    /// (zeros for an empty vertex array).
    pub bbox_min: [f64; 3],
    /// Maximum corner of the bounding box, mm.
    pub bbox_max: [f64; 3],
}

/// Triangles per chunk for deterministic parallel sums.
const CHUNK: usize = 1 << 14;

/// Computes [`MeshMetrics`] of `mesh`. Triangles with out-of-range indices
/// are left out of area and volume and make the mesh neither watertight nor
/// manifold.
pub fn metrics(mesh: &Mesh) -> MeshMetrics {
    let nv = mesh.vertices.len();
    let tri_count = mesh.triangle_count();
    let (bbox_min, bbox_max) = bbox(&mesh.vertices);
    let origin = [
        0.5 * (bbox_min[0] + bbox_max[0]),
        0.5 * (bbox_min[1] + bbox_max[1]),
        0.5 * (bbox_min[2] + bbox_max[2]),
    ];

    let tris = &mesh.indices[..3 * tri_count];
    let partial: Vec<(f64, f64, bool, usize)> = tris
        .par_chunks(3 * CHUNK)
        .map(|chunk| {
            let mut area = 0.0;
            let mut vol = 0.0;
            let mut valid = true;
            let mut degenerate = 0usize;
            for t in chunk.chunks_exact(3) {
                if t.iter().any(|&i| i as usize >= nv) {
                    valid = false;
                    continue;
                }
                if t[0] == t[1] || t[1] == t[2] || t[0] == t[2] {
                    valid = false;
                }
                if is_degenerate(
                    mesh.vertices[t[0] as usize],
                    mesh.vertices[t[1] as usize],
                    mesh.vertices[t[2] as usize],
                ) {
                    degenerate += 1;
                }
                let p = |i: u32| {
                    let v = mesh.vertices[i as usize];
                    [
                        f64::from(v[0]) - origin[0],
                        f64::from(v[1]) - origin[1],
                        f64::from(v[2]) - origin[2],
                    ]
                };
                let (a, b, c) = (p(t[0]), p(t[1]), p(t[2]));
                let n = cross(sub(b, a), sub(c, a));
                area += 0.5 * norm(n);
                vol += dot(a, cross(b, c)) / 6.0;
            }
            (area, vol, valid, degenerate)
        })
        .collect();
    let mut area_mm2 = 0.0;
    let mut volume_mm3 = 0.0;
    let mut all_valid = true;
    let mut degenerate_triangles = 0;
    for (a, v, ok, d) in partial {
        area_mm2 += a;
        volume_mm3 += v;
        all_valid &= ok;
        degenerate_triangles += d;
    }

    let topo = if all_valid && degenerate_triangles == 0 {
        topology(nv, tris)
    } else {
        Topology {
            closed: false,
            manifold: false,
            oriented: false,
        }
    };

    MeshMetrics {
        triangles: tri_count,
        vertices: nv,
        area_mm2,
        volume_mm3,
        degenerate_triangles,
        watertight: topo.closed,
        manifold: topo.manifold,
        consistently_oriented: topo.oriented,
        bbox_min,
        bbox_max,
    }
}

/// Zero area: two equal positions, or a cross product of exactly zero. Edge vectors are
/// differences of `f32` coordinates taken in `f64`, where they are exact, so collinear
/// corners are recognised without a tolerance that would also catch thin but valid slivers.
pub(crate) fn is_degenerate(a: [f32; 3], b: [f32; 3], c: [f32; 3]) -> bool {
    if a == b || b == c || a == c {
        return true;
    }
    let f = |p: [f32; 3]| p.map(f64::from);
    let (a, b, c) = (f(a), f(b), f(c));
    cross(sub(b, a), sub(c, a)) == [0.0; 3]
}

fn bbox(v: &[[f32; 3]]) -> ([f64; 3], [f64; 3]) {
    if v.is_empty() {
        return ([0.0; 3], [0.0; 3]);
    }
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for p in v {
        for a in 0..3 {
            let x = f64::from(p[a]);
            lo[a] = lo[a].min(x);
            hi[a] = hi[a].max(x);
        }
    }
    (lo, hi)
}

struct Topology {
    closed: bool,
    manifold: bool,
    oriented: bool,
}

/// Per-vertex lists of incident corners (`3 * triangle + slot`), as CSR.
/// All indices must be `< nv`.
pub(crate) fn vertex_corners(nv: usize, tris: &[u32]) -> (Vec<usize>, Vec<u32>) {
    let mut offsets = vec![0usize; nv + 1];
    for &i in tris {
        offsets[i as usize + 1] += 1;
    }
    for v in 0..nv {
        offsets[v + 1] += offsets[v];
    }
    let mut fill = offsets.clone();
    let mut corners = vec![0u32; tris.len()];
    for (c, &i) in tris.iter().enumerate() {
        let slot = &mut fill[i as usize];
        corners[*slot] = c as u32;
        *slot += 1;
    }
    (offsets, corners)
}

/// (closed, manifold, oriented) of every vertex; `tris` must be valid (in range,
/// non-degenerate). The one per-vertex pass behind [`topology`] and [`defective_vertices`].
fn vertex_flag_list(nv: usize, tris: &[u32]) -> Vec<(bool, bool, bool)> {
    let (offsets, corners) = vertex_corners(nv, tris);
    (0..nv)
        .into_par_iter()
        .with_min_len(4096)
        .map_init(
            || (Vec::<(u32, bool)>::new(), Vec::<usize>::new()),
            |(link, parent), v| {
                let cs = &corners[offsets[v]..offsets[v + 1]];
                vertex_flags(cs, tris, link, parent)
            },
        )
        .collect()
}

/// Topology flags; `tris` must be valid (in range, non-degenerate).
fn topology(nv: usize, tris: &[u32]) -> Topology {
    let flags = vertex_flag_list(nv, tris);
    Topology {
        closed: flags.iter().all(|f| f.0),
        manifold: flags.iter().all(|f| f.1),
        oriented: flags.iter().all(|f| f.2),
    }
}

/// Vertices around which the surface is open, non-manifold or inconsistently wound;
/// `tris` must be valid (in range, non-degenerate). Used to steer simplification away from
/// collapses that broke the topology.
pub(crate) fn defective_vertices(nv: usize, tris: &[u32]) -> Vec<u32> {
    vertex_flag_list(nv, tris)
        .iter()
        .enumerate()
        .filter(|(_, (closed, manifold, oriented))| !(*closed && *manifold && *oriented))
        .map(|(v, _)| v as u32)
        .collect()
}

/// (closed, manifold, oriented) around vertex `v`.
fn vertex_flags(
    cs: &[u32],
    tris: &[u32],
    link: &mut Vec<(u32, bool)>,
    parent: &mut Vec<usize>,
) -> (bool, bool, bool) {
    if cs.is_empty() {
        return (true, true, true);
    }
    // (neighbour, outgoing?) for the two edges of each incident triangle.
    link.clear();
    for &c in cs {
        let t = (c / 3) as usize * 3;
        let k = (c % 3) as usize;
        link.push((tris[t + (k + 1) % 3], true));
        link.push((tris[t + (k + 2) % 3], false));
    }
    link.sort_unstable();
    let mut closed = true;
    let mut manifold = true;
    let mut oriented = true;
    let mut distinct = 0usize;
    let mut g = 0;
    while g < link.len() {
        let nb = link[g].0;
        let mut e = g;
        let mut outs = 0;
        while e < link.len() && link[e].0 == nb {
            outs += usize::from(link[e].1);
            e += 1;
        }
        let m = e - g;
        if m != 2 {
            closed = false;
        }
        if m > 2 {
            manifold = false;
        }
        if m == 2 && outs != 1 {
            oriented = false;
        }
        distinct += 1;
        g = e;
    }
    // Fans = connected components of the link graph (nodes: neighbours,
    // one link edge per incident triangle).
    let mut uniq: Vec<u32> = link.iter().map(|l| l.0).collect();
    uniq.dedup();
    debug_assert_eq!(uniq.len(), distinct);
    parent.clear();
    parent.extend(0..distinct);
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut components = distinct;
    for &c in cs {
        let t = (c / 3) as usize * 3;
        let k = (c % 3) as usize;
        let a = uniq.binary_search(&tris[t + (k + 1) % 3]).unwrap_or(0);
        let b = uniq.binary_search(&tris[t + (k + 2) % 3]).unwrap_or(0);
        let (ra, rb) = (find(parent, a), find(parent, b));
        if ra != rb {
            parent[ra] = rb;
            components -= 1;
        }
    }
    if components != 1 {
        manifold = false;
    }
    (closed, manifold, oriented)
}

pub(crate) fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tetra() -> Mesh {
        Mesh {
            vertices: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0],
            ],
            indices: vec![0, 2, 1, 0, 1, 3, 0, 3, 2, 1, 2, 3],
        }
    }

    #[test]
    fn tetrahedron() {
        let m = metrics(&tetra());
        assert!(m.watertight && m.manifold && m.consistently_oriented);
        assert!((m.volume_mm3 - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(m.triangles, 4);
    }

    #[test]
    fn open_and_flipped() {
        let mut t = tetra();
        t.indices.truncate(9);
        let m = metrics(&t);
        assert!(!m.watertight && m.manifold);
        let mut t = tetra();
        t.indices.swap(0, 1);
        assert!(!metrics(&t).consistently_oriented);
    }

    #[test]
    fn two_tetrahedra_sharing_a_vertex_are_not_vertex_manifold() {
        let mut m = tetra();
        let n = m.vertices.len() as u32;
        m.vertices
            .extend([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]);
        // Second tetra shares vertex 0 only.
        let b = [0, n, n + 1, n + 2];
        for t in [[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]] {
            m.indices.extend(t.iter().map(|&k| b[k]));
        }
        let r = metrics(&m);
        assert!(r.watertight);
        assert!(!r.manifold);
    }

    #[test]
    fn zero_area_triangles_are_counted_and_break_manifold() {
        // A closed tetrahedron with one corner moved onto the opposite edge: the faces
        // stay topologically closed, but face (1, 2, 3) has zero area.
        let mut t = tetra();
        t.vertices[3] = [0.5, 0.5, 0.0];
        assert!(metrics(&tetra()).manifold);
        let m = metrics(&t);
        assert_eq!(m.degenerate_triangles, 1, "{m:?}");
        assert!(!m.manifold && !m.watertight, "{m:?}");
        // Two corners at the same position under different indices.
        let mut t = tetra();
        t.vertices.push([0.0, 0.0, 1.0]);
        t.indices[5] = 4;
        let m = metrics(&t);
        assert_eq!(m.degenerate_triangles, 0);
        t.vertices[4] = t.vertices[1];
        let m = metrics(&t);
        assert_eq!(m.degenerate_triangles, 1, "{m:?}");
        assert!(!m.manifold && !m.watertight);
        assert_eq!(metrics(&tetra()).degenerate_triangles, 0);
    }

    #[test]
    fn out_of_range_index_is_reported_not_panicking() {
        let mut t = tetra();
        t.indices[0] = 99;
        let m = metrics(&t);
        assert!(!m.watertight && !m.manifold);
    }
}
