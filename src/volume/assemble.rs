//! From a list of files to a [`Volume`]: grouping, sorting, decoding.
//!
//! 1. Headers are read (no pixel data) and expanded into frames
//!    ([`enhanced::frames_of`]).
//! 2. Frames are grouped by geometry (size, orientation, pixel spacing,
//!    frame of reference, echo/temporal/stack identity, localizer flag);
//!    several groups are an error or reduced to the largest one
//!    ([`MixedPolicy`]).
//! 3. The chosen stack is sorted along the slice normal and checked
//!    ([`geometry::analyse_stack`]).
//! 4. The output buffer is allocated once; every file is then read and its
//!    frames decoded straight into their slice of the buffer (files in
//!    parallel, one file in memory per worker thread).
//! 5. Missing slices are interpolated and tilted stacks resampled when the
//!    options allow it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tracing::{debug, info, warn};

use super::decode::{self, OutSample, get_str, read_full, read_header};
use super::enhanced::{FrameInfo, frames_of};
use super::geometry::{Orientation, SliceInput, StackGeometry, analyse_stack};
use super::{AssembleOptions, MixedPolicy, Rescale, SourceImage, Volume, VolumeError, Voxels};
use dicom_dictionary_std::tags;

/// The image files of one series found by [`scan_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesFiles {
    /// Series Instance UID (0020,000E) shared by the files.
    pub series_instance_uid: String,
    /// Modality (0008,0060) of the first file, e.g. `CT`.
    pub modality: String,
    /// Files, sorted by path (not by slice position: [`assemble`] sorts).
    pub files: Vec<PathBuf>,
}

/// Finds the DICOM image files below `dir` (recursively) and groups them by
/// Series Instance UID.
///
/// Only headers are read (parsing stops before the pixel data). Files that
/// are not DICOM, cannot be parsed, or are not images (no Rows/Columns,
/// e.g. structured reports or DICOMDIR) are skipped with a debug log.
/// Series are returned ordered by UID. Fails only when `dir` itself cannot
/// be listed (unreadable sub-directories are skipped with a warning).
pub fn scan_dir(dir: &Path) -> Result<Vec<SeriesFiles>, VolumeError> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    let found: Vec<Option<(String, String, PathBuf)>> = files
        .par_iter()
        .map(|path| match read_header(path) {
            Ok(obj) => {
                if obj.get(tags::ROWS).is_none() || obj.get(tags::COLUMNS).is_none() {
                    debug!(path = %path.display(), "skipping DICOM object without image pixels");
                    return None;
                }
                let Some(uid) = get_str(&obj, tags::SERIES_INSTANCE_UID) else {
                    debug!(path = %path.display(), "skipping image without Series Instance UID");
                    return None;
                };
                let modality = get_str(&obj, tags::MODALITY).unwrap_or_default();
                Some((uid, modality, path.clone()))
            }
            Err(e) => {
                debug!(path = %path.display(), error = %e, "skipping file that is not readable DICOM");
                None
            }
        })
        .collect();
    let mut series: BTreeMap<String, SeriesFiles> = BTreeMap::new();
    for (uid, modality, path) in found.into_iter().flatten() {
        series
            .entry(uid.clone())
            .or_insert_with(|| SeriesFiles {
                series_instance_uid: uid,
                modality,
                files: Vec::new(),
            })
            .files
            .push(path);
    }
    info!(dir = %dir.display(), series = series.len(), "scanned directory");
    Ok(series.into_values().collect())
}

/// Lists the regular files below `dir`. Only `dir` itself must be
/// readable: sub-directories that cannot be listed are skipped with a
/// warning. Symbolic links to files are followed, links to directories are
/// not (no cycles).
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), VolumeError> {
    let io = |source| VolumeError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut pending = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => pending.push(path),
            Ok(t) if t.is_file() || (t.is_symlink() && path.is_file()) => out.push(path),
            Ok(_) => {}
            Err(e) => warn!(path = %path.display(), error = %e, "skipping unreadable entry"),
        }
    }
    for sub in pending {
        if let Err(e) = collect_files(&sub, out) {
            warn!(error = %e, "skipping unreadable directory");
        }
    }
    Ok(())
}

