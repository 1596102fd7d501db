//! Per-frame attributes of classic and Enhanced (multi-frame) images.
//!
//! A classic CT/MR Image has one frame whose geometry and rescale are
//! top-level attributes. Enhanced CT/MR Images carry them in functional
//! groups: each frame's item of the Per-frame Functional Groups Sequence
//! (5200,9230) first, then the Shared Functional Groups Sequence
//! (5200,9229), then (as a last resort, for robustness) the top level:
//!
//! | macro | sequence | attributes |
//! |---|---|---|
//! | Plane Position | (0020,9113) | Image Position (Patient) |
//! | Plane Orientation | (0020,9116) | Image Orientation (Patient) |
//! | Pixel Measures | (0028,9110) | Pixel Spacing, Slice Thickness, Spacing Between Slices |
//! | Pixel Value Transformation | (0028,9145) | Rescale Slope / Intercept |
//! | Frame Content | (0020,9111) | Stack ID, Temporal Position Index |
//!
//! A multi-frame object without per-frame positions gets no position: its
//! frames cannot be placed in space.

use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_object::mem::InMemElement;

use super::Rescale;
use super::VolumeError;
use super::decode::{DicomFile, PixelLayout, get_str, pixel_layout};

/// Everything the assembler needs to know about one frame, without pixels.
#[derive(Debug, Clone)]
pub(crate) struct FrameInfo {
    /// File holding the frame.
    pub path: PathBuf,
    /// 1-based frame number for multi-frame / enhanced objects.
    pub frame: Option<u32>,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Frame of Reference UID.
    pub frame_of_reference_uid: Option<String>,
    /// Modality.
    pub modality: String,
    /// Pixel layout of the object.
    pub layout: PixelLayout,
    /// Image Position (Patient), mm.
    pub ipp: Option<[f64; 3]>,
    /// Image Orientation (Patient), raw values (validated later).
    pub iop: Option<Vec<f64>>,
    /// Pixel Spacing `[row spacing, column spacing]`, mm.
    pub pixel_spacing: Option<[f64; 2]>,
    /// Spacing Between Slices, or else Slice Thickness (mm), for single slices.
    pub nominal_slice_step: Option<f64>,
    /// Rescale slope/intercept of this frame.
    pub rescale: Rescale,
    /// Echo / temporal position / stack identification, e.g. "echo 2"
    /// (distinguishes several stacks sharing one geometry; empty if none).
    pub stack_key: String,
    /// Image Type contains LOCALIZER.
    pub localizer: bool,
}

impl FrameInfo {
    /// "file (SOP Instance UID x, frame n)" for messages.
    pub fn label(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string());
        match self.frame {
            Some(f) => format!(
                "{name} (SOP Instance UID {}, frame {f})",
                self.sop_instance_uid
            ),
            None => format!("{name} (SOP Instance UID {})", self.sop_instance_uid),
        }
    }
}

fn first_item(obj: &InMemDicomObject, seq: Tag) -> Option<&InMemDicomObject> {
    obj.get(seq)?.items()?.first()
}

fn floats(e: &InMemElement) -> Option<Vec<f64>> {
    let v = e.to_multi_float64().ok()?;
    if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
        None
    } else {
        Some(v)
    }
}

