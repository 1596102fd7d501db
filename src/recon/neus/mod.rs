//! The `neus` stage: a watertight surface from six orthographic views (normal maps and
//! foreground masks), fitted as a signed distance field.
//!
//! Method: NeuS (Wang et al. 2021, "NeuS: Learning Neural Implicit Surfaces by Volume
//! Rendering for Multi-view Reconstruction") as adapted to six fixed orthographic views by
//! Wonder3D (Long et al. 2024, "Wonder3D: Single Image to 3D using Cross-Domain Diffusion"),
//! i.e. instant-nsr-pl's `systems/neus_ortho.py` with `configs/neuralangelo-ortho-wmask.yaml`:
//! a multiresolution grid encoding with progressively enabled levels (Müller et al. 2022,
//! "Instant Neural Graphics Primitives"; progressive bands from Li et al. 2023, "Neuralangelo")
//! feeding a one-hidden-layer MLP with sphere initialisation (Atzmon & Lipman 2020, "SAL"),
//! SDF gradients by central finite differences, NeuS's prev/next-CDF alpha with a learnable
//! inverse variance and cosine annealing, and the config's losses (geometry-aware normal loss
//! with per-view weights, mask BCE, eikonal, sparsity, 3-D normal smoothness, each with its
//! `ranking_loss` fraction where the config uses one), optimised by AdamW with a constant then
//! exponentially decaying learning rate. The surface is then taken by the project's own
//! marching cubes in two passes and placed in patient millimetres by a [`Placement`].
//!
//! Map:
//! * [`ViewSet`] / [`View`] / [`ViewKind`]: the input, exactly what the diffusion stage
//!   produces; [`camera`] documents the frames.
//! * [`NeusSettings`] (defaults = the config; [`NeusSettings::fast`] for CPUs) and [`Device`].
//! * [`Placement`]: scene box -> patient mm, from the key image.
//! * [`reconstruct`]: views -> [`NeusResult`] (mesh in mm plus a report).
//! * [`render`]: the NeuS alpha, compositing and `ranking_loss`, public so they can be
//!   checked against hand-computed values; [`synthetic`]: analytic views for tests.
//!
//! Deliberate differences from the original, each for lack of a CUDA-only dependency or of
//! a use here: no occupancy-grid pruning or dynamic ray count (stratified samples over the
//! ray's whole crossing of the box instead; the defaults keep the config's 256 x 1024 = 262 144
//! samples per step), no colour network (colour is accepted in [`View`] but the geometry is
//! fitted from normals and masks only; the config's RGB weight only shapes texture there),
//! and no weight normalisation of the MLP layers. `ranking_loss` does what the original's
//! code computes by default, not its stated intent (see [`render::Selection`]: keeping only
//! the smallest errors ignores the silhouette rim and shrinks the fit).
//!
//! It writes no files and knows nothing of DICOM beyond the geometry numbers a
//! [`Placement`] is built from.

pub mod camera;
mod device;
mod extract;
mod field;
pub mod render;
pub mod synthetic;
mod train;

use std::str::FromStr;

pub use camera::ViewKind;
pub use device::ChosenDevice;

use crate::mesh::Mesh;

/// The CPU backend the tests and the CPU path run on (pure Rust).
pub type CpuBackend = burn::backend::NdArray<f32>;

