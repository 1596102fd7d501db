//! The `iso` pipeline: threshold segmentation, marching cubes, cleanup (which connected
//! pieces to keep), smoothing and simplification.
//!
//! The threshold is applied in *stored* units (the volume keeps stored values, see
//! [`crate::volume::Volume::stored_threshold`]), so a 512x512x300 CT is never copied into a
//! float buffer unless pre-smoothing asks for one. On integer voxels the stored threshold is
//! moved to the half unit below the first integer it admits (`v >= 1324` becomes
//! `v > 1323.5`): the inside set is the same, but no sample equals the threshold, so marching
//! cubes never puts a vertex on a grid point, where several vertices would coincide and make
//! zero-area triangles (non-manifold once an STL reader merges them by position).
//!
//! Which pieces are kept is a policy per structure ([`Keep`]): the largest, all, or those
//! inside the patient's body ([`crate::volume::BodyMask`]), which removes tables and
//! head-rests without dropping a mandible or a vertebra separated at a joint; in every
//! policy pieces enclosing less than [`IsoOptions::min_component_mm3`] go. Every dropped piece
//! is reported in [`IsoResult::dropped`].
//!
//! Defaults are tuned on the analytic phantoms of the test suite: Taubin smoothing (10 passes,
//! λ 0.5, μ -0.53, then each closed piece's enclosed volume restored, see
//! [`crate::mesh::taubin_smooth`]) changes the enclosed volume by well under 1 % also on
//! coarse anisotropic CT, and simplification stops at 0.1 mm deviation, so the surface stays
//! within a quarter millimetre of the true one at 1 mm voxels.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::ReconError;
use crate::mesh::{self, McOptions, Mesh, MeshMetrics, SimplifyOptions, TaubinOptions};
use crate::volume::{self, BodyMask, Volume, Voxels};

/// What to segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Preset {
    /// Bone in CT: 300 HU.
    CtBone,
    /// Skin (air/tissue boundary) in CT: -300 HU.
    CtSkin,
    /// Head in MR: a robust background threshold ([`volume::background_threshold`]).
    MrHead,
    /// Otsu's threshold over the whole volume.
    Otsu,
    /// A binary mask series: 0.5.
    Mask,
    /// An explicit iso value in modality units (HU for CT).
    Iso(f64),
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ct-bone" => Ok(Preset::CtBone),
            "ct-skin" => Ok(Preset::CtSkin),
            "mr-head" => Ok(Preset::MrHead),
            "otsu" => Ok(Preset::Otsu),
            "mask" => Ok(Preset::Mask),
            other => other
                .strip_prefix("iso:")
                .unwrap_or(other)
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Preset::Iso)
                .ok_or_else(|| {
                    format!(
                        "unknown preset `{s}`: use ct-bone, ct-skin, mr-head, otsu, mask, or a number (iso value in modality units)"
                    )
                }),
        }
    }
}

/// A preset name or, as a number, an iso value: `preset = "ct-bone"`, `preset = 250`,
/// `preset = "iso:-400"`.
impl<'de> serde::Deserialize<'de> for Preset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Value(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Value(v) if v.is_finite() => Ok(Preset::Iso(v)),
            Raw::Value(v) => Err(serde::de::Error::custom(format!(
                "iso value {v} is not a finite number"
            ))),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Preset::CtBone => f.write_str("ct-bone"),
            Preset::CtSkin => f.write_str("ct-skin"),
            Preset::MrHead => f.write_str("mr-head"),
            Preset::Otsu => f.write_str("otsu"),
            Preset::Mask => f.write_str("mask"),
            Preset::Iso(v) => write!(f, "{v}"),
        }
    }
}

impl Preset {
    /// The keep policy when a structure names none: bone is kept [inside the
    /// body](Keep::InsideBody) (a skull and a separate mandible are both wanted, the head-rest
    /// at a bone threshold is not), every other surface is one [largest](Keep::Largest) piece
    /// (the skin, a brain mask: what is not joined to it is table, noise or a cushion).
    pub fn default_keep(self) -> Keep {
        match self {
            Preset::CtBone => Keep::InsideBody,
            _ => Keep::Largest,
        }
    }
}

