//! Analytic shapes and their six views, rendered with the cameras of [`super::camera`]:
//! the ground truth for tests and timings, and a reference for the diffusion stage's output
//! format (same frames, same encoding).

use rayon::prelude::*;

use super::camera::{ViewKind, box_interval, world_to_front};
use super::{View, ViewSet};
use crate::mesh::{self, Mesh, MeshError};

/// A shape in the scene box (world units, see [`super::camera`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// A ball.
    Sphere {
        /// Centre.
        centre: [f64; 3],
        /// Radius.
        radius: f64,
    },
    /// An axis-aligned ellipsoid.
    Ellipsoid {
        /// Centre.
        centre: [f64; 3],
        /// Semi-axes along x, y, z.
        radii: [f64; 3],
    },
    /// A rounded box centred at the origin with a spherical dimple in the middle of its
    /// front face (-y): a concavity the front views see in their normals but no silhouette
    /// shows (the face's rim hides it from the side).
    DimpledBox {
        /// Half-extents.
        half: [f64; 3],
        /// Edge rounding radius.
        rounding: f64,
        /// Radius of the carving sphere.
        dimple_radius: f64,
        /// Depth of the dimple below the front face.
        dimple_depth: f64,
    },
}

impl Shape {
    /// A distance bound (negative inside), exact for the sphere and the box, a
    /// conservative bound for the ellipsoid: safe for sphere tracing, same zero set.
    pub fn sdf(&self, p: [f64; 3]) -> f64 {
        let len = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        match *self {
            Shape::Sphere { centre, radius } => {
                len(std::array::from_fn(|a| p[a] - centre[a])) - radius
            }
            Shape::Ellipsoid { centre, radii } => {
                let q: [f64; 3] = std::array::from_fn(|a| (p[a] - centre[a]) / radii[a]);
                let rmin = radii.iter().copied().fold(f64::INFINITY, f64::min);
                (len(q) - 1.0) * rmin
            }
            Shape::DimpledBox {
                half,
                rounding,
                dimple_radius,
                dimple_depth,
            } => {
                let q: [f64; 3] = std::array::from_fn(|a| p[a].abs() - (half[a] - rounding));
                let outside = len(q.map(|x| x.max(0.0)));
                let inside = q[0].max(q[1]).max(q[2]).min(0.0);
                let rounded = outside + inside - rounding;
                let c = [0.0, -half[1] - dimple_radius + dimple_depth, 0.0];
                let carve = len(std::array::from_fn(|a| p[a] - c[a])) - dimple_radius;
                rounded.max(-carve)
            }
        }
    }

    /// The true surface, by marching cubes of the field on an `n`^3 lattice over the box,
    /// in the frame of [`super::Placement::scaled`]`(mm_per_unit)`: the reference meshes the
    /// tests and `m3dnode bench neus` measure distances to.
    pub fn reference_mesh(&self, n: usize, mm_per_unit: f64) -> Result<Mesh, MeshError> {
        let step = 2.0 / (n.max(2) - 1) as f64;
        let mut data = Vec::with_capacity(n * n * n);
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    data.push(-self.sdf([i, j, k].map(|x| -1.0 + x as f64 * step)) as f32);
                }
            }
        }
        let (s, o) = (mm_per_unit * step, -mm_per_unit);
        let a = [[s, 0.0, 0.0, o], [0.0, s, 0.0, o], [0.0, 0.0, s, o]];
        mesh::marching_cubes(&data, [n; 3], 0.0, &a, &Default::default())
    }

    /// Outward unit normal from the gradient of [`Shape::sdf`] (central differences).
    pub fn normal(&self, p: [f64; 3]) -> [f64; 3] {
        let h = 1e-5;
        let g: [f64; 3] = std::array::from_fn(|a| {
            let mut hi = p;
            let mut lo = p;
            hi[a] += h;
            lo[a] -= h;
            self.sdf(hi) - self.sdf(lo)
        });
        let l = (g[0] * g[0] + g[1] * g[1] + g[2] * g[2]).sqrt().max(1e-30);
        g.map(|x| x / l)
    }
}

/// First intersection of a ray with the shape by sphere tracing, within the box.
fn trace(shape: &Shape, o: [f64; 3], d: [f64; 3]) -> Option<[f64; 3]> {
    let (t0, t1) = box_interval(o, d)?;
    let mut t = t0;
    for _ in 0..512 {
        let p = std::array::from_fn(|a| o[a] + t * d[a]);
        let s = shape.sdf(p);
        if s < 1e-6 {
            return Some(p);
        }
        t += s.max(1e-6);
        if t > t1 {
            return None;
        }
    }
    None
}

/// Renders the six views of `shape` at `size` x `size` pixels: normal maps encoded
/// `n * 0.5 + 0.5` in the front camera's frame, masks 1 / 0, background normals 0.
pub fn render_views(shape: &Shape, size: usize) -> ViewSet {
    let views = ViewKind::ALL
        .par_iter()
        .map(|&kind| {
            let frame = kind.frame();
            let mut normals = vec![0f32; size * size * 3];
            let mut mask = vec![0f32; size * size];
            for j in 0..size {
                for i in 0..size {
                    let (o, d) = frame.ray(i, j, size, size);
                    if let Some(p) = trace(shape, o, d) {
                        let n = world_to_front(shape.normal(p));
                        let px = j * size + i;
                        mask[px] = 1.0;
                        for a in 0..3 {
                            normals[3 * px + a] = (n[a] * 0.5 + 0.5) as f32;
                        }
                    }
                }
            }
            View {
                kind,
                normals,
                mask,
                color: None,
            }
        })
        .collect();
    ViewSet {
        width: size,
        height: size,
        views,
    }
}
