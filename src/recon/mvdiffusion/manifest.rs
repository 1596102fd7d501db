//! `model.toml`: what a model directory holds and how the pipeline must drive it.
//!
//! Loading checks, in this order, and stops at the first problem with a message that names it:
//! the TOML itself (unknown keys are errors), the values the Rust side implements (scheduler
//! kind, prediction type, six views, ...), the tensors each component must have for the
//! pipeline to drive it ([`Role`]), the files (present, sha256), and finally — once ONNX Runtime
//! has opened them — that every declared input and output exists in the ONNX file with that
//! dtype, rank and fixed dimensions, and that the file has no undeclared ones
//! ([`check_session`]). The first four need no ONNX Runtime.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why a model directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// `model.toml` is missing or unreadable.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `model.toml` is not valid TOML or has unknown/missing keys.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The manifest path.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value the pipeline does not implement or that contradicts another.
    #[error("model.toml: {key}: {message}")]
    Value {
        /// Dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A component's file does not exist.
    #[error("model.toml: components.{component}: file {} does not exist", path.display())]
    MissingFile {
        /// Component name.
        component: String,
        /// Expected path.
        path: PathBuf,
    },
    /// A component's file could not be read.
    #[error("model.toml: components.{component}: cannot read {}: {source}", path.display())]
    ReadFile {
        /// Component name.
        component: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A component's file is not the one the manifest describes.
    #[error(
        "model.toml: components.{component}: sha256 of {} is {actual}, the manifest says {expected} \
         (a different or damaged file; re-export or update the manifest)",
        path.display()
    )]
    Checksum {
        /// Component name.
        component: String,
        /// The file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Of the file.
        actual: String,
    },
    /// A declared tensor disagrees with the ONNX file or with what the pipeline needs.
    #[error("model.toml: components.{component}: {message}")]
    Tensor {
        /// Component name.
        component: String,
        /// What does not match, naming the tensor.
        message: String,
    },
}

/// The whole manifest.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Free text, logged.
    pub name: String,
    /// Side of the square input and output images, pixels (256 for Wonder3D).
    pub resolution: usize,
    /// Side of the foreground's bounding box on the canvas, pixels (192).
    pub crop_size: usize,
    /// Side of the CLIP input (224).
    pub clip_resolution: usize,
    /// CLIP normalisation mean, RGB.
    pub clip_mean: [f32; 3],
    /// CLIP normalisation standard deviation, RGB.
    pub clip_std: [f32; 3],
    /// VAE latent scaling factor (0.18215).
    pub latent_scale: f32,
    /// The sampler.
    pub scheduler: SchedulerConfig,
    /// Defaults of a run.
    pub sampling: Sampling,
    /// The six target views, in batch order.
    pub views: Vec<ViewSpec>,
    /// The ONNX files.
    pub components: Components,
}

/// `[scheduler]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Only `ddim`.
    pub kind: String,
    /// Training timesteps (1000).
    pub num_train_timesteps: usize,
    /// `scaled_linear` or `linear`.
    pub beta_schedule: String,
    /// First beta.
    pub beta_start: f64,
    /// Last beta.
    pub beta_end: f64,
    /// Only `epsilon`.
    pub prediction_type: String,
    /// Whether the last step goes to ᾱ = 1 (false: ᾱ_0).
    pub set_alpha_to_one: bool,
    /// Added to every timestep (1).
    pub steps_offset: i64,
    /// Only `leading`.
    pub timestep_spacing: String,
    /// Only false.
    pub clip_sample: bool,
    /// DDIM eta: 0 deterministic, 1 (Wonder3D) fresh noise every step.
    pub eta: f32,
}

impl Default for SchedulerConfig {
    /// Wonder3D's configuration.
    fn default() -> Self {
        SchedulerConfig {
            kind: "ddim".into(),
            num_train_timesteps: 1000,
            beta_schedule: "scaled_linear".into(),
            beta_start: 0.00085,
            beta_end: 0.012,
            prediction_type: "epsilon".into(),
            set_alpha_to_one: false,
            steps_offset: 1,
            timestep_spacing: "leading".into(),
            clip_sample: false,
            eta: 1.0,
        }
    }
}

/// `[sampling]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Denoising steps (50).
    pub steps: usize,
    /// Classifier-free guidance scale (3.0); 1 = no guidance.
    pub guidance_scale: f32,
}

