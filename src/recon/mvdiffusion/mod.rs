//! Six-view cross-domain diffusion (Wonder3D) on ONNX Runtime: one key image of a series in,
//! six orthographic normal maps and colour maps out.
//!
//! Method: Long et al., "Wonder3D: Single Image to 3D using Cross-Domain Diffusion", CVPR 2024;
//! the inference loop follows `mvdiffusion/pipelines/pipeline_mvdiffusion_image.py` and
//! `configs/mvdiffusion-joint-ortho-6views.yaml` of `xxlong0/Wonder3D`.
//!
//! Map: [`Pipeline::load`] reads and validates a model directory ([`manifest`]) and opens one
//! cached ONNX Runtime session per component ([`crate::onnx`]); [`Pipeline::run`] picks and
//! windows the key slice ([`preprocess`]), encodes it with CLIP and the VAE, denoises the 12
//! latents (6 views × normal/colour) with the multi-view UNet and the DDIM sampler
//! ([`scheduler`]), and decodes them into [`SixViews`]. [`save_views`] writes PNGs for a
//! person to look at. This module writes no files otherwise and knows no network.
//!
//! Batch layout (Wonder3D's `reshape_to_cd_input`): every 6 consecutive UNet items are the six
//! views of one domain and one guidance branch. Without guidance (g = 1, `unet_b12`):
//! `[normal, colour]`; with guidance (`unet_b24`): `[normal-uncond, normal-cond, colour-uncond,
//! colour-cond]`, the unconditional branch with zeros for the CLIP embedding and the image
//! latents; the prediction is `uncond + g·(cond − uncond)`.
//!
//! Device memory: with the manifest's `step` component (`step.onnx`, built by
//! `models/step_graph.py`; both the export and the tiny models have it) the whole denoising
//! loop stays in the UNet session's memory (`DeviceLoop`). Two [`ort::session::IoBinding`]s
//! share tensors allocated once per run on the session's device: the UNet reads `sample` and
//! writes `noise_pred`; the step graph reads `noise_pred`, the current latents, the fixed image
//! latents, the step's noise and six scalars (g and the DDIM coefficients), and writes the next
//! latents (two buffers used in turn) and, in place, the next UNet `sample` (the new latents
//! for every batch item concatenated with the image latents). The CLIP embedding, the
//! camera/domain labels and the image latents go up once per run; per step only the noise
//! (drawn on the host by our [`GaussianRng`], 12×4×h×w f32, 196 kB at 256 px: the seed must give
//! the same views everywhere and the reference comparison records it), the timestep and the
//! six coefficients go up, and nothing comes back until the final latents. On a GPU this
//! saves, per step, the noise prediction coming down and the next sample going up (1.2 MB with
//! guidance at 256 px, plus their synchronisation) and the host's guidance and DDIM pass over
//! 49 k values. On CPU the same bindings run on host memory without copies, which is what the
//! tests exercise.
//!
//! Without a `step` component (a model directory exported before it existed) the step runs
//! on the host (`UnetLoop`, `Batch::guide`, [`Ddim::step`]): the UNet's output comes back
//! and the next sample goes up every step. That path is kept because it is the reference the
//! device path is tested against (`tests/mvdiffusion.rs`: equal within 1e-5) and
//! [`Ddim::step`] is the one checked against `scripts/ddim_reference.py`. The log's
//! `denoising_step` field (`device` or `host`) and [`RunStats::device_step`] say which ran, next
//! to the provider.

pub mod manifest;
pub mod noise;
pub mod preprocess;
pub mod scheduler;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ort::memory::{AllocationDevice, Allocator};
use ort::session::Session;
use ort::value::{DynTensorValueType, DynValue, Tensor};

pub use manifest::{Manifest, ManifestError};
pub use preprocess::{CanvasFrame, ConditionImage, KeySlice, Windowing};

use crate::onnx::{Model, OrtError, OrtSettings, Provider};
use crate::volume::Volume;
use manifest::{Role, names};
use noise::{GaussianRng, write_npy};
use scheduler::Ddim;

/// Why the pipeline failed, in words for the person reading the job list.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MvDiffusionError {
    /// The model directory is unusable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// ONNX Runtime cannot be loaded or the device cannot be used.
    #[error(transparent)]
    Ort(#[from] OrtError),
    /// The series or the options do not give a usable key image.
    #[error("{0}")]
    Input(String),
    /// A component failed while running.
    #[error("{component}: ONNX Runtime failed: {source}")]
    Run {
        /// The component's manifest key.
        component: &'static str,
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// A component returned something the manifest did not promise.
    #[error("{component}: {message}")]
    Output {
        /// The component's manifest key.
        component: &'static str,
        /// What was wrong.
        message: String,
    },
    /// Writing the recorded tensors or the PNGs failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Options of one run; `Default` is Wonder3D's settings from the manifest and the middle slice.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Seed of the initial latents and of every step's noise (eta = 1).
    pub seed: u64,
    /// Denoising steps; `None` = the manifest's (50).
    pub steps: Option<usize>,
    /// Guidance scale; `None` = the manifest's (3.0); 1 = no guidance (batch 12).
    pub guidance_scale: Option<f32>,
    /// Which slice is the key image.
    pub key: KeySlice,
    /// How it is windowed.
    pub windowing: Windowing,
    /// Windowed grey level (0..1) above which a pixel is foreground (0.05 keeps everything
    /// above the bottom of the window).
    pub foreground_threshold: f32,
    /// A generated pixel is foreground when a colour channel is this far below white
    /// (0.04 ≈ 10 grey levels).
    pub mask_threshold: f32,
    /// Write the inputs, the noise and the outputs as `.npy` here (for
    /// `scripts/mvdiffusion_reference.py`).
    pub record: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: 42,
            steps: None,
            guidance_scale: None,
            key: KeySlice::Middle,
            windowing: Windowing::FromSeries,
            foreground_threshold: 0.05,
            mask_threshold: 0.04,
            record: None,
        }
    }
}