/// Why the NeuS stage could not produce a surface.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NeusError {
    /// The views are unusable (wrong sizes, missing view, no foreground).
    #[error("invalid views: {0}")]
    InvalidViews(String),
    /// A setting is out of range.
    #[error("invalid NeuS setting: {0}")]
    InvalidSettings(String),
    /// The key image geometry cannot place the result.
    #[error("invalid placement: {0}")]
    InvalidPlacement(String),
    /// `device = "cuda"` was asked for but cannot be used.
    #[error("device `cuda` is unavailable: {0} (set device = \"auto\" or \"cpu\")")]
    CudaUnavailable(String),
    /// The loss became NaN or infinite.
    #[error("the fit diverged at step {step} (loss {loss})")]
    Diverged {
        /// The step at which it was seen.
        step: usize,
        /// The loss value.
        loss: f32,
    },
    /// A tensor could not be read back from the backend.
    #[error("backend error: {0}")]
    Backend(String),
    /// The fitted field has no zero crossing inside the scene box.
    #[error("the fitted surface is empty (no zero crossing of the SDF in the scene box)")]
    EmptySurface,
    /// Marching cubes or cleanup failed.
    #[error("surface extraction failed: {0}")]
    Mesh(#[from] crate::mesh::MeshError),
}

/// One orthographic view: a normal map in the **front** camera's frame and a foreground mask.
///
/// Pixels are row-major, row 0 at the top, `width * height` of them. See [`camera`] for
/// which world ray each pixel is and how the normal frame is defined.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Which of the six cameras.
    pub kind: ViewKind,
    /// Normal map, `width * height * 3` values, the encoded form `n * 0.5 + 0.5` in [0, 1]
    /// (as a PNG stores it divided by 255), `n` in the front camera's OpenGL frame (x right,
    /// y up, z towards the front camera). Background pixels are ignored.
    pub normals: Vec<f32>,
    /// Foreground mask, `width * height` values; `> 0.5` is foreground (alpha / 255).
    pub mask: Vec<f32>,
    /// Optional colour, `width * height * 3` in [0, 1]; accepted, not used by the fit.
    pub color: Option<Vec<f32>>,
}

/// The six views of one object, all `width` x `height` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewSet {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// One view of each [`ViewKind`], any order.
    pub views: Vec<View>,
}

impl ViewSet {
    /// Checks sizes and coverage; the fit needs every view once and some foreground.
    pub fn validate(&self) -> Result<(), NeusError> {
        let bad = |m: String| Err(NeusError::InvalidViews(m));
        if self.width < 2 || self.height < 2 {
            return bad(format!(
                "views are {}x{} pixels; at least 2x2 are needed",
                self.width, self.height
            ));
        }
        let n = self.width * self.height;
        for kind in ViewKind::ALL {
            let count = self.views.iter().filter(|v| v.kind == kind).count();
            if count != 1 {
                return bad(format!(
                    "view `{}` appears {count} times; each of the six views must appear once",
                    kind.name()
                ));
            }
        }
        for v in &self.views {
            if v.normals.len() != 3 * n || v.mask.len() != n {
                return bad(format!(
                    "view `{}` has {} normal values and {} mask values; {}x{} pixels need {} and {}",
                    v.kind.name(),
                    v.normals.len(),
                    v.mask.len(),
                    self.width,
                    self.height,
                    3 * n,
                    n
                ));
            }
            if let Some(c) = &v.color
                && c.len() != 3 * n
            {
                return bad(format!(
                    "view `{}` has {} colour values; {} are needed",
                    v.kind.name(),
                    c.len(),
                    3 * n
                ));
            }
            if v.normals.iter().chain(&v.mask).any(|x| !x.is_finite()) {
                return bad(format!("view `{}` has non-finite values", v.kind.name()));
            }
        }
        if !self.views.iter().any(|v| v.mask.iter().any(|&m| m > 0.5)) {
            return bad("no view has a foreground pixel".to_string());
        }
        Ok(())
    }

    /// The view of one camera.
    pub fn view(&self, kind: ViewKind) -> Option<&View> {
        self.views.iter().find(|v| v.kind == kind)
    }
}

