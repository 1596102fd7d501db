//! Marching-cubes case table, generated at compile time.
//!
//! Method: the cube-surface contour construction of marching cubes
//! (Lorensen & Cline 1987, "Marching Cubes: A High Resolution 3D Surface
//! Construction Algorithm", SIGGRAPH '87), with the face-ambiguity fix of
//! resolving every ambiguous face in one fixed way, as discussed by
//! Dürst 1988 ("Additional reference to marching cubes", Computer Graphics
//! 22(2)) and Nielson & Hamann 1991 ("The asymptotic decider"). Instead of a
//! hand-typed 256-entry table, this file *derives* the table with `const fn`
//! code so that its topological guarantees can be argued from the rule:
//!
//! 1. On each of the 6 cube faces, the iso-contour is a set of segments
//!    joining the crossed cube edges of that face. A face with two crossed
//!    edges has one segment. An ambiguous face (inside corners on one diagonal,
//!    outside corners on the other) always gets two segments that *separate
//!    the inside corners* (each segment cuts one inside corner off). The
//!    decision depends only on the four corner states of the face, so the two
//!    cells sharing a face always draw the same segments: the surface has no
//!    cracks.
//! 2. Segments are oriented so that, seen from outside the cube, the inside
//!    corners lie on the left; chaining them gives closed loops on the cube
//!    surface, every crossed edge lying on exactly one loop.
//! 3. Every loop is triangulated as a fan. The apex is chosen so that no fan
//!    diagonal joins two vertices that lie on a common cube face; such a
//!    diagonal would be the only kind of interior edge that the neighbouring
//!    cell could also produce. Hence every mesh edge is used by exactly two
//!    triangles, and the triangles around each vertex form a single disk.
//!
//! Corner numbering: corner `c` has offset `(c & 1, (c >> 1) & 1, (c >> 2) & 1)`
//! in (x, y, z) voxel index space; case bit `c` is set when that corner is
//! inside (value >= iso). Edge numbering: edge `e` runs along axis `e / 4`;
//! `r = e % 4` gives its offset in the two other axes (in increasing axis
//! order), `r & 1` for the first and `r >> 1` for the second. So edges 0..4 are
//! x-edges at (y, z) = (0,0), (1,0), (0,1), (1,1); edges 4..8 are y-edges at
//! (x, z); edges 8..12 are z-edges at (x, y).
//!
//! Triangles are listed counter-clockwise seen from outside (normal pointing
//! from inside to outside) in a right-handed index space.

/// Maximum number of triangles any case produces (checked at compile time).
pub(crate) const MAX_TRIS: usize = 8;

/// Per-case triangle lists, as edge ids.
pub(crate) struct CaseTable {
    /// Number of triangles for each of the 256 cases.
    pub count: [u8; 256],
    /// Edge ids, three per triangle, `count[case]` triangles used.
    pub tris: [[u8; 3 * MAX_TRIS]; 256],
}

/// Outward (counter-clockwise) triangles for a right-handed index-to-world map.
pub(crate) static TABLE_CCW: CaseTable = build(false);
/// Same triangles with reversed winding, used when the affine flips handedness.
pub(crate) static TABLE_CW: CaseTable = build(true);

const NONE: usize = usize::MAX;

const fn other_axes(a: usize) -> (usize, usize) {
    match a {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    }
}

/// Corners (low, high) of edge `e`.
pub(crate) const fn edge_corners(e: usize) -> (usize, usize) {
    let a = e / 4;
    let r = e % 4;
    let (b, c) = other_axes(a);
    let c0 = ((r & 1) << b) | (((r >> 1) & 1) << c);
    (c0, c0 | (1 << a))
}

/// Edge id joining two corners that differ in exactly one bit.
const fn edge_between(c0: usize, c1: usize) -> usize {
    let diff = c0 ^ c1;
    let a = if diff == 1 {
        0
    } else if diff == 2 {
        1
    } else if diff == 4 {
        2
    } else {
        panic!("corners are not adjacent")
    };
    let base = if c0 < c1 { c0 } else { c1 };
    let (b, c) = other_axes(a);
    let r = ((base >> b) & 1) | (((base >> c) & 1) << 1);
    a * 4 + r
}

/// Doubled coordinates of corner `c`.
const fn corner2(c: usize) -> [i32; 3] {
    [
        2 * (c & 1) as i32,
        2 * ((c >> 1) & 1) as i32,
        2 * ((c >> 2) & 1) as i32,
    ]
}