/// `[[views]]`: one target view of Wonder3D's camera table, radians.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    /// `front`, `front_right`, `right`, `back`, `left`, `front_left`.
    pub name: String,
    /// Elevation of the input view.
    pub elevation_cond: f32,
    /// Elevation of this view relative to the input.
    pub elevation: f32,
    /// Azimuth of this view relative to the input.
    pub azimuth: f32,
}

/// `[components]`: the ONNX files by role.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Components {
    /// CLIP vision model with projection.
    pub image_encoder: Component,
    /// VAE encoder returning the latent mean.
    pub vae_encoder: Component,
    /// The multi-view UNet exported with batch 12 (no guidance).
    pub unet_b12: Option<Component>,
    /// The multi-view UNet exported with batch 24 (guidance).
    pub unet_b24: Option<Component>,
    /// VAE decoder.
    pub vae_decoder: Component,
    /// The denoising step (guidance + DDIM) as a graph, so the latents stay on the session's
    /// device between steps (`models/step_graph.py`). Without it the step runs on the host.
    pub step: Option<Component>,
}

/// One ONNX file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// File name relative to the model directory.
    pub file: String,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// Inputs, in any order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in any order.
    pub outputs: Vec<TensorSpec>,
}

/// One declared input or output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name in the graph.
    pub name: String,
    /// `float32` or `int64` (fp16 exports keep float32 inputs and outputs).
    pub dtype: String,
    /// Dimensions; -1 = any.
    pub shape: Vec<i64>,
}

impl Component {
    fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// A tensor the pipeline needs: name, dtype, shape (-1 = any).
type Wanted = (&'static str, &'static str, Vec<i64>);

/// The roles of the components and the tensor names the pipeline drives them by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `pixel_values` [B,3,224,224] -> `image_embeds` [B,E].
    ImageEncoder,
    /// `sample` [B,3,R,R] -> `latent_mean` [B,4,R/8,R/8].
    VaeEncoder,
    /// `sample` [N,8,h,w], `timestep` [1] int64, `encoder_hidden_states` [N,1,E],
    /// `class_labels` [N,10] -> `out_sample` [N,4,h,w]; N = 12 or 24.
    Unet(usize),
    /// `latent_sample` [B,4,h,w] -> `sample` [B,3,R,R].
    VaeDecoder,
    /// `noise_pred` [N,4,h,w], `latents` [12,4,h,w], `image_latents` [N,4,h,w], `noise`
    /// [12,4,h,w], `coefficients` [6] -> `next_latents` [12,4,h,w], `next_sample` [N,8,h,w].
    Step,
}

impl Role {
    /// The manifest key.
    pub fn key(self) -> &'static str {
        match self {
            Role::ImageEncoder => "image_encoder",
            Role::VaeEncoder => "vae_encoder",
            Role::Unet(12) => "unet_b12",
            Role::Unet(_) => "unet_b24",
            Role::VaeDecoder => "vae_decoder",
            Role::Step => "step",
        }
    }
}

/// Input names the pipeline feeds.
pub(crate) mod names {
    pub const PIXEL_VALUES: &str = "pixel_values";
    pub const IMAGE_EMBEDS: &str = "image_embeds";
    pub const SAMPLE: &str = "sample";
    pub const LATENT_MEAN: &str = "latent_mean";
    pub const TIMESTEP: &str = "timestep";
    pub const ENCODER_HIDDEN_STATES: &str = "encoder_hidden_states";
    pub const CLASS_LABELS: &str = "class_labels";
    pub const OUT_SAMPLE: &str = "out_sample";
    pub const LATENT_SAMPLE: &str = "latent_sample";
    pub const NOISE_PRED: &str = "noise_pred";
    pub const LATENTS: &str = "latents";
    pub const IMAGE_LATENTS: &str = "image_latents";
    pub const NOISE: &str = "noise";
    pub const COEFFICIENTS: &str = "coefficients";
    pub const NEXT_LATENTS: &str = "next_latents";
    pub const NEXT_SAMPLE: &str = "next_sample";
}

/// The view names Wonder3D's 6-view model was trained on, in batch order.
pub const VIEW_NAMES: [&str; 6] = [
    "front",
    "front_right",
    "right",
    "back",
    "left",
    "front_left",
];