/// Where the fit runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Device {
    /// CUDA when built with the `gpu-cuda` feature and a driver answers, else the CPU (logged).
    #[default]
    Auto,
    /// The pure-Rust CPU backend.
    Cpu,
    /// CUDA or an error saying why not.
    Cuda,
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(format!("unknown device `{other}`: use auto, cpu or cuda")),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The multiresolution grid encoding (the config's `xyz_encoding_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct GridSettings {
    /// Levels (config: 10).
    pub levels: usize,
    /// Features per level (config: 2).
    pub features_per_level: usize,
    /// log2 of the entries per level; coarser levels that fit are dense (config: 19).
    pub log2_table_size: u32,
    /// Resolution of the coarsest level (config: 32).
    pub base_resolution: f64,
    /// Resolution growth per level (config: 1.3195, i.e. 32 -> 388 over 10 levels).
    pub per_level_scale: f64,
    /// Levels enabled at step 0 (config: 4).
    pub start_level: usize,
    /// One more level every this many steps (config: 1000).
    pub update_steps: usize,
}

/// Loss weights and ranking fractions (the config's `system.loss`).
#[derive(Debug, Clone, PartialEq)]
pub struct LossSettings {
    /// Normal loss weight (1.0).
    pub normal: f32,
    /// Mask BCE weight (1.0).
    pub mask: f32,
    /// Eikonal weight (0.2; larger values make holes in thin parts, says the config).
    pub eikonal: f32,
    /// Sparsity weight (0.5).
    pub sparsity: f32,
    /// Sparsity falloff: `exp(-scale * |sdf|)` (100).
    pub sparsity_scale: f32,
    /// 3-D normal smoothness weight (1.0).
    pub normal_smooth: f32,
    /// Fraction of the smallest normal errors kept (0.8).
    pub normal_p: f32,
    /// Fraction of the smallest mask errors kept (0.9).
    pub mask_p: f32,
    /// Which errors the ranking keeps ([`render::Selection::AsInstantNsr`]).
    pub ranking: render::Selection,
    /// Weight the normal errors by `exp(|cos(ray, normal)|)`, normalised (true).
    pub geo_aware: bool,
    /// Per-view weights in [`ViewKind::ALL`] order (1.0, 0.8, 0.2, 1.0, 0.4, 0.7).
    pub view_weights: [f32; 6],
}

/// Settings of the NeuS fit. `Default` follows the config (3000 steps, marching cubes 192);
/// [`NeusSettings::fast`] is the CPU profile.
#[derive(Debug, Clone, PartialEq)]
pub struct NeusSettings {
    /// Optimisation steps (3000).
    pub steps: usize,
    /// Rays per step, drawn from random views and pixels (256).
    pub rays_per_batch: usize,
    /// Stratified samples per ray over its crossing of the scene box (1024; with the
    /// config's occupancy pruning the same 262 144 samples per step are spent near the surface).
    pub samples_per_ray: usize,
    /// Random points in the box per step for the sparsity and smoothness terms (2048).
    pub random_points: usize,
    /// Marching-cubes samples per axis, both passes (192).
    pub mc_resolution: usize,
    /// Where to run.
    pub device: Device,
    /// The encoding.
    pub grid: GridSettings,
    /// Width of the hidden layer (64).
    pub hidden: usize,
    /// AdamW learning rate of the geometry and the variance (0.001).
    pub lr: f64,
    /// AdamW weight decay (PyTorch's default 0.01, which the config does not override).
    pub weight_decay: f32,
    /// Steps at the full rate before the exponential decay starts (500).
    pub constant_steps: usize,
    /// The rate at the last step relative to the start (0.1).
    pub final_lr_factor: f64,
    /// Steps over which NeuS's cosine annealing goes from 0 to 1 (20000, so at 3000 steps it
    /// reaches 0.15, as in the original).
    pub cos_anneal_end: usize,
    /// Initial `variance`; the inverse variance is `exp(10 * variance)` (0.3 -> 20).
    pub init_variance: f32,
    /// Radius of the initial sphere (0.5).
    pub sphere_init_radius: f32,
    /// The losses.
    pub loss: LossSettings,
    /// Seed of the ray and point sampling and of the initialisation (42, the config's).
    pub seed: u64,
}