/// Which connected pieces of a surface to keep (`keep = "inside-body"` in a rule,
/// `--keep inside-body` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(try_from = "String")]
pub enum Keep {
    /// The largest piece only (by triangle count).
    Largest,
    /// Every piece at least the minimum size.
    All,
    /// The pieces inside the patient's body (the largest component at the skin threshold,
    /// holes filled): at least half of a piece's vertices must lie in a grid cell that has a
    /// body voxel (the body dilated by up to one voxel, so a surface drawn half a voxel
    /// outside the tissue it wraps still counts as inside).
    InsideBody,
}

crate::choice!(Keep);

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Keep::Largest => "largest",
            Keep::All => "all",
            Keep::InsideBody => "inside-body",
        })
    }
}

/// Default [`IsoOptions::min_component_mm3`]: 50 mm³, a sphere of 4.6 mm diameter. Smaller
/// pieces at a bone or skin threshold are noise, beam-hardening specks, vessel calcifications
/// and positioning markers, none of which a surgeon plans on; a real bone fragment of that
/// size is below what a 1-3 mm CT renders faithfully anyway. Measured in volume, not
/// triangles, so the rule means the same at every voxel size.
pub const DEFAULT_MIN_COMPONENT_MM3: f64 = 50.0;

/// Why a connected piece of the surface was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// It encloses less than the minimum size.
    Small,
    /// Policy [`Keep::Largest`] and it is not the largest.
    NotLargest,
    /// Policy [`Keep::InsideBody`] and it lies outside the body.
    OutsideBody,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::Small => "smaller than the minimum size",
            DropReason::NotLargest => "not the largest",
            DropReason::OutsideBody => "outside the body",
        })
    }
}

/// A connected piece of the surface that cleanup dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DroppedComponent {
    /// Why.
    pub reason: DropReason,
    /// |enclosed volume| in mm³ (for a hollow piece: outer minus inner).
    pub volume_mm3: f64,
    /// The piece's vertex centroid, patient LPS mm (of the raw marching-cubes surface).
    pub centre_mm: [f64; 3],
    /// Its triangles in the raw marching-cubes surface.
    pub triangles: usize,
}

/// Settings of the `iso` pipeline (one structure); `Default` is what the node uses.
#[derive(Debug, Clone)]
pub struct IsoOptions {
    /// What to segment.
    pub preset: Preset,
    /// Gaussian pre-smoothing sigma in mm (`None` = off). Costs a float copy of the volume.
    pub smooth_sigma_mm: Option<f64>,
    /// Which pieces to keep; `None` = [`Preset::default_keep`].
    pub keep: Option<Keep>,
    /// Pieces enclosing less than this (mm³) are dropped, whatever the policy (default
    /// [`DEFAULT_MIN_COMPONENT_MM3`]).
    pub min_component_mm3: f64,
    /// Taubin smoothing of the mesh (`None` = off).
    pub taubin: Option<TaubinOptions>,
    /// meshoptimizer simplification (`None` = off).
    pub simplify: Option<SimplifyOptions>,
    /// Marching cubes threads (`None` = rayon's pool, all cores).
    pub threads: Option<usize>,
}

impl Default for IsoOptions {
    fn default() -> Self {
        IsoOptions {
            preset: Preset::CtBone,
            smooth_sigma_mm: None,
            keep: None,
            min_component_mm3: DEFAULT_MIN_COMPONENT_MM3,
            taubin: Some(TaubinOptions::default()),
            simplify: Some(SimplifyOptions {
                target_ratio: 0.25,
                target_error_mm: 0.1,
                lock_border: false,
            }),
            threads: None,
        }
    }
}

/// Pipeline stages, for progress reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Choosing the threshold / pre-smoothing.
    Segment,
    /// Marching cubes.
    Surface,
    /// Connected components.
    Cleanup,
    /// Taubin smoothing.
    Smooth,
    /// Simplification.
    Simplify,
}