/// One set of frames sharing a geometry.
struct Group {
    rows: u32,
    cols: u32,
    orient: Option<Orientation>,
    orient_error: Option<String>,
    spacing: Option<[f64; 2]>,
    has_position: bool,
    frame_of_reference: Option<String>,
    stack_key: String,
    localizer: bool,
    members: Vec<usize>,
}

const ORIENTATION_TOLERANCE: f64 = 1e-3;
const PIXEL_SPACING_TOLERANCE_MM: f64 = 1e-3;

impl Group {
    fn new(f: &FrameInfo, idx: usize) -> Self {
        let (orient, orient_error) = match f.iop.as_deref().map(Orientation::from_iop) {
            Some(Ok(o)) => (Some(o), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, Some("Image Orientation (Patient) is missing".into())),
        };
        Group {
            rows: f.layout.rows,
            cols: f.layout.cols,
            orient,
            orient_error,
            spacing: f.pixel_spacing,
            has_position: f.ipp.is_some(),
            frame_of_reference: f.frame_of_reference_uid.clone(),
            stack_key: f.stack_key.clone(),
            localizer: f.localizer,
            members: vec![idx],
        }
    }

    fn accepts(&self, other: &Group) -> bool {
        let orient_ok = match (&self.orient, &other.orient) {
            (Some(a), Some(b)) => a.same_as(b, ORIENTATION_TOLERANCE),
            (None, None) => true,
            _ => false,
        };
        let spacing_ok = match (self.spacing, other.spacing) {
            (Some(a), Some(b)) => {
                (a[0] - b[0]).abs() <= PIXEL_SPACING_TOLERANCE_MM
                    && (a[1] - b[1]).abs() <= PIXEL_SPACING_TOLERANCE_MM
            }
            (None, None) => true,
            _ => false,
        };
        orient_ok
            && spacing_ok
            && self.rows == other.rows
            && self.cols == other.cols
            && self.has_position == other.has_position
            && self.frame_of_reference == other.frame_of_reference
            && self.stack_key == other.stack_key
            && self.localizer == other.localizer
    }

    fn describe(&self, frames: &[FrameInfo]) -> String {
        let orient = match &self.orient {
            Some(o) => format!(
                "{} (row {:.3}/{:.3}/{:.3}, column {:.3}/{:.3}/{:.3})",
                o.label(),
                o.row_dir[0],
                o.row_dir[1],
                o.row_dir[2],
                o.col_dir[0],
                o.col_dir[1],
                o.col_dir[2]
            ),
            None => "no valid orientation".into(),
        };
        let spacing = match self.spacing {
            Some(s) => format!("pixel spacing {:.4} x {:.4} mm", s[0], s[1]),
            None => "no pixel spacing".into(),
        };
        let mut extra = String::new();
        if self.localizer {
            extra.push_str(", LOCALIZER");
        }
        if !self.has_position {
            extra.push_str(", no slice position");
        }
        if !self.stack_key.is_empty() {
            extra.push_str(&format!(", {}", self.stack_key));
        }
        let example = self
            .members
            .first()
            .map(|&i| frames[i].label())
            .unwrap_or_default();
        format!(
            "{} image(s) of {}x{} {orient}, {spacing}{extra}, e.g. {example}",
            self.members.len(),
            self.cols,
            self.rows
        )
    }
}

fn group_frames(frames: &[FrameInfo]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let candidate = Group::new(f, i);
        match groups.iter_mut().find(|g| g.accepts(&candidate)) {
            Some(g) => g.members.push(i),
            None => groups.push(candidate),
        }
    }
    groups
}

/// Which sample type the output buffer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampleType {
    U8,
    I16,
    U16,
    F32,
}

