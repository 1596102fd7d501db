//! Turning a DICOM CT/MR series into one 3D voxel volume with its geometry.
//!
//! This module owns everything between "a list of DICOM files" and "a voxel
//! grid placed in patient space":
//!
//! * **pixel decoding** (`decode.rs`): every frame of every supported transfer
//!   syntax (uncompressed little/big endian, deflated, JPEG baseline /
//!   lossless, RLE, JPEG-LS, JPEG 2000) is decoded through `dicom-pixeldata`,
//!   one frame at a time, straight into the preallocated output buffer;
//! * **geometry** (`geometry.rs`): Image Orientation / Position (Patient),
//!   Pixel Spacing, slice normal, uniform-spacing checks, gap and gantry tilt
//!   detection, and the voxel-to-patient affine;
//! * **slice sorting** (`assemble.rs`): slices are ordered by their position
//!   along the slice normal, never by Instance Number or file name; mixed
//!   geometries (localizers, several stacks) are detected and either rejected
//!   or reduced to the largest consistent stack;
//! * **rescale**: Rescale Slope / Intercept are kept as one [`Rescale`] for
//!   the whole volume (voxels stay in stored units), or applied per slice
//!   when slices disagree;
//! * **multi-frame** (`enhanced.rs`): Enhanced CT/MR objects with per-frame and
//!   shared functional groups;
//! * **filters** (`filter.rs`): Gaussian smoothing and automatic thresholds
//!   used before surface extraction.
//!
//! All coordinates are in millimetres in the DICOM patient coordinate
//! system (LPS: +x towards the patient's left, +y posterior, +z head).
//!
//! The module knows nothing about networks, associations or storage
//! policies: callers hand it file paths and receive a [`Volume`] or a
//! [`VolumeError`] whose message is meant for the radiology IT person who
//! has to understand why a series could not be processed.

mod assemble;
mod body;
mod decode;
mod enhanced;
mod filter;
mod geometry;
mod jpeg12;
pub mod transcode;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use assemble::{SeriesFiles, assemble, scan_dir};
pub use body::{BodyMask, CT_SKIN_HU};
pub use filter::{background_threshold, gaussian_smooth, otsu_threshold};
pub use geometry::TILT_TOLERANCE_DEG;

/// Voxel-to-patient transform: `p_mm(LPS) = A * [i, j, k, 1]`.
///
/// `i` is the column index (x, fastest varying), `j` the row index and `k`
/// the slice index in sorted order. Each row of the 3x4 matrix gives one
/// patient coordinate (x, y, z) in mm; the first three columns are the
/// steps in mm per voxel along i, j and k, the last column is the centre of
/// the first voxel of the first sorted slice.
pub type Affine = [[f64; 4]; 3];

/// Voxel values of a [`Volume`], x fastest: `idx = i + cols * (j + rows * k)`.
///
/// Integer variants hold *stored* values (apply [`Volume::rescale`] to get
/// modality values such as Hounsfield units). `F32` is used only when
/// values had to be computed (slices with different rescales, interpolated
/// gaps, tilt resampling, negative slope, 32-bit or floating point pixels,
/// filters): it then holds modality values and the rescale is the identity.
#[derive(Debug, Clone, PartialEq)]
pub enum Voxels {
    /// Unsigned 8-bit samples.
    U8(Vec<u8>),
    /// Signed 16-bit samples (also used for signed 8-bit input).
    I16(Vec<i16>),
    /// Unsigned 16-bit samples.
    U16(Vec<u16>),
    /// 32-bit floating point samples.
    F32(Vec<f32>),
}

impl Voxels {
    /// Number of voxels.
    pub fn len(&self) -> usize {
        match self {
            Voxels::U8(v) => v.len(),
            Voxels::I16(v) => v.len(),
            Voxels::U16(v) => v.len(),
            Voxels::F32(v) => v.len(),
        }
    }

    /// True when there are no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per voxel of this representation.
    pub fn bytes_per_voxel(&self) -> usize {
        match self {
            Voxels::U8(_) => 1,
            Voxels::I16(_) | Voxels::U16(_) => 2,
            Voxels::F32(_) => 4,
        }
    }

    /// The stored value at linear index `idx` as `f32`, `None` when out of range.
    pub fn get_f32(&self, idx: usize) -> Option<f32> {
        match self {
            Voxels::U8(v) => v.get(idx).map(|&x| f32::from(x)),
            Voxels::I16(v) => v.get(idx).map(|&x| f32::from(x)),
            Voxels::U16(v) => v.get(idx).map(|&x| f32::from(x)),
            Voxels::F32(v) => v.get(idx).copied(),
        }
    }

    /// All stored values converted to `f32` (a new buffer).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Voxels::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Voxels::I16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Voxels::U16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Voxels::F32(v) => v.clone(),
        }
    }
}

