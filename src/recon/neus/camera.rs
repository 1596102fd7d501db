//! The six fixed orthographic cameras and the frames of their pixels and normals.
//!
//! This is Wonder3D's camera table (`instant-nsr-pl/datasets/fixed_poses/000_<view>_RT.txt`,
//! Blender world-to-camera matrices) re-expressed; the diffusion stage must render the same:
//!
//! * **World**: the scene box [-1, 1]^3, +z up, the front camera on the -y side looking
//!   along +y. Camera `k` sits at azimuth `a` (degrees, towards +x first): it looks along
//!   `forward = (-sin a, cos a, 0)`, its image x axis ("right") is `(cos a, sin a, 0)` and
//!   its image y axis ("down") is `(0, 0, -1)`. Azimuths: front 0, front_right 45, right 90,
//!   back 180, left 270 (-90), front_left 315 (-45); elevation 0 for all.
//! * **Pixels**: an image of `W x H` pixels spans exactly [-1, 1] along both image axes;
//!   the centre of pixel (column i, row j), row 0 at the top, is at
//!   `u = (i + 0.5) / W * 2 - 1` along "right" and `v = (j + 0.5) / H * 2 - 1` along
//!   "down". Its ray runs along `forward` through that point of the plane through the
//!   origin (`get_ortho_ray_directions_origins` with OpenCV axes).
//! * **Normals**: every view's normal map is expressed in the **front** camera's OpenGL
//!   frame (x right, y up, z towards the camera): `world = (x, -z, y)` for a front-frame
//!   normal `(x, y, z)`, and front-frame
//!   `(x, y, z) = (world.x, world.z, -world.y)`. An outward normal facing the front camera
//!   is `(0, 0, 1)`, encoded RGB (0.5, 0.5, 1). Encoding: `rgb = n * 0.5 + 0.5`.

/// One of the six cameras.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViewKind {
    /// Azimuth 0.
    Front,
    /// Azimuth 45.
    FrontRight,
    /// Azimuth 90.
    Right,
    /// Azimuth 180.
    Back,
    /// Azimuth 270 (-90).
    Left,
    /// Azimuth 315 (-45).
    FrontLeft,
}

impl ViewKind {
    /// The six, in the config's order (the order of `view_weights`).
    pub const ALL: [ViewKind; 6] = [
        ViewKind::Front,
        ViewKind::FrontRight,
        ViewKind::Right,
        ViewKind::Back,
        ViewKind::Left,
        ViewKind::FrontLeft,
    ];

    /// Wonder3D's name (`normals_000_<name>.png`).
    pub fn name(self) -> &'static str {
        match self {
            ViewKind::Front => "front",
            ViewKind::FrontRight => "front_right",
            ViewKind::Right => "right",
            ViewKind::Back => "back",
            ViewKind::Left => "left",
            ViewKind::FrontLeft => "front_left",
        }
    }

    /// Position in [`ViewKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            ViewKind::Front => 0,
            ViewKind::FrontRight => 1,
            ViewKind::Right => 2,
            ViewKind::Back => 3,
            ViewKind::Left => 4,
            ViewKind::FrontLeft => 5,
        }
    }

    /// Azimuth in degrees, 0..360.
    pub fn azimuth_deg(self) -> f64 {
        [0.0, 45.0, 90.0, 180.0, 270.0, 315.0][self.index()]
    }

    /// The camera's axes in world coordinates.
    pub fn frame(self) -> CameraFrame {
        let a = self.azimuth_deg().to_radians();
        let (s, c) = a.sin_cos();
        CameraFrame {
            right: [c, s, 0.0],
            down: [0.0, 0.0, -1.0],
            forward: [-s, c, 0.0],
        }
    }
}

/// A camera's image axes and viewing direction, unit vectors in world coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CameraFrame {
    /// Image +x (columns, left to right).
    pub right: [f64; 3],
    /// Image +y (rows, top to bottom).
    pub down: [f64; 3],
    /// Viewing direction (away from the camera).
    pub forward: [f64; 3],
}

impl CameraFrame {
    /// The ray of the centre of pixel (`i`, `j`) in a `w` x `h` image: a point on the plane
    /// through the origin, and the direction.
    pub fn ray(&self, i: usize, j: usize, w: usize, h: usize) -> ([f64; 3], [f64; 3]) {
        let u = (i as f64 + 0.5) / w as f64 * 2.0 - 1.0;
        let v = (j as f64 + 0.5) / h as f64 * 2.0 - 1.0;
        let o = std::array::from_fn(|a| u * self.right[a] + v * self.down[a]);
        (o, self.forward)
    }
}

/// Front-camera (OpenGL) normal -> world normal.
pub fn front_to_world(n: [f64; 3]) -> [f64; 3] {
    [n[0], -n[2], n[1]]
}

/// World normal -> front-camera (OpenGL) normal.
pub fn world_to_front(n: [f64; 3]) -> [f64; 3] {
    [n[0], n[2], -n[1]]
}

/// The parameter interval where a ray crosses the box [-1, 1]^3, or `None` if it misses.
pub fn box_interval(o: [f64; 3], d: [f64; 3]) -> Option<(f64, f64)> {
    let mut t0 = f64::NEG_INFINITY;
    let mut t1 = f64::INFINITY;
    for a in 0..3 {
        if d[a].abs() < 1e-12 {
            if o[a].abs() > 1.0 {
                return None;
            }
            continue;
        }
        let (ta, tb) = ((-1.0 - o[a]) / d[a], (1.0 - o[a]) / d[a]);
        t0 = t0.max(ta.min(tb));
        t1 = t1.min(ta.max(tb));
    }
    (t1 > t0).then_some((t0, t1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames match Wonder3D's RT files: e.g. `000_right_RT.txt` has rows
    /// x = (0, 1, 0), y = (0, 0, 1), z = (1, 0, 0) (OpenGL, camera at +1.3 x).
    #[test]
    fn frames_match_wonder3d() {
        let close = |a: [f64; 3], b: [f64; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9);
        let r = ViewKind::Right.frame();
        assert!(close(r.right, [0.0, 1.0, 0.0]));
        assert!(close(r.forward, [-1.0, 0.0, 0.0]));
        let f = ViewKind::Front.frame();
        assert!(close(f.right, [1.0, 0.0, 0.0]));
        assert!(close(f.forward, [0.0, 1.0, 0.0]));
        let fr = ViewKind::FrontRight.frame();
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!(close(fr.right, [h, h, 0.0]));
        assert!(close(ViewKind::Left.frame().right, [0.0, -1.0, 0.0]));
        // Facing the front camera is +z in the front frame.
        assert!(close(world_to_front([0.0, -1.0, 0.0]), [0.0, 0.0, 1.0]));
        assert!(close(
            front_to_world(world_to_front([0.3, 0.5, -0.2])),
            [0.3, 0.5, -0.2]
        ));
    }
}