/// Assembles the given files of one series into a [`Volume`].
///
/// The files may come in any order and may include multi-frame objects;
/// slices are sorted by their position along the slice normal (never by
/// Instance Number or file name). See [`AssembleOptions`] for how gaps,
/// gantry tilt and mixed geometries are handled; every repair is recorded
/// in [`Volume::warnings`].
///
/// Memory: the output buffer is allocated once (stored sample size, or 4
/// bytes per voxel when values must be computed); each worker thread holds
/// one file's pixel data (plus one slice when resampling) while decoding.
///
/// # Errors
/// Any [`VolumeError`]: unreadable or undecodable file, missing geometry,
/// several series, mixed geometry (with [`MixedPolicy::Fail`]), duplicate
/// positions, irregular spacing, gaps (with [`super::GapPolicy::Fail`]),
/// tilt (with [`super::TiltPolicy::Reject`]).
pub fn assemble(paths: &[PathBuf], opts: &AssembleOptions) -> Result<Volume, VolumeError> {
    if paths.is_empty() {
        return Err(VolumeError::NoFiles);
    }
    let per_file: Vec<Vec<FrameInfo>> = paths
        .par_iter()
        .map(|p| read_header(p).and_then(|h| frames_of(&h, p)))
        .collect::<Result<_, _>>()?;
    let mut frames: Vec<FrameInfo> = per_file.into_iter().flatten().collect();

    let mut series: Vec<String> = frames
        .iter()
        .map(|f| f.series_instance_uid.clone())
        .collect();
    series.sort();
    series.dedup();
    if series.len() > 1 {
        return Err(VolumeError::SeveralSeries { series });
    }
    let series_uid = series.pop().unwrap_or_default();
    let mut warnings = Vec::new();

    // The same image received twice is harmless: keep one copy.
    let mut seen = HashSet::new();
    let before = frames.len();
    frames.retain(|f| seen.insert((f.sop_instance_uid.clone(), f.frame)));
    if frames.len() < before {
        warnings.push(format!(
            "ignored {} duplicate copies of images already present (same SOP Instance UID)",
            before - frames.len()
        ));
    }

    let group = choose_stack(&frames, opts, &series_uid, &mut warnings)?;
    let stack: Vec<FrameInfo> = group.members.iter().map(|&i| frames[i].clone()).collect();
    drop(frames);
    let Some(first) = stack.first() else {
        return Err(VolumeError::NoFiles);
    };

    // Geometry.
    let geometry_error = |f: &FrameInfo, detail: String| VolumeError::MissingGeometry {
        path: f.path.clone(),
        frame: f.frame,
        detail,
    };
    let orient = match group.orient {
        Some(o) => o,
        None => {
            return Err(geometry_error(
                first,
                group
                    .orient_error
                    .unwrap_or_else(|| "Image Orientation (Patient) is missing".into()),
            ));
        }
    };
    let pixel_spacing = group
        .spacing
        .ok_or_else(|| geometry_error(first, "Pixel Spacing (0028,0030) is missing".into()))?;
    let mut slices = Vec::with_capacity(stack.len());
    for f in &stack {
        let ipp = f.ipp.ok_or_else(|| {
            geometry_error(
                f,
                "Image Position (Patient) is missing (multi-frame objects need per-frame Plane Position)"
                    .into(),
            )
        })?;
        slices.push(SliceInput { ipp });
    }
    let single_step = first.nominal_slice_step.unwrap_or(1.0);
    let geo = analyse_stack(
        &slices,
        &orient,
        pixel_spacing,
        single_step,
        opts,
        &series_uid,
        &|i| stack[i].label(),
    )?;
    if stack.len() == 1 {
        warnings.push(format!(
            "single image: the slice thickness of {single_step:.3} mm is taken from Spacing Between Slices / Slice Thickness"
        ));
    }
    for g in &geo.gaps {
        let at: Vec<String> = g.missing_mm.iter().map(|p| format!("{p:.3} mm")).collect();
        warnings.push(format!(
            "interpolated {} missing slice(s) at {} between {} at {:.3} mm and {} at {:.3} mm along the slice normal",
            g.missing_mm.len(),
            at.join(", "),
            stack[g.before_input].label(),
            g.before_mm,
            stack[g.after_input].label(),
            g.after_mm,
        ));
    }
    if geo.shifts.is_some() {
        warnings.push(format!(
            "corrected a gantry tilt of {:.2} degrees by resampling every slice onto a grid perpendicular to the slices",
            geo.tilt_deg
        ));
    } else if geo.tilt_deg > 0.01 {
        debug!(
            series = %series_uid,
            tilt_deg = geo.tilt_deg,
            "small slice shear kept in the affine"
        );
    }

    // Output representation.
    let rescale0 = first.rescale;
    let same_rescale = stack.iter().all(|f| {
        close(f.rescale.slope, rescale0.slope) && close(f.rescale.intercept, rescale0.intercept)
    });
    if !same_rescale {
        warnings.push(
            "slices have different Rescale Slope/Intercept: voxels were converted to modality values".into(),
        );
    }
    let sample_type = choose_sample_type(&stack, &geo, same_rescale);
    // F32 volumes always hold modality values with an identity rescale.
    let (rescale, apply_rescale) = if sample_type == SampleType::F32 {
        (Rescale::IDENTITY, true)
    } else {
        (rescale0, false)
    };

    let cols = first.layout.cols as usize;
    let rows = first.layout.rows as usize;
    let too_large = || VolumeError::TooLarge {
        series_instance_uid: series_uid.clone(),
        cols,
        rows,
        slices: geo.n_slices,
    };
    let slice_len = cols.checked_mul(rows).ok_or_else(too_large)?;
    let total = slice_len.checked_mul(geo.n_slices).ok_or_else(too_large)?;
    if total.checked_mul(4).is_none_or(|b| b > isize::MAX as usize) {
        return Err(too_large());
    }

    let plan: Vec<(usize, usize)> = geo
        .order
        .iter()
        .copied()
        .zip(geo.slots.iter().copied())
        .collect();
    let ctx = DecodeCtx {
        stack: &stack,
        plan: &plan,
        slice_len,
        cols,
        rows,
        apply_rescale,
        geo: &geo,
    };
    let voxels = match sample_type {
        SampleType::U8 => {
            Voxels::U8(decode_volume::<u8>(&ctx, total).map_err(|e| e.or_size(too_large()))?)
        }
        SampleType::I16 => {
            Voxels::I16(decode_volume::<i16>(&ctx, total).map_err(|e| e.or_size(too_large()))?)
        }
        SampleType::U16 => {
            Voxels::U16(decode_volume::<u16>(&ctx, total).map_err(|e| e.or_size(too_large()))?)
        }
        SampleType::F32 => {
            let mut buf = decode_volume::<f32>(&ctx, total).map_err(|e| e.or_size(too_large()))?;
            interpolate_gaps(&mut buf, slice_len, &geo);
            if geo.shifts.is_some() {
                fill_outside(&mut buf);
            }
            Voxels::F32(buf)
        }
    };

    let sources = geo
        .order
        .iter()
        .map(|&i| {
            let f = &stack[i];
            SourceImage {
                path: f.path.clone(),
                sop_class_uid: f.sop_class_uid.clone(),
                sop_instance_uid: f.sop_instance_uid.clone(),
                frame: f.frame,
            }
        })
        .collect();
    for w in &warnings {
        warn!(series = %series_uid, "{w}");
    }
    info!(
        series = %series_uid,
        cols,
        rows,
        slices = geo.n_slices,
        spacing_mm = ?geo.spacing,
        "assembled volume"
    );
    Ok(Volume {
        dims: [cols, rows, geo.n_slices],
        voxels,
        rescale,
        affine: geo.affine,
        spacing: geo.spacing,
        study_instance_uid: first.study_instance_uid.clone(),
        series_instance_uid: series_uid,
        frame_of_reference_uid: first.frame_of_reference_uid.clone(),
        modality: first.modality.clone(),
        sources,
        warnings,
    })
}

