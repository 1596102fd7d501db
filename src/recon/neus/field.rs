//! The SDF network: a multiresolution grid encoding (dense where a level fits its table,
//! spatially hashed where not, as tiny-cuda-nn's `HashGrid`) with progressively enabled
//! levels, the raw coordinates beside it (`include_xyz`), and a one-hidden-layer MLP with
//! softplus(beta = 100) and sphere initialisation.
//!
//! Corner indices and trilinear weights are computed on the host: the fit takes SDF
//! gradients by finite differences, so nothing needs derivatives with respect to positions,
//! and the tensors only see an index `select` (whose backward is a scatter-add into the
//! tables) and small matrix products.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use super::GridSettings;
use super::render::softplus;

/// Spatial hash primes of Teschner et al. 2003, as tiny-cuda-nn uses them.
const PRIMES: [u64; 3] = [1, 2_654_435_761, 805_459_861];

/// One level of the encoding, host side.
#[derive(Debug, Clone, Copy)]
pub(super) struct Level {
    /// Grid cells per unit of the [0, 1] input (tiny-cuda-nn's `scale`).
    scale: f64,
    /// Vertices per axis when dense.
    res: u64,
    /// Entries of the table.
    size: usize,
    /// Dense indexing (the level fits its table).
    dense: bool,
}

/// The host-side description of the encoding.
#[derive(Debug, Clone)]
pub(super) struct Grid {
    pub(super) levels: Vec<Level>,
    pub(super) features: usize,
}

impl Grid {
    pub(super) fn new(g: &GridSettings) -> Grid {
        let cap = 1usize << g.log2_table_size;
        let levels = (0..g.levels)
            .map(|l| {
                let scale = g.base_resolution * g.per_level_scale.powi(l as i32) - 1.0;
                let res = scale.ceil() as u64 + 1;
                let dense_size = res.saturating_pow(3);
                let dense = dense_size <= cap as u64;
                let size = if dense { dense_size as usize } else { cap };
                Level {
                    scale,
                    res,
                    size,
                    dense,
                }
            })
            .collect();
        Grid {
            levels,
            features: g.features_per_level,
        }
    }

    /// Width of the MLP input: xyz plus every level's features.
    pub(super) fn input_dims(&self) -> usize {
        3 + self.levels.len() * self.features
    }

    /// Corner indices (`8 n`) and trilinear weights (`8 n`) of level `l` for world points.
    fn corners(&self, l: usize, pts: &[[f32; 3]]) -> (Vec<i64>, Vec<f32>) {
        let parts: Vec<(Vec<i64>, Vec<f32>)> = pts
            .par_chunks(8192)
            .map(|c| self.corners_seq(l, c))
            .collect();
        let mut idx = Vec::with_capacity(pts.len() * 8);
        let mut wts = Vec::with_capacity(pts.len() * 8);
        for (i, w) in parts {
            idx.extend(i);
            wts.extend(w);
        }
        (idx, wts)
    }

    fn corners_seq(&self, l: usize, pts: &[[f32; 3]]) -> (Vec<i64>, Vec<f32>) {
        let lv = self.levels[l];
        let mut idx = Vec::with_capacity(pts.len() * 8);
        let mut wts = Vec::with_capacity(pts.len() * 8);
        for p in pts {
            let mut base = [0u64; 3];
            let mut frac = [0f64; 3];
            for a in 0..3 {
                let x01 = ((f64::from(p[a]) + 1.0) * 0.5).clamp(0.0, 1.0);
                let pos = x01 * lv.scale + 0.5;
                let f = pos.floor();
                base[a] = f as u64;
                frac[a] = pos - f;
            }
            for c in 0..8u64 {
                let mut w = 1.0;
                let mut q = [0u64; 3];
                for a in 0..3 {
                    let bit = (c >> a) & 1;
                    q[a] = base[a] + bit;
                    w *= if bit == 1 { frac[a] } else { 1.0 - frac[a] };
                }
                let i = if lv.dense {
                    let r = lv.res;
                    (q[0].min(r - 1) + r * (q[1].min(r - 1) + r * q[2].min(r - 1))) as usize
                } else {
                    let h = (q[0].wrapping_mul(PRIMES[0]))
                        ^ (q[1].wrapping_mul(PRIMES[1]))
                        ^ (q[2].wrapping_mul(PRIMES[2]));
                    (h % lv.size as u64) as usize
                };
                idx.push(i as i64);
                wts.push(w as f32);
            }
        }
        (idx, wts)
    }
}