impl Default for NeusSettings {
    fn default() -> Self {
        NeusSettings {
            steps: 3000,
            rays_per_batch: 256,
            samples_per_ray: 1024,
            random_points: 2048,
            mc_resolution: 192,
            device: Device::Auto,
            grid: GridSettings {
                levels: 10,
                features_per_level: 2,
                log2_table_size: 19,
                base_resolution: 32.0,
                per_level_scale: 1.319_507_910_772_894_2,
                start_level: 4,
                update_steps: 1000,
            },
            hidden: 64,
            lr: 0.001,
            weight_decay: 0.01,
            constant_steps: 500,
            final_lr_factor: 0.1,
            cos_anneal_end: 20000,
            init_variance: 0.3,
            sphere_init_radius: 0.5,
            loss: LossSettings {
                normal: 1.0,
                mask: 1.0,
                eikonal: 0.2,
                sparsity: 0.5,
                sparsity_scale: 100.0,
                normal_smooth: 1.0,
                normal_p: 0.8,
                mask_p: 0.9,
                ranking: render::Selection::AsInstantNsr,
                geo_aware: true,
                view_weights: [1.0, 0.8, 0.2, 1.0, 0.4, 0.7],
            },
            seed: 42,
        }
    }
}

/// `[neus]` of the configuration: a profile and the numbers that override it (0 = the
/// profile's), resolved into [`NeusSettings`] by [`NeusConfig::settings`].
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NeusConfig {
    /// `auto` (CUDA if built with `gpu-cuda` and a driver answers, else CPU), `cpu`, `cuda`.
    pub device: Device,
    /// `default` (the Wonder3D config: 3000 steps, marching cubes 192) or `fast` (CPU).
    pub profile: NeusProfile,
    /// Optimisation steps; 0 = the profile's.
    pub steps: usize,
    /// Rays per step; 0 = the profile's.
    pub rays_per_batch: usize,
    /// Samples per ray; 0 = the profile's.
    pub samples_per_ray: usize,
    /// Marching-cubes resolution; 0 = the profile's.
    pub mc_resolution: usize,
}

impl Default for NeusConfig {
    fn default() -> Self {
        NeusConfig {
            device: Device::Auto,
            profile: NeusProfile::Default,
            steps: 0,
            rays_per_batch: 0,
            samples_per_ray: 0,
            mc_resolution: 0,
        }
    }
}

/// A named starting point for [`NeusSettings`] (`[neus] profile`, a rule's `neus_profile`).
#[derive(Debug, Clone, Copy, serde::Deserialize, clap::ValueEnum, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum NeusProfile {
    /// [`NeusSettings::default`].
    Default,
    /// [`NeusSettings::fast`].
    Fast,
}

crate::choice!(NeusProfile);

impl NeusProfile {
    /// The profile's settings.
    pub fn settings(self) -> NeusSettings {
        match self {
            NeusProfile::Default => NeusSettings::default(),
            NeusProfile::Fast => NeusSettings::fast(),
        }
    }
}

impl NeusConfig {
    /// The settings this section asks for.
    pub fn settings(&self) -> NeusSettings {
        self.settings_for(None, None)
    }

    /// The settings with a rule's overrides of the profile and the step count.
    pub fn settings_for(&self, profile: Option<NeusProfile>, steps: Option<usize>) -> NeusSettings {
        let mut s = profile.unwrap_or(self.profile).settings();
        s.device = self.device;
        let pick = |v: usize, d: usize| if v == 0 { d } else { v };
        s.steps = steps.unwrap_or(pick(self.steps, s.steps));
        s.rays_per_batch = pick(self.rays_per_batch, s.rays_per_batch);
        s.samples_per_ray = pick(self.samples_per_ray, s.samples_per_ray);
        s.mc_resolution = pick(self.mc_resolution, s.mc_resolution);
        s
    }
}