/// One of the six views at the model's resolution; images are interleaved RGB, row-major,
/// y down.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewMaps {
    /// `front`, `front_right`, `right`, `back`, `left` or `front_left`.
    pub name: String,
    /// Normal map `n·0.5 + 0.5` in [0, 1], in the front (input) camera's frame.
    pub normal: Vec<f32>,
    /// Colour map in [0, 1].
    pub colour: Vec<f32>,
    /// Foreground (not the white background), from the colour map.
    pub mask: Vec<bool>,
}

/// Where the time of a run went.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunStats {
    /// The provider the UNet ran on.
    pub provider: Option<Provider>,
    /// Denoising steps done.
    pub steps: usize,
    /// UNet batch (12 or 24).
    pub batch: usize,
    /// Whole run, from the conditioning image to the decoded views.
    pub total: Duration,
    /// Inside ONNX Runtime during the denoising loop: the UNet and, when `device_step`, the
    /// step graph.
    pub unet: Duration,
    /// The denoising loop outside ONNX Runtime, all steps: the noise and the bindings with the
    /// device step; sample assembly, guidance and DDIM too with the host step.
    pub loop_overhead: Duration,
    /// True when guidance and DDIM ran in the manifest's `step` graph on the UNet's device.
    pub device_step: bool,
}

impl RunStats {
    /// Mean overhead per step outside ONNX Runtime.
    pub fn overhead_per_step(&self) -> Duration {
        self.loop_overhead / self.steps.max(1) as u32
    }
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct SixViews {
    /// Side of every map, pixels.
    pub resolution: usize,
    /// front, front_right, right, back, left, front_left.
    pub views: Vec<ViewMaps>,
    /// The conditioning image the views were made from.
    pub condition: ConditionImage,
    /// Timings.
    pub stats: RunStats,
}

/// A loaded model directory with its sessions; load once and keep it (sessions are cached per
/// file and device anyway).
#[derive(Debug)]
pub struct Pipeline {
    dir: PathBuf,
    manifest: Manifest,
    image_encoder: Arc<Model>,
    vae_encoder: Arc<Model>,
    unet_b12: Option<Arc<Model>>,
    unet_b24: Option<Arc<Model>>,
    vae_decoder: Arc<Model>,
    step: Option<Arc<Model>>,
}

/// One GPU job at a time: a second would only fight for memory.
static GPU: Mutex<()> = Mutex::new(());

impl Pipeline {
    /// Validates `dir/model.toml` against its files, loads ONNX Runtime if needed and opens
    /// (or reuses) a session per component, checking each against the manifest.
    pub fn load(dir: &Path, ort: &OrtSettings) -> Result<Pipeline, MvDiffusionError> {
        let manifest = Manifest::load(dir)?;
        let open = |role: Role, c: &manifest::Component| -> Result<Arc<Model>, MvDiffusionError> {
            let model = crate::onnx::model(&dir.join(&c.file), ort)?;
            let (inputs, outputs) = {
                let s = model.session();
                (
                    s.inputs()
                        .iter()
                        .map(manifest::SessionTensor::from_outlet)
                        .collect::<Vec<_>>(),
                    s.outputs()
                        .iter()
                        .map(manifest::SessionTensor::from_outlet)
                        .collect::<Vec<_>>(),
                )
            };
            manifest::check_session(role, c, &inputs, &outputs)?;
            Ok(model)
        };
        let c = &manifest.components;
        let mut pipeline = Pipeline {
            image_encoder: open(Role::ImageEncoder, &c.image_encoder)?,
            vae_encoder: open(Role::VaeEncoder, &c.vae_encoder)?,
            unet_b12: c
                .unet_b12
                .as_ref()
                .map(|u| open(Role::Unet(12), u))
                .transpose()?,
            unet_b24: c
                .unet_b24
                .as_ref()
                .map(|u| open(Role::Unet(24), u))
                .transpose()?,
            vae_decoder: open(Role::VaeDecoder, &c.vae_decoder)?,
            step: c.step.as_ref().map(|s| open(Role::Step, s)).transpose()?,
            dir: dir.to_path_buf(),
            manifest: manifest.clone(),
        };
        // The step graph shares the UNet's device tensors; on another provider it could not.
        if let Some(step) = &pipeline.step
            && step.provider() != pipeline.provider()
        {
            tracing::warn!(
                step = %step.provider(),
                unet = %pipeline.provider(),
                "the step graph and the UNet run on different providers; the denoising step runs on the host"
            );
            pipeline.step = None;
        }
        tracing::info!(
            model = %pipeline.manifest.name,
            dir = %pipeline.dir.display(),
            provider = %pipeline.provider(),
            denoising_step = pipeline.step_location(),
            "mvdiffusion model loaded"
        );
        Ok(pipeline)
    }

    /// True when both pipelines run on the very same sessions (the cache at work).
    pub fn shares_sessions_with(&self, other: &Pipeline) -> bool {
        let same = |a: &Arc<Model>, b: &Arc<Model>| Arc::ptr_eq(a, b);
        let same_opt = |a: &Option<Arc<Model>>, b: &Option<Arc<Model>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same(&self.image_encoder, &other.image_encoder)
            && same(&self.vae_encoder, &other.vae_encoder)
            && same_opt(&self.unet_b12, &other.unet_b12)
            && same_opt(&self.unet_b24, &other.unet_b24)
            && same(&self.vae_decoder, &other.vae_decoder)
            && same_opt(&self.step, &other.step)
    }