/// Linear modality transform: `modality value = stored * slope + intercept`
/// (Rescale Slope (0028,1053) / Rescale Intercept (0028,1052)); e.g.
/// Hounsfield units for CT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    /// Rescale Slope (unitless multiplier).
    pub slope: f64,
    /// Rescale Intercept (in modality units, e.g. HU).
    pub intercept: f64,
}

impl Rescale {
    /// The identity transform (slope 1, intercept 0).
    pub const IDENTITY: Rescale = Rescale {
        slope: 1.0,
        intercept: 0.0,
    };

    /// Modality value of a stored value.
    pub fn apply(&self, stored: f64) -> f64 {
        stored * self.slope + self.intercept
    }

    /// True when applying it changes nothing.
    pub fn is_identity(&self) -> bool {
        self.slope == 1.0 && self.intercept == 0.0
    }
}

impl Default for Rescale {
    fn default() -> Self {
        Rescale::IDENTITY
    }
}

/// Which DICOM object (and frame) a slice of the volume came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    /// File the slice was decoded from.
    pub path: PathBuf,
    /// SOP Class UID (0008,0016) of the object, e.g. MR Image Storage.
    pub sop_class_uid: String,
    /// SOP Instance UID (0008,0018) of the object.
    pub sop_instance_uid: String,
    /// 1-based frame number inside a multi-frame object (as in DICOM
    /// Referenced Frame Number); `None` for single-frame objects.
    pub frame: Option<u32>,
}

/// A 3D image assembled from one series, placed in patient space.
#[derive(Debug, Clone)]
pub struct Volume {
    /// `[cols, rows, slices]`: number of voxels along i, j and k.
    pub dims: [usize; 3],
    /// Voxel values, x fastest (see [`Voxels`]). Stored values (memory = 1x
    /// the pixel bytes) unless the assembler had to compute modality values
    /// (then `F32` and an identity [`Volume::rescale`]).
    pub voxels: Voxels,
    /// One rescale valid for every voxel of the volume.
    pub rescale: Rescale,
    /// Voxel-to-patient (LPS, mm) transform, see [`Affine`].
    pub affine: Affine,
    /// Voxel size in mm: column step (along i), row step (along j), slice
    /// step along the slice normal (along k).
    pub spacing: [f64; 3],
    /// Study Instance UID (0020,000D).
    pub study_instance_uid: String,
    /// Series Instance UID (0020,000E).
    pub series_instance_uid: String,
    /// Frame of Reference UID (0020,0052), when present.
    pub frame_of_reference_uid: Option<String>,
    /// Modality (0008,0060), e.g. `CT` or `MR`.
    pub modality: String,
    /// The DICOM image each slice came from, in slice (k) order. Slices
    /// created by gap interpolation have no entry: `sources.len()` can be
    /// smaller than `dims[2]`; see [`Volume::warnings`].
    pub sources: Vec<SourceImage>,
    /// Human-readable notes about everything that was repaired or dropped,
    /// e.g. interpolated missing slices or ignored localizer images.
    pub warnings: Vec<String>,
}