/// Doubled coordinates of the midpoint of edge `e`.
const fn edge_mid2(e: usize) -> [i32; 3] {
    let (c0, c1) = edge_corners(e);
    let a = corner2(c0);
    let b = corner2(c1);
    [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2, (a[2] + b[2]) / 2]
}

/// Face `f` is the face with axis `f / 2` at side `f % 2`.
const fn edge_on_face(e: usize, f: usize) -> bool {
    let fa = f / 2;
    let side = f % 2;
    if e / 4 == fa {
        return false;
    }
    let (c0, _) = edge_corners(e);
    ((c0 >> fa) & 1) == side
}

const fn share_face(e1: usize, e2: usize) -> bool {
    let mut f = 0;
    while f < 6 {
        if edge_on_face(e1, f) && edge_on_face(e2, f) {
            return true;
        }
        f += 1;
    }
    false
}

/// The four corners of face `f` in cyclic order.
const fn face_cycle(f: usize) -> [usize; 4] {
    let fa = f / 2;
    let side = f % 2;
    let (b, c) = other_axes(fa);
    let s = side << fa;
    [s, s | (1 << b), s | (1 << b) | (1 << c), s | (1 << c)]
}

const fn cross(a: [i32; 3], b: [i32; 3]) -> [i32; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

const fn dot(a: [i32; 3], b: [i32; 3]) -> i32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

const fn sub(a: [i32; 3], b: [i32; 3]) -> [i32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// Orients the segment between crossed edges `p` and `q` on face `f` so that
/// the inside corner `c_in` lies to the left when viewed from outside.
/// Returns (from, to).
const fn orient(f: usize, p: usize, q: usize, c_in: usize) -> (usize, usize) {
    let fa = f / 2;
    let sign = if f % 2 == 1 { 1 } else { -1 };
    let mut n = [0i32; 3];
    n[fa] = sign;
    let mp = edge_mid2(p);
    let d = sub(edge_mid2(q), mp);
    let side = dot(cross(n, d), sub(corner2(c_in), mp));
    if side < 0 {
        (p, q)
    } else if side > 0 {
        (q, p)
    } else {
        panic!("inside corner on the segment line")
    }
}

const fn link(next: &mut [usize; 12], incoming: &mut [u8; 12], seg: (usize, usize)) {
    if next[seg.0] != NONE {
        panic!("edge has two outgoing segments");
    }
    next[seg.0] = seg.1;
    incoming[seg.1] += 1;
}

const fn build(flip: bool) -> CaseTable {
    let mut table = CaseTable {
        count: [0; 256],
        tris: [[0; 3 * MAX_TRIS]; 256],
    };
    let mut case = 0usize;
    while case < 256 {
        let mut next = [NONE; 12];
        let mut incoming = [0u8; 12];
        let mut f = 0;
        while f < 6 {
            let q = face_cycle(f);
            let mut ins = [false; 4];
            let mut edges = [0usize; 4];
            let mut crossed = [false; 4];
            let mut k = 0;
            while k < 4 {
                ins[k] = (case >> q[k]) & 1 == 1;
                k += 1;
            }
            let mut ncross = 0;
            k = 0;
            while k < 4 {
                edges[k] = edge_between(q[k], q[(k + 1) % 4]);
                crossed[k] = ins[k] != ins[(k + 1) % 4];
                if crossed[k] {
                    ncross += 1;
                }
                k += 1;
            }
            if ncross == 2 {
                let mut a = NONE;
                let mut b = NONE;
                let mut c_in = NONE;
                k = 0;
                while k < 4 {
                    if crossed[k] {
                        if a == NONE {
                            a = edges[k];
                        } else {
                            b = edges[k];
                        }
                    }
                    if ins[k] && c_in == NONE {
                        c_in = q[k];
                    }
                    k += 1;
                }
                link(&mut next, &mut incoming, orient(f, a, b, c_in));
            } else if ncross == 4 {
                // Ambiguous face: separate the inside corners.
                k = 0;
                while k < 4 {
                    if ins[k] {
                        let seg = orient(f, edges[(k + 3) % 4], edges[k], q[k]);
                        link(&mut next, &mut incoming, seg);
                    }
                    k += 1;
                }
            } else if ncross != 0 {
                panic!("odd number of crossings on a face");
            }
            f += 1;
        }

        // Every crossed edge: one segment out, one in.
        let mut e = 0;
        while e < 12 {
            let (c0, c1) = edge_corners(e);
            let crossed = ((case >> c0) & 1) != ((case >> c1) & 1);
            if crossed != (next[e] != NONE) || (crossed && incoming[e] != 1) {
                panic!("inconsistent contour");
            }
            e += 1;
        }

        // Chain loops and fan-triangulate them.
        let mut visited = [false; 12];
        let mut ntri = 0usize;
        let mut start = 0;
        while start < 12 {
            if next[start] != NONE && !visited[start] {
                let mut lp = [0usize; 12];
                let mut n = 0;
                let mut cur = start;
                while !visited[cur] {
                    visited[cur] = true;
                    lp[n] = cur;
                    n += 1;
                    cur = next[cur];
                }
                if cur != start || n < 3 {
                    panic!("open or short loop");
                }
                // Find a fan apex without diagonals between edges sharing a face.
                let mut apex = NONE;
                let mut a = 0;
                while a < n && apex == NONE {
                    let mut ok = true;
                    let mut i = 2;
                    while i + 1 < n {
                        if share_face(lp[a], lp[(a + i) % n]) {
                            ok = false;
                        }
                        i += 1;
                    }
                    if ok {
                        apex = a;
                    }
                    a += 1;
                }
                if apex == NONE {
                    panic!("no admissible fan apex");
                }
                let mut i = 1;
                while i + 1 < n {
                    if ntri >= MAX_TRIS {
                        panic!("MAX_TRIS too small");
                    }
                    let t0 = lp[apex] as u8;
                    let t1 = lp[(apex + i) % n] as u8;
                    let t2 = lp[(apex + i + 1) % n] as u8;
                    table.tris[case][3 * ntri] = t0;
                    if flip {
                        table.tris[case][3 * ntri + 1] = t2;
                        table.tris[case][3 * ntri + 2] = t1;
                    } else {
                        table.tris[case][3 * ntri + 1] = t1;
                        table.tris[case][3 * ntri + 2] = t2;
                    }
                    ntri += 1;
                    i += 1;
                }
            }
            start += 1;
        }
        table.count[case] = ntri as u8;
        case += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_corner_is_one_outward_triangle() {
        // Corner 0 inside: one triangle on edges 0 (x), 4 (y), 8 (z).
        assert_eq!(TABLE_CCW.count[1], 1);
        let t = &TABLE_CCW.tris[1][..3];
        let p: Vec<[i32; 3]> = t.iter().map(|&e| edge_mid2(e as usize)).collect();
        let n = cross(sub(p[1], p[0]), sub(p[2], p[0]));
        // Outside is away from corner 0, i.e. along +(1,1,1).
        assert!(dot(n, [1, 1, 1]) > 0, "normal {n:?}");
    }

    #[test]
    fn complement_and_empty_cases() {
        assert_eq!(TABLE_CCW.count[0], 0);
        assert_eq!(TABLE_CCW.count[255], 0);
        for case in 1..255usize {
            assert!(TABLE_CCW.count[case] > 0, "case {case}");
        }
    }

    #[test]
    fn every_crossed_edge_used_and_closed_per_cell_boundary() {
        for case in 0..256usize {
            let n = TABLE_CCW.count[case] as usize;
            let tris = &TABLE_CCW.tris[case][..3 * n];
            for e in 0..12 {
                let (c0, c1) = edge_corners(e);
                let crossed = ((case >> c0) & 1) != ((case >> c1) & 1);
                let used = tris.iter().any(|&x| x as usize == e);
                assert_eq!(crossed, used, "case {case} edge {e}");
            }
            // Interior (non face) mesh edges must be used twice with
            // opposite directions, face segments once.
            let mut directed = Vec::new();
            for t in tris.chunks(3) {
                for k in 0..3 {
                    directed.push((t[k], t[(k + 1) % 3]));
                }
            }
            for &(a, b) in &directed {
                let fwd = directed.iter().filter(|&&d| d == (a, b)).count();
                let back = directed.iter().filter(|&&d| d == (b, a)).count();
                assert_eq!(fwd, 1, "case {case}");
                if !share_face(a as usize, b as usize) {
                    assert_eq!(back, 1, "case {case}: interior edge {a}-{b}");
                }
            }
        }
    }

    #[test]
    fn flipped_table_reverses_winding() {
        for case in 0..256usize {
            assert_eq!(TABLE_CCW.count[case], TABLE_CW.count[case]);
            for t in 0..TABLE_CCW.count[case] as usize {
                let a = &TABLE_CCW.tris[case][3 * t..3 * t + 3];
                let b = &TABLE_CW.tris[case][3 * t..3 * t + 3];
                assert_eq!((a[0], a[1], a[2]), (b[0], b[2], b[1]));
            }
        }
    }
}