/// A reconstructed surface.
#[derive(Debug, Clone)]
pub struct IsoResult {
    /// The mesh, in patient mm (LPS).
    pub mesh: Mesh,
    /// Its metrics.
    pub metrics: MeshMetrics,
    /// The iso value used, in modality units.
    pub iso_value: f64,
    /// What the surface is, e.g. "Bone surface, iso 300 HU" (the Document Title).
    pub description: String,
    /// Wall time per stage.
    pub timings: Vec<(Stage, Duration)>,
    /// The keep policy applied.
    pub keep: Keep,
    /// The pieces cleanup dropped, largest (by triangles) first.
    pub dropped: Vec<DroppedComponent>,
}

/// Runs the pipeline on an assembled volume. `progress` is told when each stage starts.
pub fn reconstruct(
    vol: &Volume,
    opts: &IsoOptions,
    progress: &mut dyn FnMut(Stage),
) -> Result<IsoResult, ReconError> {
    let mut results = reconstruct_all(vol, std::slice::from_ref(opts), &mut |_, s| progress(s))?;
    results
        .pop()
        .ok_or(ReconError::Options("no structure was asked for".into()))
}

/// Runs the pipeline once per structure on one volume; results in the order given.
/// `progress` is told the structure's index and the stage when each stage starts. Work that
/// does not depend on the structure is done once: the volume check, and the body mask
/// (computed the first time a structure keeps [`Keep::InsideBody`], from the unsmoothed
/// volume).
pub fn reconstruct_all(
    vol: &Volume,
    structures: &[IsoOptions],
    progress: &mut dyn FnMut(usize, Stage),
) -> Result<Vec<IsoResult>, ReconError> {
    if vol.dims.iter().any(|&d| d < 2) {
        return Err(ReconError::NotAVolume { dims: vol.dims });
    }
    let mut body: Option<BodyMask> = None;
    let mut out = Vec::with_capacity(structures.len());
    for (n, opts) in structures.iter().enumerate() {
        out.push(one_structure(vol, opts, &mut body, &mut |s| {
            progress(n, s)
        })?);
    }
    Ok(out)
}

