//! The DDIM sampler as Wonder3D configures diffusers' `DDIMScheduler`.
//!
//! Method: Song, Meng and Ermon, "Denoising Diffusion Implicit Models", ICLR 2021 (eq. 12), in
//! the form of diffusers' `DDIMScheduler.step` (0.19, the version Wonder3D pins): betas from the
//! `scaled_linear` schedule (`linspace(sqrt(start), sqrt(end), T)²`, in f32 as diffusers builds
//! them), `alphas_cumprod` their running product, `leading` timestep spacing with
//! `steps_offset`, and `final_alpha_cumprod = alphas_cumprod[0]` when `set_alpha_to_one` is
//! false. With `eta > 0` every step adds `σ_t · z` where `z` is Gaussian noise the caller
//! supplies (so the pipeline can record it for the reference comparison).
//!
//! `scripts/ddim_reference.py` recomputes the same numbers from the formulas with numpy; the
//! tests compare against its output in `testdata/ddim_reference.json`.

use super::manifest::SchedulerConfig;

/// A configured DDIM schedule for one number of inference steps.
#[derive(Debug, Clone)]
pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<i64>,
    step_ratio: i64,
    eta: f32,
}

/// Coefficients of one step, precomputed so the per-step work is one pass over the latents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCoefficients {
    /// `sqrt(ᾱ_t)`.
    pub sqrt_alpha_t: f32,
    /// `sqrt(1 − ᾱ_t)`.
    pub sqrt_beta_t: f32,
    /// `sqrt(ᾱ_prev)`.
    pub sqrt_alpha_prev: f32,
    /// `sqrt(1 − ᾱ_prev − σ²)`: weight of the predicted noise direction.
    pub direction: f32,
    /// `σ_t = eta · sqrt(variance)`: weight of the fresh noise.
    pub std_dev: f32,
}

impl StepCoefficients {
    /// `[sqrt_alpha_t, sqrt_beta_t, sqrt_alpha_prev, direction, std_dev]`, the order of the
    /// step graph's `coefficients` after the guidance scale.
    pub fn to_array(self) -> [f32; 5] {
        [
            self.sqrt_alpha_t,
            self.sqrt_beta_t,
            self.sqrt_alpha_prev,
            self.direction,
            self.std_dev,
        ]
    }
}

impl Ddim {
    /// The schedule for `steps` inference steps; the configuration must already be validated
    /// (see [`super::manifest::Manifest::validate`]).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let t = config.num_train_timesteps;
        let betas: Vec<f32> = match config.beta_schedule.as_str() {
            "linear" => linspace_f32(config.beta_start, config.beta_end, t),
            // scaled_linear: the validated default
            _ => linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), t)
                .into_iter()
                .map(|b| b * b)
                .collect(),
        };
        let mut alphas_cumprod = Vec::with_capacity(t);
        let mut prod = 1.0f32;
        for b in &betas {
            prod *= 1.0 - b;
            alphas_cumprod.push(prod);
        }
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let steps = steps.clamp(1, t);
        let step_ratio = (t / steps) as i64;
        // "leading": 0, r, 2r, ... reversed, plus the offset (diffusers ≥ 0.19).
        let timesteps = (0..steps as i64)
            .rev()
            .map(|i| i * step_ratio + config.steps_offset)
            .collect();
        Ddim {
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
            step_ratio,
            eta: config.eta,
        }
    }

    /// Timesteps from noisiest to cleanest, as given to the UNet.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// `ᾱ` for every training timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// True when steps add fresh noise (eta > 0), i.e. the caller must supply it.
    pub fn needs_noise(&self) -> bool {
        self.eta > 0.0
    }

    /// The coefficients of the step from timestep `t`.
    pub fn coefficients(&self, t: i64) -> StepCoefficients {
        let alpha = |i: i64| -> f64 {
            if i >= 0 {
                f64::from(self.alphas_cumprod[i as usize])
            } else {
                f64::from(self.final_alpha_cumprod)
            }
        };
        let prev_t = t - self.step_ratio;
        let alpha_t = alpha(t);
        let alpha_prev = alpha(prev_t);
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev);
        let std_dev = f64::from(self.eta) * variance.sqrt();
        StepCoefficients {
            sqrt_alpha_t: alpha_t.sqrt() as f32,
            sqrt_beta_t: beta_t.sqrt() as f32,
            sqrt_alpha_prev: alpha_prev.sqrt() as f32,
            direction: (1.0 - alpha_prev - std_dev * std_dev).max(0.0).sqrt() as f32,
            std_dev: std_dev as f32,
        }
    }

    /// One step x_t -> x_{t-1} in place, epsilon prediction, no clipping.
    ///
    /// `noise` must have the length of `sample` when [`Ddim::needs_noise`]; it is ignored
    /// otherwise.
    pub fn step(&self, eps: &[f32], t: i64, sample: &mut [f32], noise: &[f32]) {
        let c = self.coefficients(t);
        let noisy = self.needs_noise() && noise.len() == sample.len();
        for (i, (x, e)) in sample.iter_mut().zip(eps).enumerate() {
            let x0 = (*x - c.sqrt_beta_t * e) / c.sqrt_alpha_t;
            let mut prev = c.sqrt_alpha_prev * x0 + c.direction * e;
            if noisy {
                prev += c.std_dev * noise[i];
            }
            *x = prev;
        }
    }
}

