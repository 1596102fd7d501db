//! The optimisation loop: ray and point sampling, the NeuS forward pass, the losses of
//! `neus_ortho.py`, AdamW with the config's schedule.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

use super::camera::{CameraFrame, ViewKind, box_interval, front_to_world};
use super::field::{Grid, Rng, SdfField};
use super::render::{Reduction, composite_weights, neus_alpha, ranking_loss};
use super::{ChosenDevice, FitReport, NeusError, NeusSettings, Placement, ViewSet};
use crate::mesh::Mesh;

/// Per-pixel training targets of one view.
struct ViewData {
    frame: CameraFrame,
    weight: f32,
    /// Foreground flags, row-major.
    fg: Vec<bool>,
    /// Unit world normals (zero on background).
    normals: Vec<[f32; 3]>,
}

fn prepare(views: &ViewSet, settings: &NeusSettings) -> Vec<ViewData> {
    ViewKind::ALL
        .iter()
        .filter_map(|&kind| views.view(kind).map(|v| (kind, v)))
        .map(|(kind, v)| {
            let fg: Vec<bool> = v.mask.iter().map(|&m| m > 0.5).collect();
            let normals = v
                .normals
                .chunks_exact(3)
                .zip(&fg)
                .map(|(c, &f)| {
                    let n = front_to_world([c[0], c[1], c[2]].map(|x| f64::from(x) * 2.0 - 1.0));
                    let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
                    if f && len > 1e-6 {
                        n.map(|x| (x / len) as f32)
                    } else {
                        [0.0; 3]
                    }
                })
                .collect();
            ViewData {
                frame: kind.frame(),
                weight: settings.loss.view_weights[kind.index()],
                fg,
                normals,
            }
        })
        .collect()
}

/// `m` points and their six finite-difference neighbours, clamped to the box, in blocks:
/// `[p, p+ex, p-ex, p+ey, p-ey, p+ez, p-ez]`.
fn with_offsets(pts: &[[f32; 3]], eps: f32, out: &mut Vec<[f32; 3]>) {
    out.extend_from_slice(pts);
    for a in 0..3 {
        for sign in [1.0f32, -1.0] {
            out.extend(pts.iter().map(|p| {
                let mut q = *p;
                q[a] = (q[a] + sign * eps).clamp(-1.0, 1.0);
                q
            }));
        }
    }
}

/// Splits the SDF of a [`with_offsets`] block into values `[m]` and central-difference
/// gradients `[m, 3]` (divided by `2 eps` also where the box clamps, as the original).
fn split_fd<B: Backend>(block: Tensor<B, 1>, m: usize, eps: f32) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let rows = block.reshape([7, m]);
    let row = |i: usize| rows.clone().narrow(0, i, 1).reshape([m, 1]);
    let sdf = row(0).reshape([m]);
    let g: Vec<Tensor<B, 2>> = (0..3)
        .map(|a| (row(1 + 2 * a) - row(2 + 2 * a)).div_scalar(2.0 * eps))
        .collect();
    (sdf, Tensor::cat(g, 1))
}

fn to_f32s<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, NeusError> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| NeusError::Backend(format!("{e:?}")))
}

