//! The `mvdiffusion` pipeline end to end: one key image of the series -> six generated views
//! ([`super::mvdiffusion`]) -> NeuS fit ([`super::neus`]) -> a mesh in the source's patient
//! coordinates.
//!
//! The two stages know nothing of each other: the diffusion stage hands over images and the
//! frame of its canvas on the key image, and this module turns that frame into the NeuS
//! [`Placement`] so that the mesh lands on the key slice, in the series' Frame of Reference.

use std::time::Instant;

use tracing::{info, warn};

use super::ReconError;
use super::mvdiffusion::{MvDiffusionError, Pipeline, RunOptions, SixViews};
use super::neus::{NeusSettings, Placement, View, ViewKind, ViewSet};
use crate::mesh::{Mesh, MeshMetrics};
use crate::volume::Volume;

/// Settings of both stages.
#[derive(Debug, Clone, Default)]
pub struct MultiviewOptions {
    /// The diffusion run (key image, windowing, seed, steps, guidance).
    pub run: RunOptions,
    /// The NeuS fit.
    pub neus: NeusSettings,
}

/// A surface made from generated views.
#[derive(Debug, Clone)]
pub struct MultiviewResult {
    /// The mesh, in patient mm (LPS), watertight.
    pub mesh: Mesh,
    /// Its metrics.
    pub metrics: MeshMetrics,
    /// What it is (the Document Title).
    pub description: String,
}

/// Runs both stages on an assembled volume. Blocking and CPU/GPU-bound.
pub fn reconstruct(
    vol: &Volume,
    pipeline: &Pipeline,
    opts: &MultiviewOptions,
) -> Result<MultiviewResult, ReconError> {
    let started = Instant::now();
    let views = pipeline.run(vol, &opts.run).map_err(diffusion)?;
    let diffusion_seconds = started.elapsed().as_secs_f64();
    let placement = placement(vol, &views)?;
    let set = view_set(&views)?;
    let fit = super::neus::reconstruct(&set, &opts.neus, &placement)?;
    let metrics = crate::mesh::metrics(&fit.mesh);
    if metrics.triangles == 0 {
        return Err(ReconError::EmptySurface {
            iso: 0.0,
            what: "the fitted signed distance field has no zero level set".into(),
        });
    }
    info!(
        series_instance_uid = %vol.series_instance_uid,
        key_slice = views.condition.slice,
        provider = ?views.stats.provider,
        diffusion_seconds = format_args!("{diffusion_seconds:.2}"),
        neus_device = ?fit.report.device,
        neus_steps = fit.report.steps,
        neus_seconds = format_args!("{:.2}", fit.report.fit_seconds),
        triangles = metrics.triangles,
        watertight = metrics.watertight,
        "surface reconstructed from six generated views"
    );
    Ok(MultiviewResult {
        mesh: fit.mesh,
        metrics,
        description: format!(
            "Surface from six generated views (key slice {}, {} NeuS steps)",
            views.condition.slice + 1,
            fit.report.steps
        ),
    })
}

fn diffusion(e: MvDiffusionError) -> ReconError {
    ReconError::Options(format!("six-view diffusion failed: {e}"))
}

/// The diffusion stage's views as the NeuS stage takes them (same names, same order).
pub fn view_set(views: &SixViews) -> Result<ViewSet, ReconError> {
    let mut out = Vec::with_capacity(views.views.len());
    for v in &views.views {
        let kind = ViewKind::ALL
            .into_iter()
            .find(|k| k.name() == v.name)
            .ok_or_else(|| {
                ReconError::Options(format!(
                    "the model produced a view `{}` that NeuS has no camera for",
                    v.name
                ))
            })?;
        out.push(View {
            kind,
            normals: v.normal.clone(),
            mask: v.mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect(),
            color: Some(v.colour.clone()),
        });
    }
    Ok(ViewSet {
        width: views.resolution,
        height: views.resolution,
        views: out,
    })
}

/// Where the front view's canvas lies in patient coordinates: its centre on the key slice,
/// its columns along the image rows' direction, half its width in mm as the NeuS world unit.
pub fn placement(vol: &Volume, views: &SixViews) -> Result<Placement, ReconError> {
    let frame = views.condition.frame;
    let half = (views.resolution as f64 - 1.0) * 0.5;
    let [i, j] = frame.to_key(half, half);
    let centre = vol.voxel_to_patient(i, j, views.condition.slice as f64);
    let [sx, sy, _] = vol.spacing;
    if (sx - sy).abs() > 0.01 * sx.max(sy) {
        warn!(
            column_mm = sx,
            row_mm = sy,
            "non-square pixels: the generated views are square, the reconstruction uses the column spacing in both directions"
        );
    }
    // The affine's first two columns: one column step and one row step in mm.
    let right = [0, 1, 2].map(|r| vol.affine[r][0]);
    let down = [0, 1, 2].map(|r| vol.affine[r][1]);
    let mm_per_unit = views.resolution as f64 * 0.5 / frame.scale * sx;
    Ok(Placement::new(centre, right, down, mm_per_unit)?)
}