    /// Where the denoising step (guidance + DDIM) runs: `"device"` with the manifest's `step`
    /// graph (on the UNet's provider), `"host"` without it.
    pub fn step_location(&self) -> &'static str {
        if self.step.is_some() {
            "device"
        } else {
            "host"
        }
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The provider the UNet runs on (the components are opened with the same device setting).
    pub fn provider(&self) -> Provider {
        self.unet_b24
            .as_ref()
            .or(self.unet_b12.as_ref())
            .map_or(self.image_encoder.provider(), |u| u.provider())
    }

    /// Key image of `volume` -> six views.
    pub fn run(&self, volume: &Volume, opts: &RunOptions) -> Result<SixViews, MvDiffusionError> {
        let span = tracing::info_span!(
            "mvdiffusion",
            series = %volume.series_instance_uid,
            study = %volume.study_instance_uid
        );
        let _enter = span.enter();
        let image = preprocess::condition_image(
            volume,
            opts.key,
            opts.windowing,
            opts.foreground_threshold,
            self.manifest.resolution,
            self.manifest.crop_size,
        )?;
        tracing::info!(slice = image.slice, "key image chosen");
        self.run_image(image, opts)
    }

    /// A prepared conditioning image -> six views.
    pub fn run_image(
        &self,
        image: ConditionImage,
        opts: &RunOptions,
    ) -> Result<SixViews, MvDiffusionError> {
        let start = Instant::now();
        let m = &self.manifest;
        if image.size != m.resolution || image.rgb.len() != m.resolution * m.resolution * 3 {
            return Err(MvDiffusionError::Input(format!(
                "the conditioning image is {} px, the model needs {} px",
                image.size, m.resolution
            )));
        }
        let steps = opts.steps.unwrap_or(m.sampling.steps);
        if steps == 0 || steps > m.scheduler.num_train_timesteps {
            return Err(MvDiffusionError::Input(format!(
                "steps = {steps} is outside 1..={}",
                m.scheduler.num_train_timesteps
            )));
        }
        let g = opts.guidance_scale.unwrap_or(m.sampling.guidance_scale);
        if !g.is_finite() || g < 1.0 {
            return Err(MvDiffusionError::Input(format!(
                "guidance scale {g} must be at least 1"
            )));
        }
        let guided = g != 1.0;
        let unet = if guided {
            &self.unet_b24
        } else {
            &self.unet_b12
        };
        let unet = unet.as_ref().ok_or_else(|| {
            MvDiffusionError::Input(format!(
                "guidance scale {g} needs {} in the model directory",
                if guided { "unet_b24" } else { "unet_b12" }
            ))
        })?;
        let _gpu = unet
            .provider()
            .is_gpu()
            .then(|| GPU.lock().unwrap_or_else(|e| e.into_inner()));
        let record = opts.record.as_deref();
        if let Some(dir) = record {
            std::fs::create_dir_all(dir).map_err(|source| MvDiffusionError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }

        // 1. conditioning: CLIP embedding and VAE latents of the input image
        let clip_res = m.clip_resolution;
        let clip_input = image.clip_input(clip_res, m.clip_mean, m.clip_std);
        let vae_input = image.vae_input();
        let embeds = run_single(
            &self.image_encoder,
            Role::ImageEncoder,
            names::PIXEL_VALUES,
            &[1, 3, clip_res, clip_res],
            clip_input.clone(),
            names::IMAGE_EMBEDS,
        )?;
        let e = m.embed_dim();
        check_len(Role::ImageEncoder, &embeds, e)?;
        let res = m.resolution;
        let l = m.latent_size();
        let plane = 4 * l * l;
        let mut cond_latents = run_single(
            &self.vae_encoder,
            Role::VaeEncoder,
            names::SAMPLE,
            &[1, 3, res, res],
            vae_input.clone(),
            names::LATENT_MEAN,
        )?;
        check_len(Role::VaeEncoder, &cond_latents, plane)?;
        cond_latents.iter_mut().for_each(|v| *v *= m.latent_scale);

        // 2. the batch: constant inputs in UNet order, latents in [normal ×6, colour ×6]
        let batch = Batch::new(guided);
        let n = batch.len();
        let labels = class_labels(&m.views);
        let mut ehs = vec![0f32; n * e];
        let mut cls = vec![0f32; n * 10];
        let mut image_latents = vec![0f32; n * plane];
        for b in 0..n {
            let item = batch.item(b);
            if item.conditional {
                ehs[b * e..(b + 1) * e].copy_from_slice(&embeds);
                image_latents[b * plane..(b + 1) * plane].copy_from_slice(&cond_latents);
            }
            cls[b * 10..(b + 1) * 10].copy_from_slice(&labels[item.latent]);
        }

        // 3. noise and the sampler
        let ddim = Ddim::new(&m.scheduler, steps);
        let mut rng = GaussianRng::new(opts.seed);
        let mut latents = vec![0f32; 12 * plane];
        rng.fill(&mut latents); // init_noise_sigma = 1 for DDIM
        let mut recorder = Recorder::new(record, steps, 12 * plane);
        recorder.push_initial(&latents);

        // 4. the denoising loop
        let mut stats = RunStats {
            provider: Some(unet.provider()),
            steps,
            batch: n,
            device_step: self.step.is_some(),
            ..RunStats::default()
        };
        if let Some(step_model) = &self.step {
            // guidance and DDIM in the step graph: the latents stay in the session's memory.
            // Locks: always the UNet's session first, then the step graph's (shared by both
            // UNets), so concurrent runs cannot deadlock.
            let mut unet_session = unet.session();
            let mut step_session = step_model.session();
            let mut lp = DeviceLoop::new(
                &mut unet_session,
                &mut step_session,
                unet.provider(),
                DeviceInputs {
                    batch: &batch,
                    l,
                    e,
                    ehs: &ehs,
                    cls: &cls,
                    image_latents: &image_latents,
                    latents: &latents,
                },
            )?;
            for &t in ddim.timesteps() {
                let step_start = Instant::now();
                if ddim.needs_noise() {
                    rng.fill(lp.noise_mut()?);
                }
                recorder.push_step(lp.noise_mut()?);
                let [alpha, beta, alpha_prev, direction, std_dev] = ddim.coefficients(t).to_array();
                let ort_time = lp.step(t, [g, alpha, beta, alpha_prev, direction, std_dev])?;
                stats.unet += ort_time;
                stats.loop_overhead += step_start.elapsed().saturating_sub(ort_time);
            }
            lp.latents(&mut latents)?;
        } else {
            let mut session = unet.session();
            let mut lp = UnetLoop::new(&mut session, unet.provider(), n, l, e, &ehs, &cls)?;
            let mut eps = vec![0f32; 12 * plane];
            let mut step_noise = vec![0f32; 12 * plane];
            let mut out = vec![0f32; n * plane];
            for &t in ddim.timesteps() {
                let step_start = Instant::now();
                lp.fill_sample(&batch, &latents, &image_latents, plane);
                let ort_start = Instant::now();
                lp.run(t, &mut out)?;
                let ort_time = ort_start.elapsed();
                batch.guide(&out, g, plane, &mut eps);
                if ddim.needs_noise() {
                    rng.fill(&mut step_noise);
                }
                ddim.step(&eps, t, &mut latents, &step_noise);
                recorder.push_step(&step_noise);
                stats.unet += ort_time;
                stats.loop_overhead += step_start.elapsed() - ort_time;
            }
        }

        // 5. decode: latents / scale, VAE, x/2 + 0.5 clamped; normals first
        let scaled: Vec<f32> = latents.iter().map(|v| v / m.latent_scale).collect();
        let decoded = run_single(
            &self.vae_decoder,
            Role::VaeDecoder,
            names::LATENT_SAMPLE,
            &[12, 4, l, l],
            scaled,
            names::SAMPLE,
        )?;
        check_len(Role::VaeDecoder, &decoded, 12 * 3 * res * res)?;
        let images: Vec<f32> = decoded
            .iter()
            .map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
            .collect();
        if let Some(dir) = record {
            let l4 = [12, 4, l, l];
            recorder.finish(
                dir,
                &clip_input,
                &vae_input,
                &latents,
                &images,
                l4,
                clip_res,
                res,
            )?;
        }
        let views = (0..6)
            .map(|v| {
                let normal = interleave(&images, v, res);
                let colour = interleave(&images, 6 + v, res);
                let mask = colour
                    .chunks_exact(3)
                    .map(|p| p.iter().any(|&c| c < 1.0 - opts.mask_threshold))
                    .collect();
                ViewMaps {
                    name: m.views[v].name.clone(),
                    normal,
                    colour,
                    mask,
                }
            })
            .collect();
        stats.total = start.elapsed();
        tracing::info!(
            provider = %unet.provider(),
            denoising_step = self.step_location(),
            steps,
            batch = n,
            total_ms = stats.total.as_secs_f64() * 1e3,
            overhead_per_step_ms = stats.overhead_per_step().as_secs_f64() * 1e3,
            "six views generated"
        );
        Ok(SixViews {
            resolution: res,
            views,
            condition: image,
            stats,
        })
    }
}

fn check_len(role: Role, data: &[f32], want: usize) -> Result<(), MvDiffusionError> {
    if data.len() == want {
        Ok(())
    } else {
        Err(MvDiffusionError::Output {
            component: role.key(),
            message: format!("returned {} values, expected {want}", data.len()),
        })
    }
}

/// Planar [12,3,R,R] item `i` -> interleaved RGB.
fn interleave(images: &[f32], i: usize, res: usize) -> Vec<f32> {
    let n = res * res;
    let base = i * 3 * n;
    let mut out = vec![0f32; 3 * n];
    for p in 0..n {
        for c in 0..3 {
            out[p * 3 + c] = images[base + c * n + p];
        }
    }
    out
}

/// `class_labels` of the 12 latents: sin and cos of (elevation_cond, elevation, azimuth,
/// task_normal, task_colour), normals (task 1, 0) first.
pub fn class_labels(views: &[manifest::ViewSpec]) -> Vec<[f32; 10]> {
    let mut rows = Vec::with_capacity(12);
    for task in [[1.0f32, 0.0], [0.0, 1.0]] {
        for v in views {
            let raw = [v.elevation_cond, v.elevation, v.azimuth, task[0], task[1]];
            let mut row = [0f32; 10];
            for (i, x) in raw.iter().enumerate() {
                row[i] = x.sin();
                row[5 + i] = x.cos();
            }
            rows.push(row);
        }
    }
    rows
}

/// What one UNet batch item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    /// Index into the 12 latents (normal views 0-5, colour views 6-11).
    latent: usize,
    /// Conditional branch (real CLIP embedding and image latents) or unconditional (zeros).
    conditional: bool,
}

/// The UNet batch layout (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Batch {
    guided: bool,
}