fn one_structure(
    vol: &Volume,
    opts: &IsoOptions,
    body: &mut Option<BodyMask>,
    progress: &mut dyn FnMut(Stage),
) -> Result<IsoResult, ReconError> {
    let mut timings = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |stage: Stage, timings: &mut Vec<(Stage, Duration)>| {
        timings.push((stage, clock.elapsed()));
        clock = Instant::now();
    };

    progress(Stage::Segment);
    let iso_value = match opts.preset {
        Preset::CtBone => 300.0,
        Preset::CtSkin => -300.0,
        Preset::Mask => 0.5,
        Preset::Iso(v) => v,
        Preset::MrHead => volume::background_threshold(vol),
        Preset::Otsu => volume::otsu_threshold(vol),
    };
    let smoothed;
    let source = match opts.smooth_sigma_mm {
        Some(sigma) if sigma > 0.0 => {
            smoothed = volume::gaussian_smooth(vol, sigma);
            &smoothed
        }
        _ => vol,
    };
    let threshold = source.stored_threshold(iso_value).ok_or_else(|| {
        ReconError::Options("the series' Rescale Slope is zero; no iso value can be applied".into())
    })?;
    let threshold = off_grid(threshold, &source.voxels);
    lap(Stage::Segment, &mut timings);

    progress(Stage::Surface);
    let mc = McOptions {
        threads: opts.threads,
    };
    let (dims, affine) = (source.dims, &source.affine);
    let mut surface = match &source.voxels {
        Voxels::U8(d) => mesh::marching_cubes(d, dims, threshold, affine, &mc)?,
        Voxels::I16(d) => mesh::marching_cubes(d, dims, threshold, affine, &mc)?,
        Voxels::U16(d) => mesh::marching_cubes(d, dims, threshold, affine, &mc)?,
        Voxels::F32(d) => mesh::marching_cubes(d, dims, threshold, affine, &mc)?,
    };
    lap(Stage::Surface, &mut timings);
    let description = describe(opts.preset, iso_value, &vol.modality);
    if surface.is_empty() {
        return Err(ReconError::EmptySurface {
            iso: iso_value,
            what: description,
        });
    }

    progress(Stage::Cleanup);
    let keep = opts.keep.unwrap_or(opts.preset.default_keep());
    let body = match keep {
        Keep::InsideBody => Some(&*body.get_or_insert_with(|| BodyMask::of(vol))),
        Keep::Largest | Keep::All => None,
    };
    let (kept, dropped) = clean_up(&surface, keep, opts.min_component_mm3, body);
    for d in &dropped {
        tracing::debug!(
            reason = %d.reason,
            volume_mm3 = format_args!("{:.1}", d.volume_mm3),
            centre_mm = ?d.centre_mm.map(|c| (c * 10.0).round() / 10.0),
            triangles = d.triangles,
            "surface piece dropped"
        );
    }
    if kept.is_empty() {
        return Err(ReconError::NothingKept {
            what: description,
            keep: keep.to_string(),
            dropped: dropped.len(),
        });
    }
    let count = |r: DropReason| dropped.iter().filter(|d| d.reason == r).count();
    tracing::info!(
        keep = %keep,
        dropped = dropped.len(),
        outside_body = count(DropReason::OutsideBody),
        not_largest = count(DropReason::NotLargest),
        small = count(DropReason::Small),
        "surface pieces dropped"
    );
    surface = kept;
    lap(Stage::Cleanup, &mut timings);

    if let Some(taubin) = &opts.taubin {
        progress(Stage::Smooth);
        mesh::taubin_smooth(&mut surface, taubin);
        lap(Stage::Smooth, &mut timings);
    }
    if let Some(simplify) = &opts.simplify {
        progress(Stage::Simplify);
        surface = mesh::simplify(&surface, simplify).0;
        lap(Stage::Simplify, &mut timings);
    }
    let metrics = mesh::metrics(&surface);
    tracing::info!(
        series_instance_uid = %vol.series_instance_uid,
        preset = %opts.preset,
        iso = iso_value,
        triangles = metrics.triangles,
        vertices = metrics.vertices,
        volume_mm3 = format_args!("{:.0}", metrics.volume_mm3),
        area_mm2 = format_args!("{:.0}", metrics.area_mm2),
        degenerate_triangles = metrics.degenerate_triangles,
        watertight = metrics.watertight,
        manifold = metrics.manifold,
        "surface reconstructed"
    );
    Ok(IsoResult {
        mesh: surface,
        metrics,
        iso_value,
        description,
        timings,
        keep,
        dropped,
    })
}

/// The stored threshold moved off the sample values: on integer voxels, `v >= t` is
/// `v > ceil(t) - 0.5`, the same inside set with no sample equal to the threshold (see the
/// module documentation). Float voxels (computed values) keep `t`.
fn off_grid(t: f32, voxels: &Voxels) -> f32 {
    match voxels {
        Voxels::F32(_) => t,
        Voxels::U8(_) | Voxels::I16(_) | Voxels::U16(_) => t.ceil() - 0.5,
    }
}