impl Manifest {
    /// Reads `dir/model.toml` and checks everything that needs no ONNX Runtime.
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        manifest.validate()?;
        for (role, component) in manifest.components() {
            check_file(dir, role.key(), component)?;
        }
        Ok(manifest)
    }

    /// The components present, with their roles.
    pub fn components(&self) -> Vec<(Role, &Component)> {
        let c = &self.components;
        let mut out = vec![
            (Role::ImageEncoder, &c.image_encoder),
            (Role::VaeEncoder, &c.vae_encoder),
        ];
        if let Some(u) = &c.unet_b12 {
            out.push((Role::Unet(12), u));
        }
        if let Some(u) = &c.unet_b24 {
            out.push((Role::Unet(24), u));
        }
        out.push((Role::VaeDecoder, &c.vae_decoder));
        if let Some(s) = &c.step {
            out.push((Role::Step, s));
        }
        out
    }

    /// Side of the latents.
    pub fn latent_size(&self) -> usize {
        self.resolution / 8
    }

    /// Width of the CLIP embedding, from the image encoder's declared output.
    pub fn embed_dim(&self) -> usize {
        self.components
            .image_encoder
            .output(names::IMAGE_EMBEDS)
            .and_then(|t| t.shape.last())
            .map_or(0, |&d| d.max(0) as usize)
    }

    /// Checks the values and the declared tensors against what the pipeline implements.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let value = |key: &str, message: String| ManifestError::Value {
            key: key.to_string(),
            message,
        };
        let s = &self.scheduler;
        let want = |key: &str, got: &str, allowed: &[&str]| {
            if allowed.contains(&got) {
                Ok(())
            } else {
                Err(value(
                    key,
                    format!("{got:?} is not implemented (expected {allowed:?})"),
                ))
            }
        };
        want("scheduler.kind", &s.kind, &["ddim"])?;
        want(
            "scheduler.beta_schedule",
            &s.beta_schedule,
            &["scaled_linear", "linear"],
        )?;
        want(
            "scheduler.prediction_type",
            &s.prediction_type,
            &["epsilon"],
        )?;
        want(
            "scheduler.timestep_spacing",
            &s.timestep_spacing,
            &["leading"],
        )?;
        if s.clip_sample {
            return Err(value(
                "scheduler.clip_sample",
                "true is not implemented".into(),
            ));
        }
        if s.num_train_timesteps == 0 || !(s.beta_start > 0.0 && s.beta_end < 1.0) {
            return Err(value(
                "scheduler",
                "needs num_train_timesteps >= 1 and 0 < beta_start, beta_end < 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&s.eta) {
            return Err(value(
                "scheduler.eta",
                format!("{} is outside 0..=1", s.eta),
            ));
        }
        if self.sampling.steps == 0 || self.sampling.steps > s.num_train_timesteps {
            return Err(value(
                "sampling.steps",
                format!(
                    "{} is outside 1..={}",
                    self.sampling.steps, s.num_train_timesteps
                ),
            ));
        }
        if self.sampling.guidance_scale.is_nan() || self.sampling.guidance_scale < 1.0 {
            return Err(value(
                "sampling.guidance_scale",
                format!("{} is below 1", self.sampling.guidance_scale),
            ));
        }
        if self.resolution == 0 || !self.resolution.is_multiple_of(8) {
            return Err(value(
                "resolution",
                format!("{} is not a positive multiple of 8", self.resolution),
            ));
        }
        if self.crop_size == 0 || self.crop_size > self.resolution {
            return Err(value(
                "crop_size",
                format!("{} is outside 1..={}", self.crop_size, self.resolution),
            ));
        }
        if self.clip_std.iter().any(|&x| x <= 0.0) || self.clip_resolution == 0 {
            return Err(value(
                "clip_std",
                "must be positive (and clip_resolution > 0)".into(),
            ));
        }
        let names: Vec<&str> = self.views.iter().map(|v| v.name.as_str()).collect();
        if names != VIEW_NAMES {
            return Err(value(
                "views",
                format!("{names:?}: the pipeline needs exactly {VIEW_NAMES:?} in this order"),
            ));
        }
        if self.components.unet_b12.is_none() && self.components.unet_b24.is_none() {
            return Err(value(
                "components",
                "needs unet_b12 (no guidance) or unet_b24 (guidance), or both".into(),
            ));
        }
        for (role, component) in self.components() {
            self.check_role(role, component)?;
        }
        Ok(())
    }

    /// The tensors `role` must declare for the pipeline to drive it.
    fn check_role(&self, role: Role, c: &Component) -> Result<(), ManifestError> {
        let r = self.resolution as i64;
        let l = self.latent_size() as i64;
        let clip = self.clip_resolution as i64;
        let e = self.embed_dim() as i64;
        let any = -1;
        let (inputs, outputs): (Vec<Wanted>, Vec<Wanted>) = match role {
            Role::ImageEncoder => (
                vec![(names::PIXEL_VALUES, "float32", vec![any, 3, clip, clip])],
                vec![(names::IMAGE_EMBEDS, "float32", vec![any, any])],
            ),
            Role::VaeEncoder => (
                vec![(names::SAMPLE, "float32", vec![any, 3, r, r])],
                vec![(names::LATENT_MEAN, "float32", vec![any, 4, l, l])],
            ),
            Role::Unet(n) => {
                let n = n as i64;
                (
                    vec![
                        (names::SAMPLE, "float32", vec![n, 8, l, l]),
                        (names::TIMESTEP, "int64", vec![1]),
                        (names::ENCODER_HIDDEN_STATES, "float32", vec![n, 1, e]),
                        (names::CLASS_LABELS, "float32", vec![n, 10]),
                    ],
                    vec![(names::OUT_SAMPLE, "float32", vec![n, 4, l, l])],
                )
            }
            Role::VaeDecoder => (
                vec![(names::LATENT_SAMPLE, "float32", vec![any, 4, l, l])],
                vec![(names::SAMPLE, "float32", vec![any, 3, r, r])],
            ),
            Role::Step => (
                vec![
                    (names::NOISE_PRED, "float32", vec![any, 4, l, l]),
                    (names::LATENTS, "float32", vec![12, 4, l, l]),
                    (names::IMAGE_LATENTS, "float32", vec![any, 4, l, l]),
                    (names::NOISE, "float32", vec![12, 4, l, l]),
                    (names::COEFFICIENTS, "float32", vec![6]),
                ],
                vec![
                    (names::NEXT_LATENTS, "float32", vec![12, 4, l, l]),
                    (names::NEXT_SAMPLE, "float32", vec![any, 8, l, l]),
                ],
            ),
        };
        let tensor = |message: String| ManifestError::Tensor {
            component: role.key().to_string(),
            message,
        };
        for (kind, wanted, declared) in [
            ("input", &inputs, &c.inputs),
            ("output", &outputs, &c.outputs),
        ] {
            for (name, dtype, shape) in wanted {
                let Some(t) = declared.iter().find(|t| t.name == *name) else {
                    let have: Vec<&str> = declared.iter().map(|t| t.name.as_str()).collect();
                    return Err(tensor(format!(
                        "the pipeline needs {kind} `{name}`; declared: {have:?}"
                    )));
                };
                if t.dtype != *dtype {
                    return Err(tensor(format!(
                        "{kind} `{name}` must be {dtype}, declared {}",
                        t.dtype
                    )));
                }
                let fits = t.shape.len() == shape.len()
                    && t.shape.iter().zip(shape).all(|(&d, &w)| w == -1 || d == w);
                if !fits {
                    return Err(tensor(format!(
                        "{kind} `{name}` must have shape {shape:?} (-1 = any), declared {:?}",
                        t.shape
                    )));
                }
            }
        }
        if role == Role::ImageEncoder && e <= 0 {
            return Err(tensor(
                "output `image_embeds` needs a fixed embedding width".into(),
            ));
        }
        Ok(())
    }
}

