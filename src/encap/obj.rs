//! Encapsulated OBJ and Encapsulated MTL (DICOM Supplement 208; PS3.3 A.85.2 and A.85.3,
//! SOP Classes `1.2.840.10008.5.1.4.1.1.104.4` and `.104.5`, MIME types `model/obj` and
//! `model/mtl`).
//!
//! What the standard asks, and how m3dnode does it:
//!
//! * **Modules.** Both IODs are the Encapsulated STL IOD's modules (Patient, Study,
//!   Encapsulated Document Series, Equipment, Encapsulated Document C.24.2, Manufacturing
//!   3D Model C.41.1, Common Instance Reference, SOP Common), built by the same code
//!   ([`super::build::build_document`]). The **Frame of Reference** module is part of the
//!   Encapsulated OBJ IOD (vertices are patient coordinates, mm) but not of the Encapsulated
//!   MTL IOD: a material library holds no coordinates, so the MTL object carries no Frame of
//!   Reference UID.
//! * **OBJ -> MTL link.** The OBJ text names its material library by a relative URI
//!   (`mtllib NAME.mtl`) and the DICOM object resolves that URI: the OBJ's Referenced
//!   Instance Sequence (0008,114A) (Encapsulated Document module, C.24.2) holds one item
//!   per referenced instance with Referenced SOP Class UID (Encapsulated MTL Storage),
//!   Referenced SOP Instance UID (the MTL object) and Relative URI Reference Within
//!   Encapsulated Document (0068,7005) = the exact string used after `mtllib`. The MTL does
//!   not reference the OBJ (an MTL may serve several OBJs; the link is one-way).
//! * **Model Group UID (0068,7004)** (Manufacturing 3D Model module): the same UID in every
//!   OBJ and MTL of one result, so that a receiver assembles the parts (bone, skin) into one
//!   model. m3dnode derives it from the result's base SOP Instance UID, so a re-run makes the
//!   same group. The Encapsulated STL objects do not carry it: the 2022 dicom3tools
//!   validator (Debian's) predates the attribute and would flag the STL objects, which are
//!   required to validate clean.
//! * **Colour.** The MTL material's `Kd` is the structure's colour in sRGB and `d` its
//!   opacity; the OBJ also carries Recommended Display CIELab Value (0062,000D) and
//!   Recommended Presentation Opacity (0066,000C) in its Manufacturing 3D Model module.
//! * **Names.** One OBJ per structure with object name (`o`) and material (`usemtl`) from
//!   the structure's label (whitespace replaced by `_`), vertex normals (`vn`) and faces
//!   `f a//a b//b c//c` (1-based); one MTL per structure, named `N-LABEL.mtl` (URI-safe
//!   characters only), so that each OBJ/MTL pair is complete when exported on its own.
//!
//! Sources: PS3.3 A.85.2/A.85.3 and C.24.2/C.41.1 as published since Supplement 208 (2021);
//! the attribute keywords and VRs as in the DICOM data dictionary (PS3.6) that dicom-rs and
//! pydicom ship.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::build::{DocumentKind, build_document, put_str};
use super::{EncapError, EncapRequest, SourceSeries, StructureMesh};

/// SOP Class UID of Encapsulated OBJ Storage.
pub const ENCAPSULATED_OBJ_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.104.4";
/// SOP Class UID of Encapsulated MTL Storage.
pub const ENCAPSULATED_MTL_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.104.5";
/// MIME type of an encapsulated OBJ document.
pub const OBJ_MIME_TYPE: &str = "model/obj";
/// MIME type of an encapsulated MTL document.
pub const MTL_MIME_TYPE: &str = "model/mtl";

/// The material library file name of structure `index` (0-based): `N-LABEL.mtl`, with only
/// URI-unreserved characters (A-Z a-z 0-9 - . _), so that it is a valid relative URI and
/// an `mtllib` argument without spaces.
pub fn mtl_file_name(index: usize, label: &str) -> String {
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{}-{}.mtl", index + 1, safe)
}

/// The OBJ text of a structure, referring to `mtl_name` and its material.
pub(super) fn obj_text(s: &StructureMesh<'_>, mtl_name: &str) -> String {
    let normals = crate::mesh::vertex_normals(s.mesh);
    crate::mesh::write_obj_with(s.mesh, &normals, s.label, Some(mtl_name), Some(s.label))
}

/// The MTL text of a structure: one material named after its label.
pub(super) fn mtl_text(s: &StructureMesh<'_>) -> String {
    crate::mesh::write_mtl(&[crate::mesh::Material {
        name: s.label.to_string(),
        kd: s.colour.to_srgb_unit(),
        opacity: s.opacity,
    }])
}

/// Builds an Encapsulated OBJ object for `req.stl` (the OBJ text), in Model Group
/// `model_group`, referencing the MTL object `mtl_uid` by the relative URI `mtl_name`.
pub(super) fn build_obj(
    src: &SourceSeries,
    req: &EncapRequest<'_>,
    s: &StructureMesh<'_>,
    model_group: &str,
    mtl_uid: &str,
    mtl_name: &str,
) -> Result<FileDicomObject<InMemDicomObject>, EncapError> {
    let mut reference = InMemDicomObject::new_empty();
    put_str(
        &mut reference,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        ENCAPSULATED_MTL_STORAGE,
    );
    put_str(
        &mut reference,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        mtl_uid,
    );
    put_str(
        &mut reference,
        tags::RELATIVE_URI_REFERENCE_WITHIN_ENCAPSULATED_DOCUMENT,
        VR::UR,
        mtl_name,
    );
    let opacity = if s.opacity.is_finite() {
        s.opacity.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let extra = vec![
        DataElement::new(
            tags::MODEL_GROUP_UID,
            VR::UI,
            PrimitiveValue::from(model_group),
        ),
        DataElement::new(
            tags::REFERENCED_INSTANCE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![reference]),
        ),
        DataElement::new(
            tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
            VR::US,
            PrimitiveValue::U16(s.colour.to_dicom().to_vec().into()),
        ),
        DataElement::new(
            tags::RECOMMENDED_PRESENTATION_OPACITY,
            VR::FL,
            PrimitiveValue::from(opacity),
        ),
    ];
    build_document(
        src,
        req,
        &DocumentKind {
            sop_class_uid: ENCAPSULATED_OBJ_STORAGE,
            mime_type: OBJ_MIME_TYPE,
            frame_of_reference: true,
            extra,
        },
    )
}

/// Builds an Encapsulated MTL object for `req.stl` (the MTL text), in Model Group
/// `model_group`, without a Frame of Reference.
pub(super) fn build_mtl(
    src: &SourceSeries,
    req: &EncapRequest<'_>,
    model_group: &str,
) -> Result<FileDicomObject<InMemDicomObject>, EncapError> {
    build_document(
        src,
        req,
        &DocumentKind {
            sop_class_uid: ENCAPSULATED_MTL_STORAGE,
            mime_type: MTL_MIME_TYPE,
            frame_of_reference: false,
            extra: vec![DataElement::new(
                tags::MODEL_GROUP_UID,
                VR::UI,
                PrimitiveValue::from(model_group),
            )],
        },
    )
}