/// Groups the frames by geometry and returns the stack to build: the only
/// group, or (with [`MixedPolicy::Largest`]) the largest usable one.
fn choose_stack(
    frames: &[FrameInfo],
    opts: &AssembleOptions,
    series_uid: &str,
    warnings: &mut Vec<String>,
) -> Result<Group, VolumeError> {
    let mut groups = group_frames(frames);
    if groups.len() <= 1 {
        return groups.pop().ok_or(VolumeError::NoFiles);
    }
    let descriptions: Vec<String> = groups.iter().map(|g| g.describe(frames)).collect();
    if opts.mixed == MixedPolicy::Fail {
        return Err(VolumeError::MixedGeometry {
            series_instance_uid: series_uid.to_string(),
            groups: descriptions,
        });
    }
    // Prefer groups that can be placed in space, then the most images;
    // ties keep the group seen first.
    let rank = |g: &Group| (g.has_position && g.orient.is_some(), g.members.len());
    let mut best = 0;
    for (i, g) in groups.iter().enumerate() {
        if rank(g) > rank(&groups[best]) {
            best = i;
        }
    }
    for (i, d) in descriptions.iter().enumerate() {
        if i != best {
            warnings.push(format!("ignored {d} (not part of the largest stack)"));
        }
    }
    Ok(groups.swap_remove(best))
}