/// Applies the keep policy and the minimum size; returns the kept surface (compacted) and
/// the dropped pieces, largest (by triangles) first. `body` is needed for
/// [`Keep::InsideBody`] (without it nothing counts as outside).
fn clean_up(
    surface: &Mesh,
    keep: Keep,
    min_mm3: f64,
    body: Option<&BodyMask>,
) -> (Mesh, Vec<DroppedComponent>) {
    let labels = mesh::connected_components(surface);
    let stats = mesh::component_stats(surface, &labels);
    let mut reason: Vec<Option<DropReason>> = vec![None; stats.len()];
    match (keep, body) {
        (Keep::Largest, _) => {
            for r in reason.iter_mut().skip(1) {
                *r = Some(DropReason::NotLargest);
            }
        }
        (Keep::InsideBody, Some(body)) => {
            // Vertices of each piece in (the one-voxel dilation of) the body.
            let mut vertex_comp = vec![usize::MAX; surface.vertices.len()];
            for (t, &c) in surface.indices.chunks_exact(3).zip(&labels) {
                for &i in t {
                    if let Some(v) = vertex_comp.get_mut(i as usize) {
                        *v = c;
                    }
                }
            }
            let mut inside = vec![0usize; stats.len()];
            for (p, &c) in surface.vertices.iter().zip(&vertex_comp) {
                if let Some(n) = inside.get_mut(c)
                    && body.touches(p.map(f64::from))
                {
                    *n += 1;
                }
            }
            for ((r, s), &n) in reason.iter_mut().zip(&stats).zip(&inside) {
                if 2 * n < s.vertices {
                    *r = Some(DropReason::OutsideBody);
                }
            }
        }
        (Keep::InsideBody, None) | (Keep::All, _) => {}
    }
    for (r, s) in reason.iter_mut().zip(&stats) {
        if r.is_none() && s.volume_mm3.abs() < min_mm3 {
            *r = Some(DropReason::Small);
        }
    }
    let dropped = reason
        .iter()
        .zip(&stats)
        .filter_map(|(r, s)| {
            r.map(|reason| DroppedComponent {
                reason,
                volume_mm3: s.volume_mm3.abs(),
                centre_mm: s.centroid_mm,
                triangles: s.triangles,
            })
        })
        .collect();
    let kept = mesh::keep_components(surface, &labels, |c| {
        reason.get(c).is_some_and(|r| r.is_none())
    });
    (kept, dropped)
}

/// The Document Title: what the surface is, in the words a reader of the PACS expects.
fn describe(preset: Preset, iso: f64, modality: &str) -> String {
    let unit = if modality == "CT" { " HU" } else { "" };
    let value = if iso.fract() == 0.0 {
        format!("{iso:.0}")
    } else {
        format!("{iso:.3}").trim_end_matches('0').to_string()
    };
    match preset {
        Preset::CtBone => format!("Bone surface, iso {value}{unit}"),
        Preset::CtSkin => format!("Skin surface, iso {value}{unit}"),
        Preset::MrHead => format!("Head surface, iso {value}"),
        Preset::Otsu => format!("Surface at Otsu threshold {value}{unit}"),
        Preset::Mask => format!("Mask surface, iso {value}"),
        Preset::Iso(_) => format!("Iso-surface, iso {value}{unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_print() {
        for (s, p) in [
            ("ct-bone", Preset::CtBone),
            ("mr-head", Preset::MrHead),
            ("mask", Preset::Mask),
            ("250", Preset::Iso(250.0)),
            ("iso:-400", Preset::Iso(-400.0)),
        ] {
            assert_eq!(s.parse::<Preset>(), Ok(p));
        }
        assert!("bones".parse::<Preset>().unwrap_err().contains("ct-bone"));
        assert!("NaN".parse::<Preset>().is_err());
    }

    #[test]
    fn keep_policies_parse_print_and_default_per_preset() {
        for k in [Keep::Largest, Keep::All, Keep::InsideBody] {
            assert_eq!(k.to_string().parse::<Keep>(), Ok(k));
        }
        assert_eq!("inside-body".parse::<Keep>(), Ok(Keep::InsideBody));
        let err = "inside".parse::<Keep>().unwrap_err();
        assert!(err.contains("largest, all, inside-body"), "{err}");
        assert_eq!(Preset::CtBone.default_keep(), Keep::InsideBody);
        assert_eq!(Preset::CtSkin.default_keep(), Keep::Largest);
        assert_eq!(Preset::Iso(300.0).default_keep(), Keep::Largest);
    }

    #[test]
    fn integer_thresholds_move_off_the_samples() {
        let ints = Voxels::I16(vec![]);
        assert_eq!(off_grid(1324.0, &ints), 1323.5);
        assert_eq!(off_grid(1323.2, &ints), 1323.5);
        assert_eq!(off_grid(-7.0, &ints), -7.5);
        assert_eq!(off_grid(1324.0, &Voxels::F32(vec![])), 1324.0);
    }

    #[test]
    fn titles_say_what_the_surface_is() {
        assert_eq!(
            describe(Preset::CtBone, 300.0, "CT"),
            "Bone surface, iso 300 HU"
        );
        assert_eq!(describe(Preset::Mask, 0.5, "MR"), "Mask surface, iso 0.5");
    }
}