fn check_file(dir: &Path, component: &str, c: &Component) -> Result<(), ManifestError> {
    let path = dir.join(&c.file);
    if !path.is_file() {
        return Err(ManifestError::MissingFile {
            component: component.to_string(),
            path,
        });
    }
    let read_error = |source| ManifestError::ReadFile {
        component: component.to_string(),
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::open(&path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(read_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != c.sha256.to_ascii_lowercase() {
        return Err(ManifestError::Checksum {
            component: component.to_string(),
            path,
            expected: c.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// One input or output of an opened session, as ONNX Runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTensor {
    /// Name in the graph.
    pub name: String,
    /// `float32`, `int64`, ... (`other` for non-tensors).
    pub dtype: String,
    /// Dimensions, -1 where dynamic.
    pub shape: Vec<i64>,
}

impl SessionTensor {
    /// From `ort`'s description of a session input or output.
    pub fn from_outlet(outlet: &ort::value::Outlet) -> SessionTensor {
        use ort::value::TensorElementType as T;
        let dtype = match outlet.dtype().tensor_type() {
            Some(T::Float32) => "float32",
            Some(T::Float16) => "float16",
            Some(T::Float64) => "float64",
            Some(T::Int64) => "int64",
            Some(T::Int32) => "int32",
            Some(_) => "other tensor",
            None => "not a tensor",
        };
        SessionTensor {
            name: outlet.name().to_string(),
            dtype: dtype.to_string(),
            shape: outlet
                .dtype()
                .tensor_shape()
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        }
    }
}

/// Checks a component's declared tensors against what ONNX Runtime reports for its file.
pub fn check_session(
    role: Role,
    c: &Component,
    inputs: &[SessionTensor],
    outputs: &[SessionTensor],
) -> Result<(), ManifestError> {
    let tensor = |message: String| ManifestError::Tensor {
        component: role.key().to_string(),
        message,
    };
    for (kind, declared, actual) in [
        ("input", &c.inputs, inputs),
        ("output", &c.outputs, outputs),
    ] {
        for d in declared {
            let Some(a) = actual.iter().find(|a| a.name == d.name) else {
                let have: Vec<&str> = actual.iter().map(|a| a.name.as_str()).collect();
                return Err(tensor(format!(
                    "{kind} `{}` is declared but {} has no such {kind} (it has {have:?})",
                    d.name, c.file
                )));
            };
            if a.dtype != d.dtype {
                return Err(tensor(format!(
                    "{kind} `{}` is declared {} but is {} in {}",
                    d.name, d.dtype, a.dtype, c.file
                )));
            }
            if a.shape.len() != d.shape.len() {
                return Err(tensor(format!(
                    "{kind} `{}` is declared with rank {} {:?} but has rank {} {:?} in {}",
                    d.name,
                    d.shape.len(),
                    d.shape,
                    a.shape.len(),
                    a.shape,
                    c.file
                )));
            }
            let dims_differ = d
                .shape
                .iter()
                .zip(&a.shape)
                .any(|(&dd, &ad)| dd != ad && ad >= 0);
            let declared_dynamic_is_fixed = d
                .shape
                .iter()
                .zip(&a.shape)
                .any(|(&dd, &ad)| dd < 0 && ad >= 0);
            if dims_differ && !declared_dynamic_is_fixed {
                return Err(tensor(format!(
                    "{kind} `{}` is declared with shape {:?} but has {:?} in {}",
                    d.name, d.shape, a.shape, c.file
                )));
            }
        }
        for a in actual {
            if !declared.iter().any(|d| d.name == a.name) {
                return Err(tensor(format!(
                    "{} has {kind} `{}` {} {:?} that model.toml does not declare",
                    c.file, a.name, a.dtype, a.shape
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: &str, shape: &[i64]) -> SessionTensor {
        SessionTensor {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
        }
    }

    fn component() -> Component {
        Component {
            file: "x.onnx".into(),
            sha256: String::new(),
            inputs: vec![TensorSpec {
                name: "sample".into(),
                dtype: "float32".into(),
                shape: vec![-1, 4, 32, 32],
            }],
            outputs: vec![TensorSpec {
                name: "out".into(),
                dtype: "float32".into(),
                shape: vec![-1, 3],
            }],
        }
    }

    #[test]
    fn session_check_names_each_mismatch() {
        let c = component();
        let ok_out = [spec("out", "float32", &[-1, 3])];
        let check = |inputs: &[SessionTensor]| check_session(Role::VaeDecoder, &c, inputs, &ok_out);
        assert!(check(&[spec("sample", "float32", &[-1, 4, 32, 32])]).is_ok());
        // a dynamic batch exported as fixed still fits a -1 declaration
        assert!(check(&[spec("sample", "float32", &[12, 4, 32, 32])]).is_ok());
        let err = check(&[spec("latents", "float32", &[-1, 4, 32, 32])]).unwrap_err();
        assert!(err.to_string().contains("`sample` is declared"), "{err}");
        let err = check(&[spec("sample", "float16", &[-1, 4, 32, 32])]).unwrap_err();
        assert!(err.to_string().contains("float16"), "{err}");
        let err = check(&[spec("sample", "float32", &[-1, 4, 32])]).unwrap_err();
        assert!(err.to_string().contains("rank"), "{err}");
        let err = check(&[spec("sample", "float32", &[-1, 4, 64, 64])]).unwrap_err();
        assert!(err.to_string().contains("[-1, 4, 64, 64]"), "{err}");
    }

    #[test]
    fn the_shipped_head_parses_with_wonder3d_defaults() {
        let head = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/manifest_head.toml"),
        )
        .unwrap();
        #[derive(Deserialize)]
        struct Head {
            scheduler: SchedulerConfig,
            sampling: Sampling,
            views: Vec<ViewSpec>,
        }
        let h: Head = toml::from_str(&head).unwrap();
        assert_eq!(h.scheduler, SchedulerConfig::default());
        assert_eq!(h.sampling.steps, 50);
        assert_eq!(h.sampling.guidance_scale, 3.0);
        assert_eq!(h.views.len(), 6);
    }
}