/// Smallest sample type holding every stored value of the stack, or `F32`
/// when values must be computed (modality values).
fn choose_sample_type(stack: &[FrameInfo], geo: &StackGeometry, same_rescale: bool) -> SampleType {
    let negative_slope = stack.first().is_some_and(|f| f.rescale.slope < 0.0);
    let computed = !same_rescale
        || negative_slope
        || !geo.gaps.is_empty()
        || geo.shifts.is_some()
        || stack.iter().any(|f| f.layout.bits_allocated >= 32);
    if computed {
        return SampleType::F32;
    }
    let (lo, hi) = stack.iter().fold((f64::MAX, f64::MIN), |(lo, hi), f| {
        let (a, b) = f.layout.value_range();
        (lo.min(a), hi.max(b))
    });
    if lo >= 0.0 && hi <= f64::from(u8::MAX) {
        SampleType::U8
    } else if lo >= 0.0 && hi <= f64::from(u16::MAX) {
        SampleType::U16
    } else if lo >= f64::from(i16::MIN) && hi <= f64::from(i16::MAX) {
        SampleType::I16
    } else {
        SampleType::F32
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// What [`decode_volume`] needs.
struct DecodeCtx<'a> {
    stack: &'a [FrameInfo],
    /// (index into `stack`, output slot k)
    plan: &'a [(usize, usize)],
    slice_len: usize,
    cols: usize,
    rows: usize,
    apply_rescale: bool,
    geo: &'a StackGeometry,
}

/// Failure of [`decode_volume`]: a volume error, or an allocation failure.
enum DecodeFailure {
    Volume(VolumeError),
    Alloc,
}

impl DecodeFailure {
    fn or_size(self, too_large: VolumeError) -> VolumeError {
        match self {
            DecodeFailure::Volume(e) => e,
            DecodeFailure::Alloc => too_large,
        }
    }
}

impl From<VolumeError> for DecodeFailure {
    fn from(e: VolumeError) -> Self {
        DecodeFailure::Volume(e)
    }
}

/// One file to read and the output slices of its frames
/// (`(index into the plan, destination slice)`).
type Job<'a, T> = (&'a Path, Vec<(usize, &'a mut [T])>);

/// Allocates the output and decodes every planned frame into its slice.
fn decode_volume<T: OutSample>(ctx: &DecodeCtx<'_>, total: usize) -> Result<Vec<T>, DecodeFailure> {
    let mut buf: Vec<T> = Vec::new();
    buf.try_reserve_exact(total)
        .map_err(|_| DecodeFailure::Alloc)?;
    buf.resize(total, T::default());
    {
        let mut slots: Vec<Option<&mut [T]>> = buf.chunks_mut(ctx.slice_len).map(Some).collect();
        // One job per file, keeping the first-seen file order.
        let mut jobs: Vec<Job<'_, T>> = Vec::new();
        let mut job_of: HashMap<&Path, usize> = HashMap::new();
        for (pos, &(frame_idx, slot)) in ctx.plan.iter().enumerate() {
            let f = &ctx.stack[frame_idx];
            let Some(dst) = slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            let j = *job_of.entry(f.path.as_path()).or_insert_with(|| {
                jobs.push((f.path.as_path(), Vec::new()));
                jobs.len() - 1
            });
            jobs[j].1.push((pos, dst));
        }
        jobs.into_par_iter().try_for_each(|(path, targets)| {
            let file = read_full(path)?;
            let layout = decode::pixel_layout(&file, path)?;
            if layout.rows as usize != ctx.rows || layout.cols as usize != ctx.cols {
                return Err(VolumeError::MissingGeometry {
                    path: path.to_path_buf(),
                    frame: None,
                    detail: "image size changed while the series was being read".into(),
                });
            }
            let mut scratch: Vec<f32> = Vec::new();
            for (pos, dst) in targets {
                let (frame_idx, _) = ctx.plan[pos];
                let info = &ctx.stack[frame_idx];
                let frame0 = info.frame.map_or(0, |f| f - 1);
                let rescale = if ctx.apply_rescale {
                    info.rescale
                } else {
                    Rescale::IDENTITY
                };
                match &ctx.geo.shifts {
                    None => {
                        decode::decode_frame(
                            &file,
                            path,
                            &layout,
                            frame0,
                            T::frame_out(dst, rescale),
                        )?;
                    }
                    Some(shifts) => {
                        scratch.resize(ctx.slice_len, 0.0);
                        decode::decode_frame(
                            &file,
                            path,
                            &layout,
                            frame0,
                            decode::FrameOut::F32(&mut scratch, rescale),
                        )?;
                        let mut out = T::frame_out(dst, Rescale::IDENTITY);
                        if let decode::FrameOut::F32(o, _) = &mut out {
                            shift_slice(&scratch, o, ctx.cols, ctx.rows, shifts[pos]);
                        }
                    }
                }
            }
            debug!(path = %path.display(), "decoded");
            Ok::<(), VolumeError>(())
        })?;
    }
    Ok(buf)
}

/// Resamples one slice: `out(i, j) = input(i - di, j - dj)` (bilinear), NaN
/// where the shifted slice does not cover the grid.
fn shift_slice(input: &[f32], out: &mut [f32], cols: usize, rows: usize, shift: [f64; 2]) {
    let [di, dj] = shift;
    let maxu = cols as f64 - 1.0;
    let maxv = rows as f64 - 1.0;
    for j in 0..rows {
        for i in 0..cols {
            let u = i as f64 - di;
            let v = j as f64 - dj;
            let o = &mut out[i + cols * j];
            if u < -0.5 || v < -0.5 || u > maxu + 0.5 || v > maxv + 0.5 {
                *o = f32::NAN;
                continue;
            }
            let u = u.clamp(0.0, maxu);
            let v = v.clamp(0.0, maxv);
            let u0 = u.floor() as usize;
            let v0 = v.floor() as usize;
            let u1 = (u0 + 1).min(cols - 1);
            let v1 = (v0 + 1).min(rows - 1);
            let fu = (u - u0 as f64) as f32;
            let fv = (v - v0 as f64) as f32;
            let p00 = input[u0 + cols * v0];
            let p10 = input[u1 + cols * v0];
            let p01 = input[u0 + cols * v1];
            let p11 = input[u1 + cols * v1];
            let top = p00 + (p10 - p00) * fu;
            let bottom = p01 + (p11 - p01) * fu;
            *o = top + (bottom - top) * fv;
        }
    }
}

/// Replaces NaN (outside the resampled data) with the volume minimum.
fn fill_outside(buf: &mut [f32]) {
    let min = buf
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::INFINITY, f32::min);
    let fill = if min.is_finite() { min } else { 0.0 };
    for v in buf.iter_mut().filter(|v| v.is_nan()) {
        *v = fill;
    }
}

/// Linear interpolation of the missing slices of every gap.
fn interpolate_gaps(buf: &mut [f32], slice_len: usize, geo: &StackGeometry) {
    for g in &geo.gaps {
        let (a, b) = (g.before_slot, g.after_slot);
        let span = (b - a) as f32;
        for k in a + 1..b {
            let w = (k - a) as f32 / span;
            for idx in 0..slice_len {
                let va = buf[a * slice_len + idx];
                let vb = buf[b * slice_len + idx];
                buf[k * slice_len + idx] = va + (vb - va) * w;
            }
        }
    }
}