impl Batch {
    fn new(guided: bool) -> Self {
        Batch { guided }
    }

    fn len(self) -> usize {
        if self.guided { 24 } else { 12 }
    }

    fn item(self, b: usize) -> Item {
        if !self.guided {
            return Item {
                latent: b,
                conditional: true,
            };
        }
        // blocks of 6: normal-uncond, normal-cond, colour-uncond, colour-cond
        let block = b / 6;
        Item {
            latent: (block / 2) * 6 + b % 6,
            conditional: block % 2 == 1,
        }
    }

    /// UNet output -> the noise prediction of each of the 12 latents.
    fn guide(self, out: &[f32], g: f32, plane: usize, eps: &mut [f32]) {
        if !self.guided {
            eps.copy_from_slice(&out[..eps.len()]);
            return;
        }
        for latent in 0..12 {
            let (domain, view) = (latent / 6, latent % 6);
            let uncond = &out[((2 * domain) * 6 + view) * plane..][..plane];
            let cond = &out[((2 * domain + 1) * 6 + view) * plane..][..plane];
            let dst = &mut eps[latent * plane..(latent + 1) * plane];
            for ((d, u), c) in dst.iter_mut().zip(uncond).zip(cond) {
                *d = u + g * (c - u);
            }
        }
    }
}