impl NeusSettings {
    /// The CPU profile: 600 steps of 128 rays x 32 samples and 256 random points, a coarser
    /// and smaller grid (6 levels from 16 to 121 cells per axis, at most 2^16 entries each,
    /// one more level every 75 steps), a ten times higher learning rate so the short schedule
    /// converges, NeuS's cosine annealing done by step 150 (with 32 samples a section is
    /// ~0.06 long, and the un-annealed `iter_cos` of -0.5 on grazing rays then lends them
    /// opacity outside the silhouette, which shrank a sphere by 7 % of its radius),
    /// marching cubes at 96. Chosen for the CPU budget of `tests/neus.rs`, where
    /// shortened runs of it reach the 2 % bound on the test shapes.
    pub fn fast() -> Self {
        let d = NeusSettings::default();
        NeusSettings {
            steps: 600,
            rays_per_batch: 128,
            samples_per_ray: 32,
            random_points: 256,
            mc_resolution: 96,
            grid: GridSettings {
                levels: 6,
                log2_table_size: 16,
                base_resolution: 16.0,
                per_level_scale: 1.5,
                start_level: 2,
                update_steps: 75,
                ..d.grid.clone()
            },
            lr: 0.01,
            constant_steps: 100,
            cos_anneal_end: 150,
            ..d
        }
    }

    /// Range checks, so a bad configuration fails before any work.
    pub fn validate(&self) -> Result<(), NeusError> {
        let bad = |m: &str| Err(NeusError::InvalidSettings(m.to_string()));
        if self.steps == 0 {
            return bad("steps must be at least 1");
        }
        if self.rays_per_batch < 2 || self.samples_per_ray < 2 {
            return bad("rays_per_batch and samples_per_ray must be at least 2");
        }
        if !(8..=1024).contains(&self.mc_resolution) {
            return bad("mc_resolution must be between 8 and 1024");
        }
        let g = &self.grid;
        if g.levels == 0 || g.features_per_level == 0 || !(4..=24).contains(&g.log2_table_size) {
            return bad("grid: levels and features must be positive, log2_table_size 4..=24");
        }
        if g.base_resolution < 2.0 || g.per_level_scale < 1.0 || g.update_steps == 0 {
            return bad("grid: base_resolution >= 2, per_level_scale >= 1, update_steps >= 1");
        }
        if self.hidden == 0 || !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("hidden must be positive and lr a positive number");
        }
        let l = &self.loss;
        if !(0.0..=1.0).contains(&l.normal_p) || !(0.0..=1.0).contains(&l.mask_p) {
            return bad("ranking fractions must be in [0, 1]");
        }
        Ok(())
    }
}

/// How the scene box [-1, 1]^3 sits in patient space (mm).
///
/// World axes (Wonder3D's): +x to the right of the front view, +z up in every view, +y away
/// from the front camera (the front camera looks along +y). A world point `w` maps to
/// `centre + mm_per_unit * (w.x * right + w.y * depth - w.z * down)`, `depth = right x down`.
///
/// **Depth assumption.** Six orthographic views carry no absolute depth: the scale along the
/// viewing direction is taken equal to the in-plane scale (orthographic views are
/// isotropic), and depth 0 (the centre of the scene box) is put in the key image's plane.
/// So the result lies centred on the key slice, with the depth extent the model inferred.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Patient position of the scene-box centre, mm.
    pub centre_mm: [f64; 3],
    /// Unit patient direction of world +x (the front view's image columns, left to right).
    pub right: [f64; 3],
    /// Unit patient direction of world -z (the front view's image rows, top to bottom).
    pub down: [f64; 3],
    /// Millimetres per world unit (the half-width of the front view).
    pub mm_per_unit: f64,
}

