//! Reconstruction pipelines: from an assembled [`crate::volume::Volume`] to a surface mesh in
//! patient millimetres.
//!
//! `iso` ([`iso`]) segments by a threshold (presets, Otsu/background, or an explicit value)
//! and extracts the surface with the project's marching cubes. The model-based pipeline is
//! two stages and their join: `mvdiffusion` ([`mvdiffusion`]) turns a key image into six
//! normal and colour views with a Wonder3D model on ONNX Runtime, `neus` ([`neus`]) fits a
//! signed distance field to those views and meshes it with the same marching cubes, and
//! [`multiview`] runs one after the other and places the result in patient coordinates.
//! Pipelines return meshes (or views) and their metrics; they know nothing of the network —
//! wrapping the result as DICOM is [`crate::encap`]'s.

pub mod iso;
pub mod multiview;
pub mod mvdiffusion;
pub mod neus;

/// Why a reconstruction failed, in words for the person reading the job list.
#[derive(Debug, thiserror::Error)]
pub enum ReconError {
    /// A preset or option is unusable for this series.
    #[error("{0}")]
    Options(String),
    /// Surface extraction failed (invalid geometry, too large).
    #[error("surface extraction failed: {0}")]
    Mesh(#[from] crate::mesh::MeshError),
    /// The NeuS stage (six views -> SDF -> surface) failed.
    #[error("NeuS reconstruction failed: {0}")]
    Neus(#[from] neus::NeusError),
    /// The series is one slice (or one row or column) thick: no surface encloses anything.
    #[error("a surface needs a volume: {}", not_a_volume(dims))]
    NotAVolume {
        /// The volume's `[cols, rows, slices]`.
        dims: [usize; 3],
    },
    /// The keep policy and minimum size dropped every piece of the surface.
    #[error("no piece of the surface is kept ({what}, keep {keep}): {dropped} dropped")]
    NothingKept {
        /// What was looked for.
        what: String,
        /// The keep policy.
        keep: String,
        /// How many pieces were dropped.
        dropped: usize,
    },
    /// Nothing in the volume reaches the iso value.
    #[error("the surface is empty: no voxel reaches the iso value {iso} ({what})")]
    EmptySurface {
        /// The iso value in modality units.
        iso: f64,
        /// What was looked for.
        what: String,
    },
}

/// "the series has 1 slice" or "the images are 1 x 512 pixels".
fn not_a_volume(dims: &[usize; 3]) -> String {
    if dims[2] < 2 {
        let s = if dims[2] == 1 { "" } else { "s" };
        format!("the series has {} slice{s}", dims[2])
    } else {
        format!("the images are {} x {} pixels", dims[0], dims[1])
    }
}