/// Lists the frames of an image object with their geometry and rescale.
pub(crate) fn frames_of(file: &DicomFile, path: &Path) -> Result<Vec<FrameInfo>, VolumeError> {
    let layout = pixel_layout(file, path)?;
    let top: &InMemDicomObject = file;
    let sop_class_uid = get_str(top, tags::SOP_CLASS_UID).unwrap_or_else(|| {
        file.meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string()
    });
    let sop_instance_uid = get_str(top, tags::SOP_INSTANCE_UID).unwrap_or_else(|| {
        file.meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string()
    });
    let series_instance_uid =
        get_str(top, tags::SERIES_INSTANCE_UID).ok_or_else(|| VolumeError::MissingAttribute {
            path: path.to_path_buf(),
            attribute: "Series Instance UID (0020,000E)",
            frame: None,
        })?;
    let study_instance_uid = get_str(top, tags::STUDY_INSTANCE_UID).unwrap_or_default();
    let frame_of_reference_uid = get_str(top, tags::FRAME_OF_REFERENCE_UID);
    let modality = get_str(top, tags::MODALITY).unwrap_or_else(|| "OT".into());
    let localizer = top
        .get(tags::IMAGE_TYPE)
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| v.iter().any(|s| s.trim().eq_ignore_ascii_case("LOCALIZER")))
        .unwrap_or(false);

    let shared = first_item(top, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame = top
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items());
    let enhanced = shared.is_some() || per_frame.is_some();
    let multi = layout.frames > 1 || enhanced;

    let mut out = Vec::with_capacity(layout.frames as usize);
    for f in 0..layout.frames {
        let pf = per_frame.and_then(|items| items.get(f as usize));
        // Functional group lookup: per-frame, then shared, then (optionally) top level.
        let lookup = |seq: Tag, attr: Tag, allow_top: bool| -> Option<&InMemElement> {
            pf.and_then(|p| first_item(p, seq))
                .and_then(|i| i.get(attr))
                .or_else(|| {
                    shared
                        .and_then(|s| first_item(s, seq))
                        .and_then(|i| i.get(attr))
                })
                .or_else(|| if allow_top { top.get(attr) } else { None })
        };
        // Positions differ per frame: the top-level one only fits single frames.
        let ipp = lookup(
            tags::PLANE_POSITION_SEQUENCE,
            tags::IMAGE_POSITION_PATIENT,
            layout.frames == 1,
        )
        .and_then(floats)
        .filter(|v| v.len() == 3)
        .map(|v| [v[0], v[1], v[2]]);
        let iop = lookup(
            tags::PLANE_ORIENTATION_SEQUENCE,
            tags::IMAGE_ORIENTATION_PATIENT,
            true,
        )
        .and_then(floats);
        let pixel_spacing = lookup(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING, true)
            .and_then(floats)
            .filter(|v| v.len() == 2 && v[0] > 0.0 && v[1] > 0.0)
            .map(|v| [v[0], v[1]]);
        let positive = |e: &InMemElement| {
            floats(e)
                .and_then(|v| v.first().copied())
                .filter(|v| *v > 0.0)
        };
        let nominal_slice_step = lookup(
            tags::PIXEL_MEASURES_SEQUENCE,
            tags::SPACING_BETWEEN_SLICES,
            true,
        )
        .and_then(positive)
        .or_else(|| {
            lookup(tags::PIXEL_MEASURES_SEQUENCE, tags::SLICE_THICKNESS, true).and_then(positive)
        });
        let slope = lookup(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            tags::RESCALE_SLOPE,
            true,
        )
        .and_then(floats)
        .and_then(|v| v.first().copied())
        .unwrap_or(1.0);
        let intercept = lookup(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            tags::RESCALE_INTERCEPT,
            true,
        )
        .and_then(floats)
        .and_then(|v| v.first().copied())
        .unwrap_or(0.0);

        let key_part = |seq: Tag, attr: Tag| -> Option<String> {
            pf.and_then(|p| first_item(p, seq))
                .and_then(|i| i.get(attr))
                .or_else(|| {
                    shared
                        .and_then(|s| first_item(s, seq))
                        .and_then(|i| i.get(attr))
                })
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let (stack, temporal) = if enhanced {
            (
                key_part(tags::FRAME_CONTENT_SEQUENCE, tags::STACK_ID)
                    .map(|v| format!("stack {v}")),
                key_part(tags::FRAME_CONTENT_SEQUENCE, tags::TEMPORAL_POSITION_INDEX),
            )
        } else {
            (
                get_str(top, tags::ECHO_NUMBERS).map(|v| format!("echo {v}")),
                get_str(top, tags::TEMPORAL_POSITION_IDENTIFIER),
            )
        };
        let stack_key = stack
            .into_iter()
            .chain(temporal.map(|t| format!("temporal position {t}")))
            .collect::<Vec<_>>()
            .join(", ");

        out.push(FrameInfo {
            path: path.to_path_buf(),
            frame: if multi { Some(f + 1) } else { None },
            sop_class_uid: sop_class_uid.clone(),
            sop_instance_uid: sop_instance_uid.clone(),
            series_instance_uid: series_instance_uid.clone(),
            study_instance_uid: study_instance_uid.clone(),
            frame_of_reference_uid: frame_of_reference_uid.clone(),
            modality: modality.clone(),
            layout: layout.clone(),
            ipp,
            iop,
            pixel_spacing,
            nominal_slice_step,
            rescale: Rescale { slope, intercept },
            stack_key,
            localizer,
        });
    }
    Ok(out)
}
