//! Surface meshes extracted from scalar volumes.
//!
//! This module owns everything between "a 3-D array of samples plus an
//! index-to-patient affine" and "a triangle mesh in a file": iso-surface
//! extraction ([`marching_cubes`]), measurement ([`metrics`]), cleanup
//! ([`connected_components`], [`compact`], ...), smoothing ([`taubin_smooth`]),
//! decimation ([`simplify`]), file writers/readers ([`write_stl_binary`],
//! [`read_stl`], ...) and surface-to-surface distances ([`surface_distance`]).
//!
//! It deliberately knows nothing about DICOM: callers convert a series into a
//! sample array and an [`Affine`] first. Keeping the geometry here, free of
//! file-format and network concerns, lets it be tested against analytic shapes
//! (spheres, tori) with exact expected volumes and distances.
//!
//! Conventions used throughout:
//! * Coordinates are millimetres in the patient coordinate system defined by
//!   the affine (for DICOM input that is LPS: +x left, +y posterior, +z
//!   superior). Nothing here depends on which patient system it is, only on
//!   the affine.
//! * [`Mesh`] is an indexed triangle list; triangles wind counter-clockwise
//!   when seen from outside, so normals point from the inside (samples
//!   `>= iso`) to the outside and the signed volume of a closed mesh is
//!   positive.

mod clean;
mod distance;
mod io;
mod mc;
mod mc_table;
mod metrics;
mod normals;
mod simplify;
mod smooth;

#[cfg(test)]
mod tests;

pub use clean::{ComponentStats, component_stats, keep_components};
pub use clean::{compact, connected_components, keep_largest_component, remove_small_components};
pub use distance::{DistanceStats, distance_to_fn, one_sided_distance, surface_distance};
pub use io::{
    Material, read_obj, read_stl, write_mtl, write_obj, write_obj_with, write_ply, write_stl_ascii,
    write_stl_binary,
};
pub use mc::{McOptions, marching_cubes};
pub use metrics::{MeshMetrics, metrics};
pub use normals::vertex_normals;
pub use simplify::{SimplifyOptions, SimplifyReport, simplify};
pub use smooth::{TaubinOptions, taubin_smooth};

/// Affine map from voxel index to patient coordinates in millimetres:
/// `p = A * [i, j, k, 1]`, where `i` is the column (x, fastest varying),
/// `j` the row and `k` the slice. Row `r` of the array gives patient axis `r`
/// (for DICOM: L, P, S); column 3 is the position of voxel (0, 0, 0) in mm.
pub type Affine = [[f64; 4]; 3];

/// An indexed triangle mesh.
///
/// Vertices are positions in millimetres (patient coordinates, see
/// [`Affine`]). `indices` holds three vertex indices per triangle, wound
/// counter-clockwise when seen from outside (outward normals).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    /// Vertex positions in mm.
    pub vertices: Vec<[f32; 3]>,
    /// Triangle list: `3 * triangle_count()` indices into `vertices`.
    pub indices: Vec<u32>,
}

impl Mesh {
    /// Number of triangles (`indices.len() / 3`; a trailing partial triangle
    /// is ignored).
    pub fn triangle_count(&self) -> usize {
        self.indices.len() / 3
    }

    /// True when the mesh has no triangles.
    pub fn is_empty(&self) -> bool {
        self.triangle_count() == 0
    }

    /// Iterator over the complete triangles whose three indices are all in
    /// range; malformed triangles are skipped.
    pub fn valid_triangles(&self) -> impl Iterator<Item = [u32; 3]> + '_ {
        let n = self.vertices.len();
        self.indices
            .chunks_exact(3)
            .map(|t| [t[0], t[1], t[2]])
            .filter(move |t| t.iter().all(|&i| (i as usize) < n))
    }
}

/// Errors of the mesh module.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum MeshError {
    /// A grid dimension is zero, the sample count overflows `usize`, or a
    /// padded slice `(nx + 2) * (ny + 2)` exceeds `u32::MAX` samples.
    #[error("invalid volume dimensions {dims:?}")]
    InvalidDims {
        /// The dimensions given, `[nx, ny, nz]`.
        dims: [usize; 3],
    },
    /// `data.len()` differs from `nx * ny * nz`.
    #[error("volume data has {len} samples but dimensions {dims:?} need {expected}")]
    DataLength {
        /// The dimensions given.
        dims: [usize; 3],
        /// Samples required by the dimensions.
        expected: usize,
        /// Samples supplied.
        len: usize,
    },
    /// The iso value is NaN.
    #[error("iso value is NaN")]
    InvalidIso,
    /// The affine has non-finite entries or a (near) zero determinant.
    #[error("affine is singular or not finite")]
    DegenerateAffine,
    /// The surface would need more than `u32::MAX` vertices.
    #[error("surface too large for 32-bit indices")]
    TooLarge,
    /// The worker thread pool could not be created.
    #[error("thread pool: {0}")]
    ThreadPool(String),
    /// An internal consistency check failed (a bug in this module).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// An STL file is truncated, malformed or not STL at all.
    #[error("invalid STL: {0}")]
    InvalidStl(String),
    /// A Wavefront OBJ text is malformed, refers to vertices it does not have, or is
    /// beyond the reader's limits.
    #[error("invalid OBJ: {0}")]
    InvalidObj(String),
}