/// Runs a one-input, one-output component on host data.
fn run_single(
    model: &Model,
    role: Role,
    input: &str,
    shape: &[usize],
    data: Vec<f32>,
    output: &str,
) -> Result<Vec<f32>, MvDiffusionError> {
    let err = |source| MvDiffusionError::Run {
        component: role.key(),
        source,
    };
    let tensor = Tensor::from_array((shape.to_vec(), data)).map_err(err)?;
    let mut session = model.session();
    let outputs = session.run(ort::inputs![input => tensor]).map_err(err)?;
    let value = outputs
        .get(output)
        .ok_or_else(|| MvDiffusionError::Output {
            component: role.key(),
            message: format!("no output `{output}`"),
        })?;
    let mut host = Vec::new();
    copy_to_host(value, &mut host).map_err(err)?;
    Ok(host)
}

/// Copies an f32 output into `dst` (resized), through host memory if it lives on a GPU.
fn copy_to_host(value: &DynValue, dst: &mut Vec<f32>) -> ort::Result<()> {
    let tensor = value.view().downcast::<DynTensorValueType>()?;
    if tensor.memory_info().is_cpu_accessible() {
        let (_, data) = tensor.try_extract_tensor::<f32>()?;
        dst.clear();
        dst.extend_from_slice(data);
    } else {
        let host = tensor.to(AllocationDevice::CPU, 0)?;
        let (_, data) = host.try_extract_tensor::<f32>()?;
        dst.clear();
        dst.extend_from_slice(data);
    }
    Ok(())
}

/// The UNet's IoBinding for one run: constant inputs bound once on the session's device,
/// output bound to device memory, sample and timestep rebound per step.
struct UnetLoop<'s> {
    session: &'s mut Session,
    binding: ort::session::IoBinding,
    provider: Provider,
    host_sample: Tensor<f32>,
    device_sample: Option<Tensor<f32>>,
    // kept alive while bound
    _constants: Vec<Tensor<f32>>,
}

impl<'s> UnetLoop<'s> {
    fn new(
        session: &'s mut Session,
        provider: Provider,
        n: usize,
        l: usize,
        e: usize,
        ehs: &[f32],
        cls: &[f32],
    ) -> Result<Self, MvDiffusionError> {
        let err = |source| MvDiffusionError::Run {
            component: Role::Unet(n).key(),
            source,
        };
        let device = |t: Tensor<f32>| -> ort::Result<Tensor<f32>> {
            if provider.is_gpu() {
                t.to(provider.allocation_device(), 0)
            } else {
                Ok(t)
            }
        };
        let ehs =
            device(Tensor::from_array((vec![n, 1, e], ehs.to_vec())).map_err(err)?).map_err(err)?;
        let cls =
            device(Tensor::from_array((vec![n, 10], cls.to_vec())).map_err(err)?).map_err(err)?;
        let host_sample =
            Tensor::from_array((vec![n, 8, l, l], vec![0f32; n * 8 * l * l])).map_err(err)?;
        let device_sample = if provider.is_gpu() {
            let mem = provider.memory_info().map_err(err)?;
            let allocator = Allocator::new(session, mem).map_err(err)?;
            Some(Tensor::<f32>::new(&allocator, [n, 8, l, l]).map_err(err)?)
        } else {
            None
        };
        let mut binding = session.create_binding().map_err(err)?;
        binding
            .bind_input(names::ENCODER_HIDDEN_STATES, &ehs)
            .map_err(err)?;
        binding.bind_input(names::CLASS_LABELS, &cls).map_err(err)?;
        let mem = provider.memory_info().map_err(err)?;
        binding
            .bind_output_to_device(names::OUT_SAMPLE, &mem)
            .map_err(err)?;
        Ok(UnetLoop {
            session,
            binding,
            provider,
            host_sample,
            device_sample,
            _constants: vec![ehs, cls],
        })
    }