impl Placement {
    /// The front view shows the key image whole, centred, its longer side spanning the view
    /// (the diffusion stage's input framing): the scale is half that side in mm, the centre
    /// the image centre, the directions the Image Orientation (Patient).
    ///
    /// `ipp` is Image Position (Patient) (0020,0032), the centre of the first pixel; `iop`
    /// Image Orientation (Patient) (0020,0037), row then column direction cosines;
    /// `pixel_spacing` (0028,0030): spacing between rows, then between columns, mm.
    /// A stage that crops the key image builds the [`Placement`] of its crop instead.
    pub fn from_key_image(
        ipp: [f64; 3],
        iop: [f64; 6],
        pixel_spacing: [f64; 2],
        rows: usize,
        cols: usize,
    ) -> Result<Placement, NeusError> {
        let bad = |m: &str| Err(NeusError::InvalidPlacement(m.to_string()));
        if rows == 0 || cols == 0 {
            return bad("the key image has no pixels");
        }
        if !pixel_spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
            return bad("Pixel Spacing must be positive");
        }
        let right = [iop[0], iop[1], iop[2]];
        let down = [iop[3], iop[4], iop[5]];
        let width = cols as f64 * pixel_spacing[1];
        let height = rows as f64 * pixel_spacing[0];
        let mut centre = ipp;
        for (a, c) in centre.iter_mut().enumerate() {
            *c += right[a] * pixel_spacing[1] * (cols as f64 - 1.0) * 0.5
                + down[a] * pixel_spacing[0] * (rows as f64 - 1.0) * 0.5;
        }
        Placement::new(centre, right, down, width.max(height) * 0.5)
    }

    /// A placement from its parts; the directions are normalised and must be orthogonal.
    pub fn new(
        centre_mm: [f64; 3],
        right: [f64; 3],
        down: [f64; 3],
        mm_per_unit: f64,
    ) -> Result<Placement, NeusError> {
        let bad = |m: &str| Err(NeusError::InvalidPlacement(m.to_string()));
        let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        let (nr, nd) = (norm(right), norm(down));
        if !(nr > 1e-6 && nd > 1e-6 && nr.is_finite() && nd.is_finite()) {
            return bad("the orientation vectors must be non-zero");
        }
        let right = right.map(|x| x / nr);
        let down = down.map(|x| x / nd);
        let dot = right[0] * down[0] + right[1] * down[1] + right[2] * down[2];
        if dot.abs() > 1e-3 {
            return bad("the row and column directions are not orthogonal");
        }
        if !(mm_per_unit.is_finite()
            && mm_per_unit > 0.0
            && centre_mm.iter().all(|c| c.is_finite()))
        {
            return bad("the scale must be positive and the centre finite");
        }
        Ok(Placement {
            centre_mm,
            right,
            down,
            mm_per_unit,
        })
    }

    /// World units as they are, scaled: world +x -> patient +x, world +y -> +y, world +z -> +z
    /// (right = +x, down = -z). For tests and for callers without a key image.
    pub fn scaled(mm_per_unit: f64) -> Placement {
        Placement {
            centre_mm: [0.0; 3],
            right: [1.0, 0.0, 0.0],
            down: [0.0, 0.0, -1.0],
            mm_per_unit,
        }
    }

    /// The patient direction of world +y (away from the front camera): `right x down`.
    pub fn depth(&self) -> [f64; 3] {
        let (r, d) = (self.right, self.down);
        [
            r[1] * d[2] - r[2] * d[1],
            r[2] * d[0] - r[0] * d[2],
            r[0] * d[1] - r[1] * d[0],
        ]
    }

    /// Maps a world point (scene box units) to patient mm.
    pub fn to_patient(&self, w: [f64; 3]) -> [f64; 3] {
        let n = self.depth();
        let s = self.mm_per_unit;
        std::array::from_fn(|a| {
            self.centre_mm[a] + s * (w[0] * self.right[a] + w[1] * n[a] - w[2] * self.down[a])
        })
    }

    /// The affine of a grid: voxel `(i, j, k)` is world `origin + (i, j, k) * step`, in mm.
    pub(crate) fn grid_affine(&self, origin: [f64; 3], step: [f64; 3]) -> crate::mesh::Affine {
        let n = self.depth();
        let s = self.mm_per_unit;
        let o = self.to_patient(origin);
        let axes = [self.right, n, self.down.map(|x| -x)];
        std::array::from_fn(|r| {
            [
                s * step[0] * axes[0][r],
                s * step[1] * axes[1][r],
                s * step[2] * axes[2][r],
                o[r],
            ]
        })
    }
}