impl Volume {
    /// Number of voxels.
    pub fn voxel_count(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    /// The iso value in stored units that corresponds to `modality_value`
    /// (e.g. HU), for thresholding without converting the whole volume:
    /// a voxel is inside when `stored >= threshold`.
    ///
    /// Returns `None` when the slope is zero (every voxel has the same
    /// modality value, no threshold separates them). The assembler never
    /// produces a negative slope (it converts such volumes to modality
    /// values), so the `>=` direction always holds.
    pub fn stored_threshold(&self, modality_value: f64) -> Option<f32> {
        if self.rescale.slope == 0.0 || !self.rescale.slope.is_finite() {
            return None;
        }
        let t = (modality_value - self.rescale.intercept) / self.rescale.slope;
        Some(t as f32)
    }

    /// Modality value (e.g. HU) of a stored voxel value.
    pub fn modality_value(&self, stored: f32) -> f64 {
        self.rescale.apply(f64::from(stored))
    }

    /// All voxels as modality values (a new buffer of `4 * voxel_count` bytes).
    pub fn to_f32_modality(&self) -> Vec<f32> {
        let r = self.rescale;
        if r.is_identity() {
            return self.voxels.to_f32();
        }
        let map = |x: f32| (f64::from(x) * r.slope + r.intercept) as f32;
        match &self.voxels {
            Voxels::U8(v) => v.iter().map(|&x| map(f32::from(x))).collect(),
            Voxels::I16(v) => v.iter().map(|&x| map(f32::from(x))).collect(),
            Voxels::U16(v) => v.iter().map(|&x| map(f32::from(x))).collect(),
            Voxels::F32(v) => v.iter().map(|&x| map(x)).collect(),
        }
    }

    /// Memory held by the voxel buffer, in bytes.
    pub fn pixel_bytes(&self) -> usize {
        self.voxels.len() * self.voxels.bytes_per_voxel()
    }

    /// Patient (LPS, mm) position of the centre of voxel `(i, j, k)`;
    /// fractional indices are allowed.
    pub fn voxel_to_patient(&self, i: f64, j: f64, k: f64) -> [f64; 3] {
        geometry::apply_affine(&self.affine, [i, j, k])
    }
}

/// What to do when slices are missing from an otherwise regular stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(try_from = "String")]
pub enum GapPolicy {
    /// Refuse the series and name the gap (default: a hole in the data
    /// should be looked at by a person).
    #[default]
    Fail,
    /// Fill missing slices by linear interpolation between the two
    /// neighbouring slices and record a warning.
    Interpolate,
}

/// What to do when the files of a series do not form one stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(try_from = "String")]
pub enum MixedPolicy {
    /// Refuse the series and list the groups found (default).
    #[default]
    Fail,
    /// Keep the stack with the most slices, ignore the rest and warn.
    Largest,
}

/// What to do when slice positions step sideways (gantry tilt, sheared stack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(try_from = "String")]
pub enum TiltPolicy {
    /// Refuse the series (default).
    #[default]
    Reject,
    /// Resample every slice onto a grid perpendicular to the slices (shear
    /// correction with bilinear interpolation); voxels become `F32`.
    Resample,
}

crate::choice!(GapPolicy, MixedPolicy, TiltPolicy);

/// Options for [`assemble`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AssembleOptions {
    /// Missing slices: fail (default) or interpolate.
    pub gaps: GapPolicy,
    /// Several geometries in one series: fail (default) or keep the largest stack.
    pub mixed: MixedPolicy,
    /// Gantry tilt: reject (default) or resample.
    pub tilt: TiltPolicy,
    /// How far (mm) a slice position may deviate from the regular grid
    /// before the spacing counts as irregular; default 0.01 mm. The check
    /// uses the larger of this value and 1 % of the slice step, so that
    /// positions written with limited decimal precision (some consoles
    /// round to 0.1 mm) still pass.
    pub spacing_tolerance_mm: f64,
}

impl Default for AssembleOptions {
    fn default() -> Self {
        AssembleOptions {
            gaps: GapPolicy::Fail,
            mixed: MixedPolicy::Fail,
            tilt: TiltPolicy::Reject,
            spacing_tolerance_mm: 0.01,
        }
    }
}