    fn component(&self) -> &'static str {
        "unet"
    }

    /// `sample` = noisy latents (4 channels) ++ image latents (4 channels), per batch item.
    fn fill_sample(&mut self, batch: &Batch, latents: &[f32], image_latents: &[f32], plane: usize) {
        let (_, data) = self.host_sample.extract_tensor_mut();
        for b in 0..batch.len() {
            let item = batch.item(b);
            let dst = &mut data[b * 2 * plane..(b + 1) * 2 * plane];
            dst[..plane].copy_from_slice(&latents[item.latent * plane..(item.latent + 1) * plane]);
            dst[plane..].copy_from_slice(&image_latents[b * plane..(b + 1) * plane]);
        }
    }

    /// One UNet evaluation at timestep `t` into `out` (host).
    fn run(&mut self, t: i64, out: &mut Vec<f32>) -> Result<(), MvDiffusionError> {
        let component = self.component();
        let err = |source| MvDiffusionError::Run { component, source };
        let timestep = Tensor::from_array((vec![1usize], vec![t])).map_err(err)?;
        let sample = match self.device_sample.as_mut() {
            Some(dev) => {
                self.host_sample.copy_into(&mut *dev).map_err(err)?;
                &*dev
            }
            None => &self.host_sample,
        };
        self.binding
            .bind_input(names::SAMPLE, sample)
            .map_err(err)?;
        let timestep = if self.provider.is_gpu() {
            timestep
                .to(self.provider.allocation_device(), 0)
                .map_err(err)?
        } else {
            timestep
        };
        self.binding
            .bind_input(names::TIMESTEP, &timestep)
            .map_err(err)?;
        let outputs = self.session.run_binding(&self.binding).map_err(err)?;
        let value = outputs
            .get(names::OUT_SAMPLE)
            .ok_or_else(|| MvDiffusionError::Output {
                component,
                message: format!("no output `{}`", names::OUT_SAMPLE),
            })?;
        copy_to_host(value, out).map_err(err)?;
        Ok(())
    }
}

/// What [`DeviceLoop::new`] puts on the device once per run (host data in UNet batch order).
struct DeviceInputs<'a> {
    batch: &'a Batch,
    /// Latent side.
    l: usize,
    /// CLIP embedding width.
    e: usize,
    /// `encoder_hidden_states` [N,1,E].
    ehs: &'a [f32],
    /// `class_labels` [N,10].
    cls: &'a [f32],
    /// The image-latent channels of `sample` [N,4,l,l].
    image_latents: &'a [f32],
    /// The initial latents [12,4,l,l].
    latents: &'a [f32],
}

/// The denoising loop with the step graph: two IoBindings (UNet, step) over tensors allocated
/// once per run in the UNet session's memory (GPU memory on a GPU provider).
///
/// Per step: UNet(`sample`) -> `noise_pred`; step(`noise_pred`, `latents[cur]`,
/// `image_latents`, `noise`, `coefficients`) -> `latents[1 - cur]` and `sample` (the next UNet
/// input, written in place). Only `noise` (the host RNG's, 12×4×h×w f32), the six coefficients
/// and the timestep cross from the host; ONNX Runtime copies them at binding when the session
/// wants them elsewhere. On CPU the same bindings run on host memory without copies.
struct DeviceLoop<'s> {
    unet_role: Role,
    unet: &'s mut Session,
    step: &'s mut Session,
    unet_binding: ort::session::IoBinding,
    step_binding: ort::session::IoBinding,
    /// UNet input, step output [N,8,l,l].
    sample: Tensor<f32>,
    /// UNet output, step input [N,4,l,l].
    noise_pred: Tensor<f32>,
    /// x_t and x_{t-1}, swapped every step [12,4,l,l].
    latents: [Tensor<f32>; 2],
    current: usize,
    /// Host: this step's noise [12,4,l,l].
    noise: Tensor<f32>,
    /// Host: g and the DDIM coefficients [6].
    coefficients: Tensor<f32>,
    /// Host: the timestep [1].
    timestep: Tensor<i64>,
    /// Bound once, kept alive with the bindings.
    _constants: Vec<Tensor<f32>>,
}

impl<'s> DeviceLoop<'s> {
    fn new(
        unet: &'s mut Session,
        step: &'s mut Session,
        provider: Provider,
        inputs: DeviceInputs<'_>,
    ) -> Result<Self, MvDiffusionError> {
        let DeviceInputs {
            batch,
            l,
            e,
            ehs,
            cls,
            image_latents,
            latents,
        } = inputs;
        let n = batch.len();
        let plane = 4 * l * l;
        let unet_err = run_error(Role::Unet(n));
        let step_err = run_error(Role::Step);
        let allocator = if provider.is_gpu() {
            let mem = provider.memory_info().map_err(unet_err)?;
            Allocator::new(unet, mem).map_err(unet_err)?
        } else {
            Allocator::default()
        };
        let device = |shape: Vec<usize>, data: &[f32]| -> ort::Result<Tensor<f32>> {
            let mut t = Tensor::<f32>::new(&allocator, shape)?;
            upload(&mut t, data)?;
            Ok(t)
        };
        // the first sample, assembled on the host once; the step graph writes the others
        let mut first = vec![0f32; n * 2 * plane];
        for b in 0..n {
            let item = batch.item(b);
            let dst = &mut first[b * 2 * plane..(b + 1) * 2 * plane];
            dst[..plane].copy_from_slice(&latents[item.latent * plane..(item.latent + 1) * plane]);
            dst[plane..].copy_from_slice(&image_latents[b * plane..(b + 1) * plane]);
        }
        let ehs = device(vec![n, 1, e], ehs).map_err(unet_err)?;
        let cls = device(vec![n, 10], cls).map_err(unet_err)?;
        let sample = device(vec![n, 8, l, l], &first).map_err(unet_err)?;
        let image = device(vec![n, 4, l, l], image_latents).map_err(step_err)?;
        let noise_pred = Tensor::<f32>::new(&allocator, [n, 4, l, l]).map_err(unet_err)?;
        let latents = [
            device(vec![12, 4, l, l], latents).map_err(step_err)?,
            Tensor::<f32>::new(&allocator, [12, 4, l, l]).map_err(step_err)?,
        ];
        let noise =
            Tensor::from_array((vec![12, 4, l, l], vec![0f32; 12 * plane])).map_err(step_err)?;
        let coefficients = Tensor::from_array((vec![6usize], vec![0f32; 6])).map_err(step_err)?;
        let timestep = Tensor::from_array((vec![1usize], vec![0i64])).map_err(unet_err)?;

        let mut unet_binding = unet.create_binding().map_err(unet_err)?;
        unet_binding
            .bind_input(names::ENCODER_HIDDEN_STATES, &ehs)
            .map_err(unet_err)?;
        unet_binding
            .bind_input(names::CLASS_LABELS, &cls)
            .map_err(unet_err)?;
        let mut step_binding = step.create_binding().map_err(step_err)?;
        step_binding
            .bind_input(names::IMAGE_LATENTS, &image)
            .map_err(step_err)?;
        Ok(DeviceLoop {
            unet_role: Role::Unet(n),
            unet,
            step,
            unet_binding,
            step_binding,
            sample,
            noise_pred,
            latents,
            current: 0,
            noise,
            coefficients,
            timestep,
            _constants: vec![ehs, cls, image],
        })
    }