/// `torch.linspace(start, end, n, dtype=float32)`: computed in f64, stored in f32.
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start as f32];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| (start + step * i as f64) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wonder3d() -> SchedulerConfig {
        SchedulerConfig::default()
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        alphas_cumprod_at: Vec<(usize, f64)>,
        timesteps_50: Vec<i64>,
        timesteps_10: Vec<i64>,
        coefficients_50: Vec<(i64, [f64; 5])>,
        step: StepReference,
    }

    #[derive(serde::Deserialize)]
    struct StepReference {
        steps: usize,
        t: i64,
        sample: Vec<f32>,
        eps: Vec<f32>,
        noise: Vec<f32>,
        prev_sample: Vec<f32>,
    }

    fn reference() -> Reference {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/ddim_reference.json");
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn alphas_cumprod_match_the_formula() {
        let ddim = Ddim::new(&wonder3d(), 50);
        for (i, want) in reference().alphas_cumprod_at {
            let got = f64::from(ddim.alphas_cumprod()[i]);
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1e-3),
                "alphas_cumprod[{i}] = {got}, reference {want}"
            );
        }
    }

    #[test]
    fn leading_timesteps_with_offset() {
        let r = reference();
        assert_eq!(Ddim::new(&wonder3d(), 50).timesteps(), &r.timesteps_50[..]);
        assert_eq!(Ddim::new(&wonder3d(), 10).timesteps(), &r.timesteps_10[..]);
        assert_eq!(Ddim::new(&wonder3d(), 50).timesteps()[0], 981);
        assert_eq!(Ddim::new(&wonder3d(), 50).timesteps()[49], 1);
    }

    #[test]
    fn step_coefficients_match_the_formula() {
        let ddim = Ddim::new(&wonder3d(), 50);
        for (t, want) in reference().coefficients_50 {
            let got = ddim.coefficients(t).to_array();
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (f64::from(*g) - w).abs() < 2e-6,
                    "t = {t}: {got:?} vs reference {want:?}"
                );
            }
        }
    }

    #[test]
    fn one_step_with_noise_matches_the_formula() {
        let r = reference().step;
        let ddim = Ddim::new(&wonder3d(), r.steps);
        let mut sample = r.sample.clone();
        ddim.step(&r.eps, r.t, &mut sample, &r.noise);
        for (g, w) in sample.iter().zip(&r.prev_sample) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn last_step_uses_alphas_cumprod_0_not_one() {
        let ddim = Ddim::new(&wonder3d(), 50);
        let c = ddim.coefficients(1);
        assert!((c.sqrt_alpha_prev - ddim.alphas_cumprod()[0].sqrt()).abs() < 1e-7);
        assert!(c.sqrt_alpha_prev < 1.0);
    }
}