/// Why a series could not be turned into a volume.
///
/// Every variant names the file (or series) and the step that failed, in
/// words a radiology IT person can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// A directory or file could not be accessed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Path that failed.
        path: PathBuf,
        /// Underlying operating system error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable DICOM Part 10 file (or is truncated/corrupt).
    #[error("{path} is not a readable DICOM file (truncated or corrupt?): {detail}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Parser message, including its causes.
        detail: String,
    },
    /// The file failed the structural walk that runs before dicom-object parses it
    /// (nesting too deep, malformed structure, a deflate bomb): parsing it could overflow the
    /// stack or inflate gigabytes into memory.
    #[error("{path} was refused before decoding: {source}")]
    Refused {
        /// File that failed.
        path: PathBuf,
        /// What the walk found.
        #[source]
        source: crate::store::header::HeaderError,
    },
    /// No files were given.
    #[error("no DICOM files were given to build a volume from")]
    NoFiles,
    /// The files belong to more than one series.
    #[error(
        "the files belong to {} different series ({}); a volume is built from one series at a time",
        series.len(),
        series.join(", ")
    )]
    SeveralSeries {
        /// Series Instance UIDs found.
        series: Vec<String>,
    },
    /// The object has no image pixels (e.g. a structured report or RT structure set).
    #[error(
        "{path} is not an image (SOP Class {sop_class_uid}): it has no Rows/Columns/Pixel Data"
    )]
    NotAnImage {
        /// File that failed.
        path: PathBuf,
        /// SOP Class UID of the object.
        sop_class_uid: String,
    },
    /// A required attribute is missing or unreadable.
    #[error("{path}: attribute {attribute} is missing or invalid{}", frame_suffix(*frame))]
    MissingAttribute {
        /// File that failed.
        path: PathBuf,
        /// Attribute name and tag, e.g. `Rows (0028,0010)`.
        attribute: &'static str,
        /// 1-based frame of a multi-frame object, when relevant.
        frame: Option<u32>,
    },
    /// The image has no usable patient geometry (no position, orientation or pixel spacing).
    #[error(
        "{path}{}: no usable image geometry ({detail}); without it the surface cannot be placed or scaled in patient space",
        frame_suffix(*frame)
    )]
    MissingGeometry {
        /// File that failed.
        path: PathBuf,
        /// 1-based frame of a multi-frame object, when relevant.
        frame: Option<u32>,
        /// What is missing or wrong.
        detail: String,
    },
    /// The pixel format cannot be turned into a grey-level volume.
    #[error("{path}: unsupported pixel format: {detail}")]
    UnsupportedPixelFormat {
        /// File that failed.
        path: PathBuf,
        /// What is unsupported (colour, bit depth ...).
        detail: String,
    },
    /// The pixel data could not be decoded.
    #[error(
        "{path}: cannot decode the pixel data of frame {frame} (transfer syntax {transfer_syntax}): {detail}"
    )]
    Decode {
        /// File that failed.
        path: PathBuf,
        /// 1-based frame number.
        frame: u32,
        /// Transfer Syntax UID and name.
        transfer_syntax: String,
        /// Decoder message, including its causes.
        detail: String,
    },
    /// Files of the series disagree on image geometry (localizers, several stacks ...).
    #[error(
        "series {series_instance_uid} mixes {} image geometries and cannot form one volume (choose the 'largest stack' setting to keep only the biggest): {}",
        groups.len(),
        groups.join("; ")
    )]
    MixedGeometry {
        /// Series Instance UID.
        series_instance_uid: String,
        /// One description per group (size, orientation, example file).
        groups: Vec<String>,
    },
    /// Two different images occupy the same slice position.
    #[error(
        "series {series_instance_uid}: two different images at the same slice position {position_mm:.3} mm: {first} and {second} (several echoes/phases or duplicated acquisition?)"
    )]
    DuplicatePosition {
        /// Series Instance UID.
        series_instance_uid: String,
        /// Position along the slice normal, mm.
        position_mm: f64,
        /// First image (file and SOP Instance UID).
        first: String,
        /// Second image (file and SOP Instance UID).
        second: String,
    },
    /// Slices are not evenly spaced (and not explainable by missing slices).
    #[error(
        "series {series_instance_uid}: irregular slice spacing: {found_mm:.4} mm between {before} (at {before_mm:.3} mm) and {after} (at {after_mm:.3} mm), expected a multiple of {expected_mm:.4} mm"
    )]
    IrregularSpacing {
        /// Series Instance UID.
        series_instance_uid: String,
        /// Nominal slice step, mm.
        expected_mm: f64,
        /// Distance found, mm.
        found_mm: f64,
        /// Image before the irregular step.
        before: String,
        /// Its position along the normal, mm.
        before_mm: f64,
        /// Image after the irregular step.
        after: String,
        /// Its position along the normal, mm.
        after_mm: f64,
    },
    /// Slices are missing (gap) and the policy is to fail.
    #[error(
        "series {series_instance_uid}: {} slice(s) missing between {before} at {before_mm:.3} mm and {after} at {after_mm:.3} mm along the slice normal (slice step {step_mm:.4} mm; missing position(s): {}); resend the series or enable gap interpolation",
        missing_mm.len(),
        format_positions(missing_mm)
    )]
    SliceGap {
        /// Series Instance UID.
        series_instance_uid: String,
        /// Slice step, mm.
        step_mm: f64,
        /// Image before the gap (file and SOP Instance UID).
        before: String,
        /// Its position along the normal, mm.
        before_mm: f64,
        /// Image after the gap.
        after: String,
        /// Its position along the normal, mm.
        after_mm: f64,
        /// Positions of the missing slices along the normal, mm (one per
        /// missing slice).
        missing_mm: Box<[f64]>,
    },
    /// Slice positions step sideways (gantry tilt) and the policy is to reject.
    #[error(
        "series {series_instance_uid}: slices are sheared by {angle_deg:.2} degrees (gantry tilt): slice positions move {shift_mm:.2} mm sideways across the stack; enable tilt resampling to correct it"
    )]
    GantryTilt {
        /// Series Instance UID.
        series_instance_uid: String,
        /// Angle between the slice normal and the slice-to-slice direction.
        angle_deg: f64,
        /// In-plane displacement between first and last slice, mm.
        shift_mm: f64,
    },
    /// The volume would be too large to allocate.
    #[error(
        "series {series_instance_uid}: volume of {cols} x {rows} x {slices} voxels is too large"
    )]
    TooLarge {
        /// Series Instance UID.
        series_instance_uid: String,
        /// Columns.
        cols: usize,
        /// Rows.
        rows: usize,
        /// Slices.
        slices: usize,
    },
}

fn frame_suffix(frame: Option<u32>) -> String {
    match frame {
        Some(f) => format!(" (frame {f})"),
        None => String::new(),
    }
}

fn format_positions(p: &[f64]) -> String {
    p.iter()
        .map(|v| format!("{v:.3} mm"))
        .collect::<Vec<_>>()
        .join(", ")
}