    /// The host buffer of this step's noise (zeros unless filled).
    fn noise_mut(&mut self) -> Result<&mut [f32], MvDiffusionError> {
        let (_, data) = self
            .noise
            .try_extract_tensor_mut()
            .map_err(run_error(Role::Step))?;
        Ok(data)
    }

    /// One denoising step at timestep `t`; returns the time spent inside ONNX Runtime.
    fn step(&mut self, t: i64, coefficients: [f32; 6]) -> Result<Duration, MvDiffusionError> {
        let unet_err = run_error(self.unet_role);
        let step_err = run_error(Role::Step);
        self.timestep
            .try_extract_tensor_mut()
            .map_err(unet_err)?
            .1
            .copy_from_slice(&[t]);
        self.coefficients
            .try_extract_tensor_mut()
            .map_err(step_err)?
            .1
            .copy_from_slice(&coefficients);
        let b = &mut self.unet_binding;
        b.bind_input(names::SAMPLE, &self.sample)
            .map_err(unet_err)?;
        b.bind_input(names::TIMESTEP, &self.timestep)
            .map_err(unet_err)?;
        b.bind_output(names::OUT_SAMPLE, &mut self.noise_pred)
            .map_err(unet_err)?;
        let (cur, next) = (self.current, 1 - self.current);
        let [a, z] = &mut self.latents;
        let (x_t, x_prev) = if cur == 0 { (&*a, z) } else { (&*z, a) };
        let s = &mut self.step_binding;
        s.bind_input(names::NOISE_PRED, &self.noise_pred)
            .map_err(step_err)?;
        s.bind_input(names::LATENTS, x_t).map_err(step_err)?;
        s.bind_input(names::NOISE, &self.noise).map_err(step_err)?;
        s.bind_input(names::COEFFICIENTS, &self.coefficients)
            .map_err(step_err)?;
        s.bind_output(names::NEXT_LATENTS, x_prev)
            .map_err(step_err)?;
        s.bind_output(names::NEXT_SAMPLE, &mut self.sample)
            .map_err(step_err)?;

        let ort_start = Instant::now();
        self.unet.run_binding(b).map_err(unet_err)?;
        self.step.run_binding(s).map_err(step_err)?;
        let ort_time = ort_start.elapsed();
        self.current = next;
        Ok(ort_time)
    }

    /// The current latents, copied to the host.
    fn latents(&self, dst: &mut Vec<f32>) -> Result<(), MvDiffusionError> {
        download(&self.latents[self.current], dst).map_err(run_error(Role::Step))
    }
}

/// `MvDiffusionError::Run` of `role`, for `map_err`.
fn run_error(role: Role) -> impl Fn(ort::Error) -> MvDiffusionError + Copy {
    move |source| MvDiffusionError::Run {
        component: role.key(),
        source,
    }
}

/// Writes host data into a tensor of the same length, through a host copy if it lives on a GPU.
fn upload(dst: &mut Tensor<f32>, data: &[f32]) -> ort::Result<()> {
    if dst.memory_info().is_cpu_accessible() {
        let (_, d) = dst.try_extract_tensor_mut()?;
        if d.len() != data.len() {
            return Err(ort::Error::new(format!(
                "tensor has {} values, data {}",
                d.len(),
                data.len()
            )));
        }
        d.copy_from_slice(data);
        Ok(())
    } else {
        let shape: Vec<usize> = dst.shape().iter().map(|&d| d.max(0) as usize).collect();
        let host = Tensor::from_array((shape, data.to_vec()))?;
        host.copy_into(dst)
    }
}

/// Copies a tensor into `dst` (resized), through host memory if it lives on a GPU.
fn download(src: &Tensor<f32>, dst: &mut Vec<f32>) -> ort::Result<()> {
    dst.clear();
    if src.memory_info().is_cpu_accessible() {
        dst.extend_from_slice(src.try_extract_tensor::<f32>()?.1);
    } else {
        let host = src.to(AllocationDevice::CPU, 0)?;
        dst.extend_from_slice(host.try_extract_tensor::<f32>()?.1);
    }
    Ok(())
}

/// The tensors of one run, for `scripts/mvdiffusion_reference.py`.
struct Recorder {
    on: bool,
    initial: Vec<f32>,
    steps: Vec<f32>,
    n_steps: usize,
    per: usize,
}

impl Recorder {
    fn new(dir: Option<&Path>, n_steps: usize, per: usize) -> Self {
        Recorder {
            on: dir.is_some(),
            initial: Vec::new(),
            steps: Vec::with_capacity(if dir.is_some() { n_steps * per } else { 0 }),
            n_steps,
            per,
        }
    }

