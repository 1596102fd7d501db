//! Mesh decimation.
//!
//! Method: meshoptimizer's `meshopt_simplify` (A. Kapoulkine, meshoptimizer
//! library), an edge-collapse simplifier driven by quadric error metrics
//! (Garland & Heckbert 1997, "Surface simplification using quadric error
//! metrics") that only performs topology-preserving collapses, reached
//! through the `meshopt` crate.
//!
//! Why: marching cubes on a CT gives millions of near-equal triangles;
//! printing and viewing need a fraction of them. The error bound is given in
//! absolute millimetres (meshopt's `ErrorAbsolute` mode) so that callers can
//! state a geometric tolerance directly. The input is compacted first so the
//! simplifier never sees invalid indices, and the output is compacted after,
//! so collapsed vertices are dropped.
//!
//! meshoptimizer does not check the link condition of every collapse, and on thin structures
//! (a skull's orbital plates, one voxel thick) a collapse can pinch two sheets into a
//! non-manifold edge. A surface that goes in closed and manifold must come out so — a
//! navigation system or a printer cannot use anything else — so the result is checked; the
//! vertices around any defect, and their two-ring in the input, are locked, and the
//! simplification is run again. After a few rounds without success the input is returned
//! unsimplified (reported in [`SimplifyReport::fell_back`]).

use super::metrics::{defective_vertices, vertex_corners};
use super::{Mesh, compact};

/// Rounds of lock-and-retry before giving up on a topology-preserving result.
const MAX_ROUNDS: usize = 6;

/// Parameters of [`simplify`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimplifyOptions {
    /// Target fraction of the input triangles to keep, in (0, 1]; e.g. 0.25.
    pub target_ratio: f32,
    /// Maximum allowed geometric deviation in mm. Simplification stops at
    /// whichever comes first: the target triangle count or this error.
    pub target_error_mm: f32,
    /// Keep vertices on open boundaries fixed (irrelevant for closed meshes).
    pub lock_border: bool,
}

impl Default for SimplifyOptions {
    /// 25 % of the triangles, at most 0.5 mm deviation, borders free.
    fn default() -> Self {
        SimplifyOptions {
            target_ratio: 0.25,
            target_error_mm: 0.5,
            lock_border: false,
        }
    }
}

/// Outcome of [`simplify`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimplifyReport {
    /// Valid triangles before simplification.
    pub triangles_before: usize,
    /// Triangles after simplification.
    pub triangles_after: usize,
    /// Deviation estimate reported by the simplifier, in mm.
    pub error_mm: f32,
    /// Vertices locked to keep a closed, manifold input closed and manifold.
    pub locked_vertices: usize,
    /// No topology-preserving result was found: the input was returned unchanged.
    pub fell_back: bool,
}

/// Decimates `mesh` toward `opts.target_ratio` of its triangles without
/// exceeding `opts.target_error_mm`, then compacts the result.
pub fn simplify(mesh: &Mesh, opts: &SimplifyOptions) -> (Mesh, SimplifyReport) {
    let input = compact(mesh);
    let before = input.triangle_count();
    if before == 0 {
        return (
            input,
            SimplifyReport {
                triangles_before: 0,
                triangles_after: 0,
                error_mm: 0.0,
                locked_vertices: 0,
                fell_back: false,
            },
        );
    }
    let ratio = if opts.target_ratio.is_nan() {
        1.0
    } else {
        opts.target_ratio.clamp(0.0, 1.0)
    };
    let target_tris = ((before as f64 * f64::from(ratio)).round() as usize).max(1);
    let target_error = if opts.target_error_mm.is_nan() {
        0.0
    } else {
        opts.target_error_mm.max(0.0)
    };
    let mut flags = meshopt::SimplifyOptions::ErrorAbsolute;
    if opts.lock_border {
        flags |= meshopt::SimplifyOptions::LockBorder;
    }
    let nv = input.vertices.len();
    let must_stay_closed = defective_vertices(nv, &input.indices).is_empty();
    let mut lock = vec![false; nv];
    let mut locked = 0usize;
    for _ in 0..MAX_ROUNDS {
        let mut err = 0.0f32;
        let indices = meshopt::simplify_with_locks_decoder(
            &input.indices,
            &input.vertices,
            &lock,
            3 * target_tris,
            target_error,
            flags,
            Some(&mut err),
        );
        let defects = if must_stay_closed {
            defective_vertices(nv, &indices)
        } else {
            Vec::new()
        };
        if defects.is_empty() {
            let out = compact(&Mesh {
                vertices: input.vertices.clone(),
                indices,
            });
            let report = SimplifyReport {
                triangles_before: before,
                triangles_after: out.triangle_count(),
                error_mm: err,
                locked_vertices: locked,
                fell_back: false,
            };
            return (out, report);
        }
        locked += lock_neighbourhood(&input, &defects, &mut lock);
    }
    let report = SimplifyReport {
        triangles_before: before,
        triangles_after: before,
        error_mm: 0.0,
        locked_vertices: locked,
        fell_back: true,
    };
    (input, report)
}

/// Locks `seeds` and their two-ring in `mesh`; returns how many vertices were newly locked.
fn lock_neighbourhood(mesh: &Mesh, seeds: &[u32], lock: &mut [bool]) -> usize {
    let (offsets, corners) = vertex_corners(mesh.vertices.len(), &mesh.indices);
    let mut frontier: Vec<u32> = seeds.to_vec();
    let mut newly = 0;
    for &v in seeds {
        if !lock[v as usize] {
            lock[v as usize] = true;
            newly += 1;
        }
    }
    for _ in 0..2 {
        let mut next = Vec::new();
        for &v in &frontier {
            for &c in &corners[offsets[v as usize]..offsets[v as usize + 1]] {
                let t = (c / 3) as usize * 3;
                for &u in &mesh.indices[t..t + 3] {
                    if !lock[u as usize] {
                        lock[u as usize] = true;
                        newly += 1;
                        next.push(u);
                    }
                }
            }
        }
        frontier = next;
    }
    newly
}