/// What a fit did, for logs and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// The device that ran it.
    pub device: ChosenDevice,
    /// Why `auto` did not use the GPU, when it did not.
    pub fallback: Option<String>,
    /// Steps run.
    pub steps: usize,
    /// Wall time of the optimisation, seconds.
    pub fit_seconds: f64,
    /// Wall time of the two marching-cubes passes, seconds.
    pub extract_seconds: f64,
    /// Total loss at the last step.
    pub final_loss: f32,
    /// Inverse variance `s` at the end (sharpness of the fitted surface).
    pub final_inv_s: f32,
}

/// The surface and how it was made.
#[derive(Debug, Clone)]
pub struct NeusResult {
    /// Watertight surface in patient mm (the largest connected component).
    pub mesh: Mesh,
    /// What the fit did.
    pub report: FitReport,
}

/// Fits an SDF to the six views and extracts its zero level set in patient mm.
///
/// Runs on the device [`NeusSettings::device`] selects; CPU-bound and blocking (call it off
/// the async runtime). Deterministic for a given seed on the CPU.
pub fn reconstruct(
    views: &ViewSet,
    settings: &NeusSettings,
    placement: &Placement,
) -> Result<NeusResult, super::ReconError> {
    let span = tracing::info_span!(
        "neus",
        steps = settings.steps,
        w = views.width,
        h = views.height
    );
    let _g = span.enter();
    views.validate()?;
    settings.validate()?;
    let (chosen, fallback) = device::resolve(settings.device)?;
    let (mesh, mut report) =
        match chosen {
            ChosenDevice::Cpu => train::fit_and_extract::<burn::backend::Autodiff<CpuBackend>>(
                views,
                settings,
                placement,
                &Default::default(),
            )?,
            #[cfg(feature = "gpu-cuda")]
            ChosenDevice::Cuda => train::fit_and_extract::<
                burn::backend::Autodiff<burn::backend::Cuda>,
            >(views, settings, placement, &Default::default())?,
        };
    report.device = chosen;
    report.fallback = fallback;
    Ok(NeusResult { mesh, report })
}

impl Placement {
    /// [`Placement::from_key_image`] with the geometry read from the key image's data set.
    pub fn from_key_object(obj: &dicom_object::InMemDicomObject) -> Result<Placement, NeusError> {
        use dicom_dictionary_std::tags;
        let floats = |tag, name: &str, n: usize| -> Result<Vec<f64>, NeusError> {
            obj.element(tag)
                .ok()
                .and_then(|e| e.to_multi_float64().ok())
                .filter(|v| v.len() == n)
                .ok_or_else(|| {
                    NeusError::InvalidPlacement(format!("the key image has no valid {name}"))
                })
        };
        let count = |tag, name: &str| -> Result<usize, NeusError> {
            obj.element(tag)
                .ok()
                .and_then(|e| e.to_int::<u32>().ok())
                .map(|v| v as usize)
                .ok_or_else(|| {
                    NeusError::InvalidPlacement(format!("the key image has no valid {name}"))
                })
        };
        let ipp = floats(tags::IMAGE_POSITION_PATIENT, "Image Position (Patient)", 3)?;
        let iop = floats(
            tags::IMAGE_ORIENTATION_PATIENT,
            "Image Orientation (Patient)",
            6,
        )?;
        let ps = floats(tags::PIXEL_SPACING, "Pixel Spacing", 2)?;
        Placement::from_key_image(
            [ipp[0], ipp[1], ipp[2]],
            [iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]],
            [ps[0], ps[1]],
            count(tags::ROWS, "Rows")?,
            count(tags::COLUMNS, "Columns")?,
        )
    }
}