fn tensor1<B: Backend>(v: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

fn tensor2<B: Backend>(v: Vec<f32>, cols: usize, device: &B::Device) -> Tensor<B, 2> {
    let n = v.len() / cols;
    Tensor::from_data(TensorData::new(v, [n, cols]), device)
}

/// Number of grid levels enabled at `step`.
pub(super) fn active_levels(s: &NeusSettings, step: usize) -> usize {
    (s.grid.start_level + step / s.grid.update_steps).min(s.grid.levels)
}

/// Learning rate at `step`: constant, then exponential down to `final_lr_factor` at the end.
pub(super) fn learning_rate(s: &NeusSettings, step: usize) -> f64 {
    if step < s.constant_steps || s.steps <= s.constant_steps {
        return s.lr;
    }
    let gamma = s
        .final_lr_factor
        .powf(1.0 / (s.steps - s.constant_steps) as f64);
    s.lr * gamma.powi((step - s.constant_steps) as i32)
}

/// Fits the field and extracts the surface on backend `B`.
pub(super) fn fit_and_extract<B: AutodiffBackend>(
    views: &ViewSet,
    s: &NeusSettings,
    placement: &Placement,
    device: &B::Device,
) -> Result<(Mesh, FitReport), NeusError> {
    let data = prepare(views, s);
    let grid = Grid::new(&s.grid);
    let mut rng = Rng::new(s.seed);
    let mut model: SdfField<B> = SdfField::init(
        &grid,
        s.hidden,
        s.sphere_init_radius,
        s.init_variance,
        &mut rng,
        device,
    );
    let mut optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.99)
        .with_epsilon(1e-15)
        .with_weight_decay(s.weight_decay)
        .init::<B, SdfField<B>>();
    let (w, h) = (views.width, views.height);
    let (nr, ns, nm) = (s.rays_per_batch, s.samples_per_ray, s.random_points);
    let started = Instant::now();
    let mut last_loss = f32::NAN;
    let mut pts: Vec<[f32; 3]> = Vec::new();
    let mut all: Vec<[f32; 3]> = Vec::new();
    for step in 0..s.steps {
        let lr = learning_rate(s, step);
        let active = active_levels(s, step);
        let res = s.grid.base_resolution * s.grid.per_level_scale.powi(active as i32 - 1);
        let eps = (2.0 / res) as f32;
        let anneal = if s.cos_anneal_end == 0 {
            1.0
        } else {
            (step as f32 / s.cos_anneal_end as f32).min(1.0)
        };

        // Rays from random views and pixels, stratified samples over the box crossing.
        let mut dirs = Vec::with_capacity(nr * ns * 3);
        let mut dists = Vec::with_capacity(nr * ns);
        let mut fg = Vec::with_capacity(nr);
        let mut target = Vec::with_capacity(nr * 3);
        let mut view_w = Vec::with_capacity(nr);
        let mut cosines = Vec::with_capacity(nr);
        pts.clear();
        for _ in 0..nr {
            let v = &data[rng.below(data.len())];
            let (i, j) = (rng.below(w), rng.below(h));
            let (o, d) = v.frame.ray(i, j, w, h);
            let (t0, t1) = box_interval(o, d).unwrap_or((-1.0, 1.0));
            let dt = (t1 - t0) / ns as f64;
            for k in 0..ns {
                let t = t0 + (k as f64 + rng.uniform()) * dt;
                pts.push(std::array::from_fn(|a| (o[a] + t * d[a]) as f32));
                dirs.extend(d.map(|x| x as f32));
                dists.push(dt as f32);
            }
            let px = j * w + i;
            let n = v.normals[px];
            let c = n[0] * d[0] as f32 + n[1] * d[1] as f32 + n[2] * d[2] as f32;
            fg.push(v.fg[px]);
            target.extend(n);
            view_w.push(v.weight);
            cosines.push(if c > -0.1 { 0.0 } else { c });
        }
        let rand: Vec<[f32; 3]> = (0..nm)
            .map(|_| std::array::from_fn(|_| (rng.uniform() * 2.0 - 1.0) as f32))
            .collect();
        let pert: Vec<[f32; 3]> = rand
            .iter()
            .map(|p| p.map(|x| x + (rng.normal() * 1e-2) as f32))
            .collect();
        all.clear();
        with_offsets(&pts, eps, &mut all);
        with_offsets(&rand, eps, &mut all);
        with_offsets(&pert, eps, &mut all);

        let sdf_all = model.sdf(&grid, &all, active, device);
        let n_s = nr * ns;
        let (sdf_s, grad_s) = split_fd(sdf_all.clone().narrow(0, 0, 7 * n_s), n_s, eps);
        let (sdf_r, grad_r) = split_fd(sdf_all.clone().narrow(0, 7 * n_s, 7 * nm), nm, eps);
        let (_, grad_p) = split_fd(sdf_all.narrow(0, 7 * (n_s + nm), 7 * nm), nm, eps);

        // NeuS rendering.
        let gnorm = grad_s.clone().powi_scalar(2).sum_dim(1).sqrt();
        let normal = grad_s / gnorm.clone().clamp_min(1e-12);
        let dirs_t = tensor2::<B>(dirs, 3, device);
        let true_cos = (dirs_t * normal.clone()).sum_dim(1).reshape([nr, ns]);
        let alpha = neus_alpha(
            sdf_s.reshape([nr, ns]),
            true_cos,
            tensor2::<B>(dists, ns, device),
            model.inv_s(),
            anneal,
        );
        let weights = composite_weights(alpha);
        let opacity = weights.clone().sum_dim(1).reshape([nr]);
        let comp = (weights.reshape([nr, ns, 1]) * normal.reshape([nr, ns, 3]))
            .sum_dim(1)
            .reshape([nr, 3]);
        let comp_len = comp
            .clone()
            .powi_scalar(2)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        let comp = comp / comp_len;

        // Normal loss on foreground rays that see the surface from the front.
        let l = &s.loss;
        let mut err = (comp * tensor2::<B>(target, 3, device))
            .sum_dim(1)
            .reshape([nr])
            .neg()
            .add_scalar(1.0);
        let normal_mode = if l.geo_aware {
            let e: Vec<f32> = cosines.iter().map(|c| c.abs().exp()).collect();
            let total: f32 = e.iter().sum();
            err = err * tensor1::<B>(e.iter().map(|x| x / total).collect(), device);
            Reduction::Sum
        } else {
            Reduction::Mean
        };
        let keep: Vec<i64> = (0..nr)
            .filter(|&r| fg[r] && cosines[r] < -0.1)
            .map(|r| r as i64)
            .collect();
        let view_wt = tensor1::<B>(view_w, device);
        let loss_normal = if keep.is_empty() {
            Tensor::zeros([1], device)
        } else {
            let k = keep.len();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(keep, [k]), device);
            ranking_loss(
                err.select(0, idx.clone()),
                l.normal_p,
                Some(view_wt.clone().select(0, idx)),
                normal_mode,
                l.ranking,
            )?
        };

        // Mask BCE.
        let o = opacity.clamp(1e-3, 1.0 - 1e-3);
        let m = tensor1::<B>(
            fg.iter().map(|&f| if f { 1.0 } else { 0.0 }).collect(),
            device,
        );
        let bce = (m.clone() * o.clone().log()
            + m.neg().add_scalar(1.0) * o.neg().add_scalar(1.0).log())
        .neg();
        let loss_mask = ranking_loss(bce, l.mask_p, Some(view_wt), Reduction::Mean, l.ranking)?;

        let loss_eik = gnorm.sub_scalar(1.0).powi_scalar(2).mean();
        let loss_sparse = sdf_r.abs().mul_scalar(-l.sparsity_scale).exp().mean();
        let loss_smooth = (grad_r - grad_p).abs().mean();
        let loss = loss_normal.clone().mul_scalar(l.normal)
            + loss_mask.clone().mul_scalar(l.mask)
            + loss_eik.clone().mul_scalar(l.eikonal)
            + loss_sparse.clone().mul_scalar(l.sparsity)
            + loss_smooth.clone().mul_scalar(l.normal_smooth);

        if tracing::enabled!(tracing::Level::TRACE) && step % 25 == 0 {
            let terms = [
                ("normal", &loss_normal),
                ("mask", &loss_mask),
                ("eikonal", &loss_eik),
                ("sparsity", &loss_sparse),
                ("smooth", &loss_smooth),
            ];
            for (name, t) in terms {
                let v = to_f32s(t.clone())?;
                tracing::trace!(
                    step,
                    term = name,
                    value = v.first().copied().unwrap_or(f32::NAN)
                );
            }
        }
        let grads = loss.backward();
        let value = to_f32s(loss)?.first().copied().unwrap_or(f32::NAN);
        if !value.is_finite() {
            return Err(NeusError::Diverged { step, loss: value });
        }
        last_loss = value;
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(lr, model, grads);
        if step % 100 == 0 || step + 1 == s.steps {
            tracing::debug!(step, loss = value, lr, levels = active, "neus step");
        }
    }
    let fit_seconds = started.elapsed().as_secs_f64();
    let final_inv_s = to_f32s(model.inv_s())?.first().copied().unwrap_or(f32::NAN);
    let active = active_levels(s, s.steps.saturating_sub(1));
    let started = Instant::now();
    let field = model.valid();
    let mesh = super::extract::surface(&field, &grid, active, s.mc_resolution, placement, device)?;
    let extract_seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        steps = s.steps,
        fit_seconds,
        extract_seconds,
        loss = last_loss,
        inv_s = final_inv_s,
        triangles = mesh.triangle_count(),
        "neus fit done"
    );
    Ok((
        mesh,
        FitReport {
            device: ChosenDevice::Cpu,
            fallback: None,
            steps: s.steps,
            fit_seconds,
            extract_seconds,
            final_loss: last_loss,
            final_inv_s,
        },
    ))
}