    fn push_initial(&mut self, x: &[f32]) {
        if self.on {
            self.initial = x.to_vec();
        }
    }

    fn push_step(&mut self, noise: &[f32]) {
        if self.on {
            self.steps.extend_from_slice(noise);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        dir: &Path,
        clip_input: &[f32],
        vae_input: &[f32],
        latents: &[f32],
        images: &[f32],
        l4: [usize; 4],
        clip_res: usize,
        res: usize,
    ) -> Result<(), MvDiffusionError> {
        let write = |name: &str, shape: &[usize], data: &[f32]| {
            let path = dir.join(name);
            write_npy(&path, shape, data).map_err(|source| MvDiffusionError::Write { path, source })
        };
        write("clip_input.npy", &[1, 3, clip_res, clip_res], clip_input)?;
        write("vae_input.npy", &[1, 3, res, res], vae_input)?;
        write("initial_noise.npy", &l4, &self.initial)?;
        write(
            "step_noise.npy",
            &[self.n_steps, l4[0], l4[1], l4[2], l4[3]],
            &self.steps,
        )?;
        debug_assert_eq!(self.steps.len(), self.n_steps * self.per);
        write("final_latents.npy", &l4, latents)?;
        write("images.npy", &[12, 3, res, res], images)?;
        Ok(())
    }
}

/// Writes `<view>_normal.png`, `<view>_colour.png`, `<view>_mask.png` and `input.png` into
/// `dir` (created), 8-bit.
pub fn save_views(views: &SixViews, dir: &Path) -> Result<(), MvDiffusionError> {
    let write_error = |path: &Path, e: std::io::Error| MvDiffusionError::Write {
        path: path.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
    let res = views.resolution as u32;
    let to8 = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    };
    let png = |name: String, colour: png::ColorType, data: Vec<u8>, size: u32| {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).map_err(|e| write_error(&path, e))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), size, size);
        enc.set_color(colour);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .and_then(|mut w| w.write_image_data(&data))
            .map_err(|e| write_error(&path, std::io::Error::other(e)))
    };
    for v in &views.views {
        let mask = v.mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
        for (kind, colour, data) in [
            ("normal", png::ColorType::Rgb, to8(&v.normal)),
            ("colour", png::ColorType::Rgb, to8(&v.colour)),
            ("mask", png::ColorType::Grayscale, mask),
        ] {
            png(format!("{}_{kind}.png", v.name), colour, data, res)?;
        }
        // Wonder3D's own file (normal map with the mask as alpha), which `m3dnode neus`
        // reads: the two stages can be run, and looked at, one after the other.
        let normal8 = to8(&v.normal);
        let rgba = normal8
            .chunks_exact(3)
            .zip(&v.mask)
            .flat_map(|(n, &m)| [n[0], n[1], n[2], if m { 255 } else { 0 }])
            .collect();
        png(
            format!("normals_000_{}.png", v.name),
            png::ColorType::Rgba,
            rgba,
            res,
        )?;
    }
    let c = &views.condition;
    png(
        "input.png".into(),
        png::ColorType::Rgb,
        to8(&c.rgb),
        c.size as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_can_be_shared_by_job_workers() {
        fn shared<T: Send + Sync>() {}
        shared::<Pipeline>();
        shared::<SixViews>();
    }

    #[test]
    fn guided_batch_order_is_wonder3d_cd_input() {
        let b = Batch::new(true);
        let items: Vec<(usize, bool)> = (0..24)
            .map(|i| (b.item(i).latent, b.item(i).conditional))
            .collect();
        // normal-uncond, normal-cond, colour-uncond, colour-cond
        assert_eq!(items[0], (0, false));
        assert_eq!(items[5], (5, false));
        assert_eq!(items[6], (0, true));
        assert_eq!(items[12], (6, false));
        assert_eq!(items[18], (6, true));
        assert_eq!(items[23], (11, true));
        let plain = Batch::new(false);
        assert_eq!(
            plain.item(7),
            Item {
                latent: 7,
                conditional: true
            }
        );
    }

    #[test]
    fn guidance_combines_the_branches() {
        let plane = 2;
        let mut out = vec![0f32; 24 * plane];
        for b in 0..24 {
            let item = Batch::new(true).item(b);
            let v = if item.conditional { 3.0 } else { 1.0 };
            out[b * plane..(b + 1) * plane].fill(v + item.latent as f32);
        }
        let mut eps = vec![0f32; 12 * plane];
        Batch::new(true).guide(&out, 3.0, plane, &mut eps);
        for latent in 0..12 {
            // uncond + 3 (cond - uncond) = (1 + i) + 3 * 2
            assert_eq!(eps[latent * plane], 7.0 + latent as f32);
        }
    }

    #[test]
    fn class_labels_are_sin_cos_of_the_table() {
        let head: toml::Value = toml::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("models/manifest_head.toml"),
            )
            .unwrap(),
        )
        .unwrap();
        let views: Vec<manifest::ViewSpec> = head["views"].clone().try_into().unwrap();
        let rows = class_labels(&views);
        assert_eq!(rows.len(), 12);
        // front normal: sin(0,0,0,1,0), cos(0,0,0,1,0)
        assert_eq!(&rows[0][..5], &[0.0, 0.0, 0.0, 1f32.sin(), 0.0]);
        assert_eq!(&rows[0][5..], &[1.0, 1.0, 1.0, 1f32.cos(), 1.0]);
        // back colour: azimuth 3.140625, task (0, 1)
        let back = rows[6 + 3];
        assert!((back[2] - 3.140625f32.sin()).abs() < 1e-7);
        assert_eq!(back[3], 0.0);
        assert_eq!(back[4], 1f32.sin());
    }
}