/// The trainable SDF: grid tables, the MLP and NeuS's variance parameter.
#[derive(Module, Debug)]
pub(super) struct SdfField<B: Backend> {
    /// One `[size, features]` table per level.
    tables: Vec<Param<Tensor<B, 2>>>,
    w1: Param<Tensor<B, 2>>,
    b1: Param<Tensor<B, 1>>,
    w2: Param<Tensor<B, 2>>,
    b2: Param<Tensor<B, 1>>,
    /// NeuS's `variance`; the inverse variance is `exp(10 * variance)`.
    variance: Param<Tensor<B, 1>>,
}

impl<B: Backend> SdfField<B> {
    /// Sphere initialisation (SAL): the field starts as `|x| - radius`; tables start
    /// uniform in ±1e-4 (tiny-cuda-nn's default).
    pub(super) fn init(
        grid: &Grid,
        hidden: usize,
        radius: f32,
        variance: f32,
        rng: &mut Rng,
        device: &B::Device,
    ) -> SdfField<B> {
        let f = grid.features;
        let tables = grid
            .levels
            .iter()
            .map(|lv| {
                let v: Vec<f32> = (0..lv.size * f)
                    .map(|_| (rng.uniform() as f32 * 2.0 - 1.0) * 1e-4)
                    .collect();
                Param::from_tensor(Tensor::from_data(TensorData::new(v, [lv.size, f]), device))
            })
            .collect();
        let din = grid.input_dims();
        let std1 = (2.0f64).sqrt() / (hidden as f64).sqrt();
        let mut w1 = vec![0f32; din * hidden];
        for row in w1.iter_mut().take(3 * hidden) {
            *row = (rng.normal() * std1) as f32;
        }
        let mean2 = std::f64::consts::PI.sqrt() / (hidden as f64).sqrt();
        let w2: Vec<f32> = (0..hidden)
            .map(|_| (mean2 + rng.normal() * 1e-4) as f32)
            .collect();
        let t2 = |v: Vec<f32>, s: [usize; 2]| {
            Param::from_tensor(Tensor::from_data(TensorData::new(v, s), device))
        };
        let t1 = |v: Vec<f32>| {
            let n = v.len();
            Param::from_tensor(Tensor::from_data(TensorData::new(v, [n]), device))
        };
        SdfField {
            tables,
            w1: t2(w1, [din, hidden]),
            b1: t1(vec![0.0; hidden]),
            w2: t2(w2, [hidden, 1]),
            b2: t1(vec![-radius]),
            variance: t1(vec![variance]),
        }
    }

    /// `inv_s = exp(10 * variance)`, shape `[1]`, clipped to [1e-6, 1e6] as the original.
    pub(super) fn inv_s(&self) -> Tensor<B, 1> {
        self.variance.val().mul_scalar(10.0).exp().clamp(1e-6, 1e6)
    }

    /// SDF at world points, `[n]`. Levels from `active` on are masked out (progressive).
    pub(super) fn sdf(
        &self,
        grid: &Grid,
        pts: &[[f32; 3]],
        active: usize,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let n = pts.len();
        let f = grid.features;
        let xyz: Vec<f32> = pts.iter().flatten().copied().collect();
        let mut parts = vec![Tensor::<B, 2>::from_data(
            TensorData::new(xyz, [n, 3]),
            device,
        )];
        let active = active.min(self.tables.len());
        for (l, table) in self.tables.iter().enumerate().take(active) {
            let (idx, wts) = grid.corners(l, pts);
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [8 * n]), device);
            let wts = Tensor::<B, 3>::from_data(TensorData::new(wts, [n, 8, 1]), device);
            let feats = table.val().select(0, idx).reshape([n, 8, f]);
            parts.push((feats * wts).sum_dim(1).reshape([n, f]));
        }
        // Disabled levels would contribute zeros: leave them and their weights out.
        let x = Tensor::cat(parts, 1);
        let w1 = self.w1.val().narrow(0, 0, 3 + active * f);
        let h = x.matmul(w1) + self.b1.val().unsqueeze::<2>();
        let h = softplus(h, 100.0);
        let out = h.matmul(self.w2.val()) + self.b2.val().unsqueeze::<2>();
        out.reshape([n])
    }
}

/// A small deterministic generator (SplitMix64), so fits are reproducible from the seed.
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(super) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    pub(super) fn below(&mut self, n: usize) -> usize {
        ((self.uniform() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// Standard normal (Box-Muller).
    pub(super) fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
