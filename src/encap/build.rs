//! Building an Encapsulated STL object (PS3.3 §A.85.1) from a mesh and its
//! source series.
//!
//! Module by module (IOD table A.85.1-1):
//!
//! | IE | module | how |
//! |---|---|---|
//! | Patient | Patient (C.7.1.1), Clinical Trial Subject (C.7.1.3) | copied from the source; type 2 written empty when absent; Clinical Trial Subject only when complete |
//! | Study | General Study (C.7.2.1), Patient Study (C.7.2.2) | copied from the source |
//! | Series | Encapsulated Document Series (C.24.1) | new: Modality `M3D`, new or given UID |
//! | Frame of Reference | Frame of Reference (C.7.4.1) | copied from the source (required) |
//! | Equipment | General (C.7.5.1) and Enhanced General (C.7.5.2) Equipment | from [`Equipment`] |
//! | Encapsulated Document | Encapsulated Document (C.24.2), Manufacturing 3D Model (C.41.1), SOP Common (C.12.1), Common Instance Reference (C.12.2) | built here |
//!
//! Only a fixed list of attributes is copied from the source, so odd or
//! image-specific attributes of the source never leak into the result.
//!
//! The result keeps the source's Specific Character Set, and copied text holds the bytes
//! stored in the source (see `raw.rs`): nothing is decoded and re-encoded, so names in
//! ISO 2022 code extensions (Korean, Japanese) or in bytes the declared set cannot decode
//! arrive unchanged. The node's own text is made to fit that character set ([`OwnText`]).

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, DicomValue, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use dicom_object::{FileDicomObject, FileMetaTableBuilder, InMemDicomObject};

use crate::encap::{
    ENCAPSULATED_STL_STORAGE, EncapError, EncapRequest, MODALITY_M3D, STL_MIME_TYPE, SourceSeries,
};
use crate::store::uid::{is_valid_uid, new_uid};
use crate::store::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// Maximum characters of an LO value.
pub(super) const LO_MAX: usize = 64;
/// Maximum characters of an ST value.
pub(super) const ST_MAX: usize = 1024;

/// Patient module (C.7.1.1): type 2 attributes, written empty when absent.
const PATIENT_TYPE2: &[(Tag, VR)] = &[
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
];

/// Patient module: other attributes, copied when present and not empty.
const PATIENT_OPTIONAL: &[Tag] = &[
    tags::REFERENCED_PATIENT_SEQUENCE,
    tags::ISSUER_OF_PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
    tags::TYPE_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_TIME,
    tags::OTHER_PATIENT_I_DS_SEQUENCE,
    tags::OTHER_PATIENT_NAMES,
    tags::PATIENT_COMMENTS,
    tags::PATIENT_SPECIES_DESCRIPTION,
    tags::PATIENT_SPECIES_CODE_SEQUENCE,
    tags::PATIENT_BREED_DESCRIPTION,
    tags::PATIENT_BREED_CODE_SEQUENCE,
    tags::BREED_REGISTRATION_SEQUENCE,
    tags::RESPONSIBLE_PERSON,
    tags::RESPONSIBLE_PERSON_ROLE,
    tags::RESPONSIBLE_ORGANIZATION,
    tags::PATIENT_IDENTITY_REMOVED,
    tags::DEIDENTIFICATION_METHOD,
    tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
];

/// Clinical Trial Subject module (C.7.1.3), copied only when its type 1
/// attributes (sponsor name, protocol ID) are present in the source.
const CLINICAL_TRIAL_SUBJECT: &[Tag] = &[
    tags::CLINICAL_TRIAL_SPONSOR_NAME,
    tags::CLINICAL_TRIAL_PROTOCOL_ID,
    tags::CLINICAL_TRIAL_PROTOCOL_NAME,
    tags::CLINICAL_TRIAL_SITE_ID,
    tags::CLINICAL_TRIAL_SITE_NAME,
    tags::CLINICAL_TRIAL_SUBJECT_ID,
    tags::CLINICAL_TRIAL_SUBJECT_READING_ID,
    tags::CLINICAL_TRIAL_PROTOCOL_ETHICS_COMMITTEE_NAME,
    tags::CLINICAL_TRIAL_PROTOCOL_ETHICS_COMMITTEE_APPROVAL_NUMBER,
];

/// General Study module (C.7.2.1): type 2 attributes.
const STUDY_TYPE2: &[(Tag, VR)] = &[
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
];

/// General Study and Patient Study modules: other attributes, copied when
/// present and not empty.
const STUDY_OPTIONAL: &[Tag] = &[
    tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
    tags::STUDY_DESCRIPTION,
    tags::REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE,
    tags::CONSULTING_PHYSICIAN_NAME,
    tags::PHYSICIANS_OF_RECORD,
    tags::PHYSICIANS_OF_RECORD_IDENTIFICATION_SEQUENCE,
    tags::NAME_OF_PHYSICIANS_READING_STUDY,
    tags::REFERENCED_STUDY_SEQUENCE,
    tags::PROCEDURE_CODE_SEQUENCE,
    tags::REASON_FOR_PERFORMED_PROCEDURE_CODE_SEQUENCE,
    tags::REQUESTING_SERVICE,
    // Patient Study module
    tags::ADMITTING_DIAGNOSES_DESCRIPTION,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
    tags::OCCUPATION,
    tags::ADDITIONAL_PATIENT_HISTORY,
    tags::PATIENT_SEX_NEUTERED,
];

/// Build a complete Encapsulated STL object (data set and file meta group,
/// Explicit VR Little Endian) for `req.stl`, made from the series `src`.
///
/// The result belongs to the source's patient, study and Frame of Reference,
/// lives in a new series (or the one given in `req`) with Modality `M3D`, and
/// references every source instance (Source Instance Sequence and, through
/// the Common Instance Reference module, Referenced Series Sequence).
///
/// Fails when the payload is empty, when the source lacks Study Instance UID
/// or Frame of Reference UID, when any UID is malformed (UIDs are checked
/// strictly because other code may use them as file names), when the result
/// series would be the source series, when a given content date/time is not
/// valid DA/TM, or when a type 1 equipment attribute is empty.
pub fn build_encapsulated_stl(
    src: &SourceSeries,
    req: &EncapRequest,
) -> Result<FileDicomObject<InMemDicomObject>, EncapError> {
    build_document(
        src,
        req,
        &DocumentKind {
            sop_class_uid: ENCAPSULATED_STL_STORAGE,
            mime_type: STL_MIME_TYPE,
            frame_of_reference: true,
            extra: Vec::new(),
        },
    )
}

/// Which encapsulated 3D model document to build (PS3.3 A.85.1 STL, A.85.2 OBJ, A.85.3
/// MTL): they share every module and differ in SOP class, MIME type, whether the Frame of
/// Reference applies, and a few attributes of their own (`extra`, put last).
pub(super) struct DocumentKind<'a> {
    pub sop_class_uid: &'a str,
    pub mime_type: &'a str,
    pub frame_of_reference: bool,
    pub extra: Vec<DataElement<InMemDicomObject>>,
}

/// Builds one Encapsulated Document (STL, OBJ or MTL) in the `M3D` series; see
/// [`build_encapsulated_stl`] for what is checked. `req.stl` is the payload, whatever the
/// format.
pub(super) fn build_document(
    src: &SourceSeries,
    req: &EncapRequest,
    kind: &DocumentKind<'_>,
) -> Result<FileDicomObject<InMemDicomObject>, EncapError> {
    if req.stl.is_empty() {
        return Err(EncapError::EmptyStl);
    }
    // The padded value must fit a 32-bit length that is not the undefined one.
    if req.stl.len() >= (u32::MAX - 1) as usize {
        return Err(EncapError::StlTooLarge(req.stl.len()));
    }
    let mut base = Base::new(src, req, MODALITY_M3D, kind.frame_of_reference)?;
    let obj = &mut base.obj;
    let own = &base.own;

    // ---- Encapsulated Document IE: Encapsulated Document module (Instance Number and
    // Content Date/Time are in the base)
    obj.put(DataElement::empty(tags::ACQUISITION_DATE_TIME, VR::DT));
    put_str(obj, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    obj.put(DataElement::new(
        tags::SOURCE_INSTANCE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(source_references(src)),
    ));
    let title = clean_text(&req.document_title, ST_MAX);
    if title.is_empty() {
        obj.put(DataElement::empty(tags::DOCUMENT_TITLE, VR::ST));
    } else {
        own.put(obj, tags::DOCUMENT_TITLE, VR::ST, &title);
    }
    // Type 2; no code in CID 7061 names "a surface reconstructed from a
    // volume" well enough, so it is left empty.
    obj.put(DataElement::empty(tags::CONCEPT_NAME_CODE_SEQUENCE, VR::SQ));
    put_str(
        obj,
        tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT,
        VR::LO,
        kind.mime_type,
    );
    let mut document = req.stl.to_vec();
    if document.len() % 2 == 1 {
        document.push(0);
    }
    obj.put(DataElement::new(
        tags::ENCAPSULATED_DOCUMENT,
        VR::OB,
        PrimitiveValue::from(document),
    ));
    // checked above: fits in u32
    let stl_len =
        u32::try_from(req.stl.len()).map_err(|_| EncapError::StlTooLarge(req.stl.len()))?;
    obj.put(DataElement::new(
        tags::ENCAPSULATED_DOCUMENT_LENGTH,
        VR::UL,
        PrimitiveValue::from(stl_len),
    ));

    // ---- Manufacturing 3D Model module: coordinates are in millimetres
    obj.put(DataElement::new(
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![code_item("mm", "UCUM", "millimeter")]),
    ));

    // ---- Common Instance Reference module: the source series, same study
    put_common_instance_reference(obj, src);

    for e in &kind.extra {
        obj.put(e.clone());
    }
    tracing::debug!(
        sop_class_uid = kind.sop_class_uid,
        sop_instance_uid = %base.sop_uid,
        series_instance_uid = %base.series_uid,
        bytes = req.stl.len(),
        references = src.instances.len(),
        "built encapsulated 3D model object"
    );
    base.finish(kind.sop_class_uid)
}

/// The modules every object m3dnode makes shares, filled from the source and the request:
/// Patient, Clinical Trial Subject, General Study, Patient Study, the series attributes
/// (General Series / Encapsulated Document Series: Modality, UID, number, description, the
/// metrics comment), Frame of Reference (when it applies), General and Enhanced General
/// Equipment, and Instance Number, Content Date and Content Time.
pub(super) struct Base {
    pub obj: InMemDicomObject,
    pub own: OwnText,
    pub series_uid: String,
    pub sop_uid: String,
    pub now_date: String,
    pub now_time: String,
}

impl Base {
    pub(super) fn new(
        src: &SourceSeries,
        req: &EncapRequest,
        modality: &str,
        frame_of_reference: bool,
    ) -> Result<Base, EncapError> {
        if src.instances.is_empty() {
            return Err(EncapError::NoSourceInstances);
        }
        let rep = &src.representative;
        check_uid("source SeriesInstanceUID", &src.series_instance_uid)?;
        for inst in &src.instances {
            check_uid("source SOPClassUID", &inst.sop_class_uid)?;
            check_uid("source SOPInstanceUID", &inst.sop_instance_uid)?;
        }
        let study_uid = required_uid(rep, tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
        let frame_uid = required_uid(rep, tags::FRAME_OF_REFERENCE_UID, "FrameOfReferenceUID")?;

        let series_uid = match &req.series_instance_uid {
            Some(uid) => {
                check_uid("SeriesInstanceUID", uid)?;
                uid.clone()
            }
            None => new_uid(),
        };
        if series_uid == src.series_instance_uid {
            return Err(EncapError::SeriesUidIsSource(series_uid));
        }
        let sop_uid = match &req.sop_instance_uid {
            Some(uid) => {
                check_uid("SOPInstanceUID", uid)?;
                uid.clone()
            }
            None => new_uid(),
        };
        if src.instances.iter().any(|i| i.sop_instance_uid == sop_uid) {
            return Err(EncapError::SopInstanceUidIsSource(sop_uid));
        }

        let now = dicom_core::chrono::Local::now();
        let now_date = now.format("%Y%m%d").to_string();
        let now_time = now.format("%H%M%S%.6f").to_string();
        let (content_date, content_time) = match &req.content_datetime {
            Some((da, tm)) => {
                let (da, tm) = (da.trim(), tm.trim());
                if !is_valid_da(da) {
                    return Err(EncapError::InvalidDateTime {
                        field: "Content Date",
                        value: da.to_string(),
                    });
                }
                if !is_valid_tm(tm) {
                    return Err(EncapError::InvalidDateTime {
                        field: "Content Time",
                        value: tm.to_string(),
                    });
                }
                (da.to_string(), tm.to_string())
            }
            None => (now_date.clone(), now_time.clone()),
        };

        let eq = &req.equipment;
        let manufacturer = required_lo(&eq.manufacturer, "Manufacturer")?;
        let model_name = required_lo(&eq.model_name, "ManufacturerModelName")?;
        let serial = required_lo(&eq.device_serial_number, "DeviceSerialNumber")?;
        let software = required_lo(&eq.software_versions, "SoftwareVersions")?;

        let mut obj = InMemDicomObject::new_empty();
        // The result is in the source's character set; the node's own text is made to fit it.
        let charset = rep.get(tags::SPECIFIC_CHARACTER_SET).cloned();
        let own = OwnText::for_charset(charset.as_ref().and_then(element_text).as_deref());
        if let Some(charset) = charset {
            obj.put(charset);
        }

        // ---- Patient IE
        copy_type2(&mut obj, rep, PATIENT_TYPE2);
        copy_present(&mut obj, rep, PATIENT_OPTIONAL);
        if has_value(rep, tags::CLINICAL_TRIAL_SPONSOR_NAME)
            && has_value(rep, tags::CLINICAL_TRIAL_PROTOCOL_ID)
        {
            copy_present(&mut obj, rep, CLINICAL_TRIAL_SUBJECT);
            // type 2 attributes of that module
            copy_type2(
                &mut obj,
                rep,
                &[
                    (tags::CLINICAL_TRIAL_PROTOCOL_NAME, VR::LO),
                    (tags::CLINICAL_TRIAL_SITE_ID, VR::LO),
                    (tags::CLINICAL_TRIAL_SITE_NAME, VR::LO),
                ],
            );
        }

        // ---- Study IE
        put_str(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, &study_uid);
        copy_type2(&mut obj, rep, STUDY_TYPE2);
        copy_present(&mut obj, rep, STUDY_OPTIONAL);

        // ---- Series IE: Encapsulated Document Series module / General Series module
        put_str(&mut obj, tags::MODALITY, VR::CS, modality);
        put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
        put_str(
            &mut obj,
            tags::SERIES_NUMBER,
            VR::IS,
            &req.series_number.to_string(),
        );
        let series_description = clean_line(&req.series_description, LO_MAX);
        if !series_description.is_empty() {
            own.put(
                &mut obj,
                tags::SERIES_DESCRIPTION,
                VR::LO,
                &series_description,
            );
        }
        if let Some(comment) = &req.metrics_comment {
            let comment = clean_text(comment, ST_MAX);
            if !comment.is_empty() {
                own.put(
                    &mut obj,
                    tags::COMMENTS_ON_THE_PERFORMED_PROCEDURE_STEP,
                    VR::ST,
                    &comment,
                );
            }
        }

        // ---- Frame of Reference IE
        if frame_of_reference {
            put_str(&mut obj, tags::FRAME_OF_REFERENCE_UID, VR::UI, &frame_uid);
            copy_type2(
                &mut obj,
                rep,
                &[(tags::POSITION_REFERENCE_INDICATOR, VR::LO)],
            );
        }

        // ---- Equipment IE: General and Enhanced General Equipment
        own.put(&mut obj, tags::MANUFACTURER, VR::LO, &manufacturer);
        own.put(&mut obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, &model_name);
        own.put(&mut obj, tags::DEVICE_SERIAL_NUMBER, VR::LO, &serial);
        own.put(&mut obj, tags::SOFTWARE_VERSIONS, VR::LO, &software);
        if let Some(institution) = &eq.institution_name {
            let institution = clean_line(institution, LO_MAX);
            if !institution.is_empty() {
                own.put(&mut obj, tags::INSTITUTION_NAME, VR::LO, &institution);
            }
        }

        // ---- Instance Number and content date/time (Encapsulated Document module,
        // Surface Segmentation module's Content Identification)
        put_str(
            &mut obj,
            tags::INSTANCE_NUMBER,
            VR::IS,
            &req.instance_number.to_string(),
        );
        put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &content_date);
        put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &content_time);

        Ok(Base {
            obj,
            own,
            series_uid,
            sop_uid,
            now_date,
            now_time,
        })
    }

    /// Adds the SOP Common module and the file meta group.
    pub(super) fn finish(
        mut self,
        sop_class_uid: &str,
    ) -> Result<FileDicomObject<InMemDicomObject>, EncapError> {
        let obj = &mut self.obj;
        put_str(obj, tags::SOP_CLASS_UID, VR::UI, sop_class_uid);
        put_str(obj, tags::SOP_INSTANCE_UID, VR::UI, &self.sop_uid);
        put_str(obj, tags::INSTANCE_CREATION_DATE, VR::DA, &self.now_date);
        put_str(obj, tags::INSTANCE_CREATION_TIME, VR::TM, &self.now_time);
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .media_storage_sop_class_uid(sop_class_uid)
            .media_storage_sop_instance_uid(self.sop_uid.as_str())
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME);
        self.obj.with_meta(meta).map_err(EncapError::FileMeta)
    }
}

/// Common Instance Reference module (C.12.2): the source series, in the same study.
pub(super) fn put_common_instance_reference(obj: &mut InMemDicomObject, src: &SourceSeries) {
    let mut series_item = InMemDicomObject::new_empty();
    put_str(
        &mut series_item,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &src.series_instance_uid,
    );
    series_item.put(DataElement::new(
        tags::REFERENCED_INSTANCE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(source_references(src)),
    ));
    obj.put(DataElement::new(
        tags::REFERENCED_SERIES_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![series_item]),
    ));
}

/// One item per distinct source instance: Referenced SOP Class/Instance UID.
pub(super) fn source_references(src: &SourceSeries) -> Vec<InMemDicomObject> {
    let mut seen = std::collections::HashSet::new();
    src.instances
        .iter()
        .filter(|i| seen.insert(i.sop_instance_uid.as_str()))
        .map(|i| {
            let mut item = InMemDicomObject::new_empty();
            put_str(
                &mut item,
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                &i.sop_class_uid,
            );
            put_str(
                &mut item,
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &i.sop_instance_uid,
            );
            item
        })
        .collect()
}

/// A Code Sequence item (Basic Code Sequence Macro).
pub(super) fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, value);
    put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put_str(&mut item, tags::CODE_MEANING, VR::LO, meaning);
    item
}

pub(super) fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn check_uid(field: &'static str, value: &str) -> Result<(), EncapError> {
    if is_valid_uid(value) {
        Ok(())
    } else {
        Err(EncapError::InvalidUid {
            field,
            value: value.to_string(),
        })
    }
}

/// A type 1 UID of the source, trimmed of padding and checked.
/// A UID attribute that must be present and valid.
pub(super) fn required_uid(
    obj: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
) -> Result<String, EncapError> {
    let value = obj
        .get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
        .ok_or(EncapError::MissingSourceAttribute(name))?;
    check_uid(name, &value)?;
    Ok(value)
}

/// A type 1 LO value from the request, cleaned; empty is an error.
fn required_lo(value: &str, name: &'static str) -> Result<String, EncapError> {
    let value = clean_line(value, LO_MAX);
    if value.is_empty() {
        Err(EncapError::EmptyEquipment(name))
    } else {
        Ok(value)
    }
}

/// Whether the element is present with a non-empty value (or items).
fn has_value(obj: &InMemDicomObject, tag: Tag) -> bool {
    match obj.get(tag) {
        None => false,
        Some(e) => match (e.items(), e.value()) {
            (Some(items), _) => !items.is_empty(),
            // Text kept as stored (raw.rs): blank unless something but padding is there.
            (None, DicomValue::Primitive(PrimitiveValue::U8(bytes))) => {
                bytes.iter().any(|b| !matches!(b, b' ' | b'\0'))
            }
            (None, _) => e.to_str().map(|s| !s.trim().is_empty()).unwrap_or(true),
        },
    }
}

/// Copy the listed attributes from the source, writing empty ones (type 2)
/// where the source lacks them.
fn copy_type2(obj: &mut InMemDicomObject, src: &InMemDicomObject, list: &[(Tag, VR)]) {
    for &(tag, vr) in list {
        match src.get(tag) {
            Some(e) if e.vr() == vr => {
                obj.put(e.clone());
            }
            Some(e) if matches!(e.value(), DicomValue::Primitive(PrimitiveValue::U8(_))) => {
                // Stored with another VR (UN): the bytes as stored, under the right VR,
                // never decoded and re-encoded.
                obj.put(DataElement::new(tag, vr, e.value().clone()));
            }
            Some(e) => {
                // Stored with another VR: keep the value when it reads as text, under the
                // right VR.
                match e.to_str() {
                    Ok(s) if e.vr() != VR::SQ => put_str(obj, tag, vr, s.trim()),
                    _ => {
                        obj.put(DataElement::empty(tag, vr));
                    }
                }
            }
            None => {
                obj.put(DataElement::empty(tag, vr));
            }
        }
    }
}

/// Copy the listed attributes from the source when present with a value.
/// Elements whose VR is UN are skipped: their encoding is unknown.
fn copy_present(obj: &mut InMemDicomObject, src: &InMemDicomObject, list: &[Tag]) {
    for &tag in list {
        match src.get(tag) {
            Some(e) if e.vr() != VR::UN && has_value(src, tag) => {
                obj.put(e.clone());
            }
            _ => {}
        }
    }
}

/// A value's text when it is text or bytes (a Specific Character Set kept as stored).
fn element_text(e: &DataElement<InMemDicomObject>) -> Option<String> {
    let text = match e.value() {
        DicomValue::Primitive(PrimitiveValue::U8(bytes)) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
        _ => e.to_str().ok()?.into_owned(),
    };
    Some(text.trim_end_matches(['\0', ' ']).to_string())
}

/// How the node's own text (titles, descriptions, equipment) is written in the source's
/// character set, which the result keeps (the source's text is copied as stored, so the
/// character set cannot change).
///
/// ASCII is valid under every character set DICOM defines (in G0, before any escape), so
/// it is always written as is. Other characters are encoded with the source's character
/// set when that is one dicom-rs encodes without code extensions (a single ISO 8859 part,
/// UTF-8, GB18030, GBK); otherwise — the default repertoire, ISO 2022 code extensions, JIS
/// X 0201 — each is replaced by `?`, never written in bytes the declared set does not mean.
pub(super) enum OwnText {
    Ascii,
    Encoded(SpecificCharacterSet),
}

impl OwnText {
    fn for_charset(charset: Option<&str>) -> OwnText {
        const ENCODABLE: &[&str] = &[
            "ISO_IR 100",
            "ISO_IR 101",
            "ISO_IR 109",
            "ISO_IR 110",
            "ISO_IR 126",
            "ISO_IR 127",
            "ISO_IR 138",
            "ISO_IR 144",
            "ISO_IR 166",
            "ISO_IR 192",
            "GB18030",
            "GBK",
        ];
        match charset
            .filter(|cs| ENCODABLE.contains(cs))
            .and_then(SpecificCharacterSet::from_code)
        {
            Some(codec) => OwnText::Encoded(codec),
            None => OwnText::Ascii,
        }
    }

    /// Puts `text` as `tag`: as a string when ASCII, else as the bytes of its encoding
    /// (so that the writer, whatever codec it picks from (0008,0005), writes them as is).
    pub(super) fn put(&self, obj: &mut InMemDicomObject, tag: Tag, vr: VR, text: &str) {
        if text.is_ascii() {
            return put_str(obj, tag, vr, text);
        }
        let mut bytes = Vec::with_capacity(text.len());
        let mut buf = [0u8; 4];
        for c in text.chars() {
            match self {
                OwnText::Encoded(codec) => match codec.encode(c.encode_utf8(&mut buf)) {
                    Ok(encoded) => bytes.extend_from_slice(&encoded),
                    Err(_) => bytes.push(b'?'),
                },
                OwnText::Ascii if c.is_ascii() => bytes.push(c as u8),
                OwnText::Ascii => bytes.push(b'?'),
            }
        }
        if bytes.len() % 2 == 1 {
            bytes.push(b' ');
        }
        obj.put(DataElement::new(tag, vr, PrimitiveValue::U8(bytes.into())));
    }
}

/// One line of text for LO/SH-like values: no control characters, no
/// backslash (the value delimiter), trimmed, at most `max` characters.
pub(super) fn clean_line(s: &str, max: usize) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c == '\\' { '/' } else { c })
        .filter(|c| !c.is_control())
        .collect();
    truncate_chars(cleaned.trim(), max)
}

/// Free text for ST values: control characters other than CR, LF, TAB and FF
/// removed, trailing spaces trimmed, at most `max` characters.
pub(super) fn clean_text(s: &str, max: usize) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\r' | '\n' | '\t' | '\u{c}'))
        .collect();
    truncate_chars(cleaned.trim_end(), max)
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => {
            tracing::warn!(max, "text value cut to its VR's maximum length");
            s[..cut].trim_end().to_string()
        }
        None => s.to_string(),
    }
}

/// DA: YYYYMMDD with a plausible month and day.
fn is_valid_da(s: &str) -> bool {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let month: u32 = s[4..6].parse().unwrap_or(0);
    let day: u32 = s[6..8].parse().unwrap_or(0);
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// TM: HH[MM[SS[.F{1,6}]]] with valid ranges (leap second allowed).
fn is_valid_tm(s: &str) -> bool {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    if !whole.bytes().all(|b| b.is_ascii_digit()) || ![2, 4, 6].contains(&whole.len()) {
        return false;
    }
    let frac_ok = frac.is_none_or(|f| {
        whole.len() == 6 && !f.is_empty() && f.len() <= 6 && f.bytes().all(|b| b.is_ascii_digit())
    });
    if !frac_ok {
        return false;
    }
    let part = |i: usize| whole.get(i..i + 2).and_then(|p| p.parse::<u32>().ok());
    part(0).is_some_and(|h| h < 24)
        && part(2).is_none_or(|m| m < 60)
        && part(4).is_none_or(|sec| sec <= 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encap::{Equipment, SourceInstance, extract_stl};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn testdata() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
    }

    /// The sorted files of a test series, its source description and files.
    fn load_series(name: &str) -> (SourceSeries, Vec<PathBuf>) {
        let dir = testdata().join("series").join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no files in {}", dir.display());
        let mut instances = Vec::new();
        let mut representative = None;
        for f in &files {
            let obj = dicom_object::open_file(f)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
            instances.push(SourceInstance::from_object(&obj).expect("source UIDs"));
            if representative.is_none() {
                representative = Some(obj.into_inner());
            }
        }
        // As the node loads it: text values as stored.
        let mut representative = representative.expect("first file");
        super::super::raw::keep_stored_text(
            &mut representative,
            &super::super::stored_values(&files[0]).expect("stored values"),
        );
        let series_instance_uid = representative
            .get(tags::SERIES_INSTANCE_UID)
            .expect("series UID")
            .to_str()
            .expect("text")
            .trim_end_matches('\0')
            .to_string();
        (
            SourceSeries {
                representative,
                instances,
                series_instance_uid,
            },
            files,
        )
    }

    /// A binary STL of a tetrahedron (4 facets, 284 bytes: even length).
    fn tetra_binary() -> Vec<u8> {
        let v = [
            [0.0f32, 0.0, 0.0],
            [10.0, 0.0, 0.0],
            [0.0, 10.0, 0.0],
            [0.0, 0.0, 10.0],
        ];
        let faces = [[0usize, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]];
        let mut out = vec![0u8; 80];
        out[..14].copy_from_slice(b"m3dnode tetra ");
        out.extend_from_slice(&(faces.len() as u32).to_le_bytes());
        for f in faces {
            let (a, b, c) = (v[f[0]], v[f[1]], v[f[2]]);
            let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
            let w = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
            let n = [
                u[1] * w[2] - u[2] * w[1],
                u[2] * w[0] - u[0] * w[2],
                u[0] * w[1] - u[1] * w[0],
            ];
            let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            for x in n.iter().map(|x| x / len).chain(a).chain(b).chain(c) {
                out.extend_from_slice(&x.to_le_bytes());
            }
            out.extend_from_slice(&0u16.to_le_bytes());
        }
        assert_eq!(out.len(), 84 + 4 * 50);
        out
    }

    /// A text STL of one facet whose length is odd.
    fn odd_text_stl() -> Vec<u8> {
        let mut s = String::from(
            "solid t\n facet normal 0 0 1\n  outer loop\n   vertex 0 0 0\n   vertex 1 0 0\n   vertex 0 1 0\n  endloop\n endfacet\nendsolid t\n",
        );
        if s.len() % 2 == 0 {
            s.push('\n');
        }
        s.into_bytes()
    }

    fn request(stl: &[u8]) -> EncapRequest<'_> {
        EncapRequest {
            stl,
            document_title: "Bone surface, iso 300 HU".to_string(),
            series_description: "m3dnode surface".to_string(),
            series_instance_uid: None,
            sop_instance_uid: None,
            series_number: 9001,
            instance_number: 1,
            content_datetime: None,
            equipment: Equipment::default(),
            metrics_comment: Some("triangles=4, volume_mm3=166.667, watertight=yes".to_string()),
        }
    }

    fn write_temp(obj: &FileDicomObject<InMemDicomObject>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("result.dcm");
        obj.write_to_file(&path).expect("write result");
        (dir, path)
    }

    /// Output (stdout + stderr) of a dicom3tools checker; a missing checker fails the test.
    fn run_tool(tool: &str, args: &[&Path]) -> Option<String> {
        match Command::new(tool).args(args).output() {
            Ok(out) => Some(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("`{tool}` is not installed: run scripts/test, which installs dicom3tools")
            }
            Err(e) => panic!("cannot run {tool}: {e}"),
        }
    }

    fn problem_lines(output: &str) -> Vec<&str> {
        output
            .lines()
            .filter(|l| l.contains("Error") || l.contains("Warning"))
            .collect()
    }

    fn assert_dciodvfy_clean(path: &Path) {
        let Some(output) = run_tool("dciodvfy", &[path]) else {
            return;
        };
        let problems = problem_lines(&output);
        assert!(
            problems.is_empty(),
            "dciodvfy reported {} problem(s):\n{output}",
            problems.len()
        );
        println!("dciodvfy output:\n{output}");
    }

    fn check_series_is_clean(name: &str) {
        let (src, _) = load_series(name);
        let stl = tetra_binary();
        let obj = build_encapsulated_stl(&src, &request(&stl)).expect("build");
        let (_dir, path) = write_temp(&obj);
        assert_dciodvfy_clean(&path);
    }

    #[test]
    fn ct_result_passes_dciodvfy() {
        check_series_is_clean("ct_head_axial_small");
    }

    #[test]
    fn mr_result_passes_dciodvfy() {
        check_series_is_clean("mr_t1_axial_2mm");
    }

    fn check_entities_consistent(name: &str) {
        let (src, files) = load_series(name);
        let stl = tetra_binary();
        let obj = build_encapsulated_stl(&src, &request(&stl)).expect("build");
        let (_dir, path) = write_temp(&obj);
        let mut args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        args.push(&path);
        let Some(output) = run_tool("dcentvfy", &args) else {
            return;
        };
        let errors: Vec<&str> = output.lines().filter(|l| l.contains("Error")).collect();
        assert!(errors.is_empty(), "dcentvfy reported errors:\n{output}");
        println!("dcentvfy output ({} files):\n{output}", args.len());
    }

    #[test]
    fn ct_result_is_entity_consistent_with_source() {
        check_entities_consistent("ct_head_axial_small");
    }

    #[test]
    fn mr_result_is_entity_consistent_with_source() {
        check_entities_consistent("mr_t1_axial_2mm");
    }

    #[test]
    fn stl_round_trips_exactly_even_and_odd() {
        let (src, _) = load_series("ct_head_axial_small");
        for stl in [tetra_binary(), odd_text_stl()] {
            let obj = build_encapsulated_stl(&src, &request(&stl)).expect("build");
            let (_dir, path) = write_temp(&obj);
            let back = dicom_object::open_file(&path).expect("read back");
            let doc = back
                .get(tags::ENCAPSULATED_DOCUMENT)
                .expect("document")
                .to_bytes()
                .expect("bytes");
            assert_eq!(doc.len() % 2, 0, "stored value must be even");
            assert_eq!(doc.len(), stl.len() + stl.len() % 2);
            assert_eq!(extract_stl(&back).expect("extract"), stl);
        }
        // the odd case really was odd
        assert_eq!(odd_text_stl().len() % 2, 1);
    }

    fn text(obj: &InMemDicomObject, tag: Tag) -> String {
        element_text(obj.get(tag).unwrap_or_else(|| panic!("{tag} missing")))
            .unwrap_or_else(|| panic!("{tag} not text"))
    }

    #[test]
    fn result_belongs_to_source_study_and_references_every_instance() {
        let (src, files) = load_series("ct_head_axial_small");
        let stl = tetra_binary();
        let obj = build_encapsulated_stl(&src, &request(&stl)).expect("build");
        let (_dir, path) = write_temp(&obj);
        let back = dicom_object::open_file(&path).expect("read back");
        let rep = &src.representative;

        for tag in [
            tags::STUDY_INSTANCE_UID,
            tags::FRAME_OF_REFERENCE_UID,
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::STUDY_DATE,
            tags::STUDY_TIME,
            tags::STUDY_ID,
            tags::SPECIFIC_CHARACTER_SET,
        ] {
            assert_eq!(text(&back, tag), text(rep, tag), "{tag}");
        }
        for tag in [
            tags::PATIENT_BIRTH_DATE,
            tags::PATIENT_SEX,
            tags::ACCESSION_NUMBER,
            tags::REFERRING_PHYSICIAN_NAME,
            tags::POSITION_REFERENCE_INDICATOR,
        ] {
            assert!(back.get(tag).is_some(), "type 2 {tag} must be present");
        }
        let series_uid = text(&back, tags::SERIES_INSTANCE_UID);
        assert_ne!(series_uid, src.series_instance_uid);
        assert!(is_valid_uid(&series_uid));
        assert_eq!(text(&back, tags::MODALITY), "M3D");
        assert_eq!(text(&back, tags::SOP_CLASS_UID), ENCAPSULATED_STL_STORAGE);
        assert_eq!(
            text(&back, tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT),
            "model/stl"
        );
        assert_eq!(
            back.get(tags::ENCAPSULATED_DOCUMENT_LENGTH)
                .expect("length")
                .to_int::<u32>()
                .expect("UL"),
            stl.len() as u32
        );
        assert_eq!(
            text(&back, tags::COMMENTS_ON_THE_PERFORMED_PROCEDURE_STEP),
            "triangles=4, volume_mm3=166.667, watertight=yes"
        );
        let units = back
            .get(tags::MEASUREMENT_UNITS_CODE_SEQUENCE)
            .and_then(|e| e.items())
            .expect("units");
        assert_eq!(units.len(), 1);
        assert_eq!(text(&units[0], tags::CODE_VALUE), "mm");
        assert_eq!(text(&units[0], tags::CODING_SCHEME_DESIGNATOR), "UCUM");

        // file meta
        let meta = back.meta();
        assert_eq!(
            meta.transfer_syntax().trim_end_matches('\0'),
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        );
        assert_eq!(
            meta.media_storage_sop_class_uid().trim_end_matches('\0'),
            ENCAPSULATED_STL_STORAGE
        );
        assert_eq!(
            meta.media_storage_sop_instance_uid().trim_end_matches('\0'),
            text(&back, tags::SOP_INSTANCE_UID)
        );
        assert_eq!(
            meta.implementation_class_uid().trim_end_matches('\0'),
            IMPLEMENTATION_CLASS_UID
        );
        let version = meta.implementation_version_name().expect("version name");
        assert!(version.trim().starts_with("M3DNODE_") && version.trim().len() <= 16);

        // references: every source file, in both sequences
        let expected: std::collections::BTreeSet<(String, String)> = files
            .iter()
            .map(|f| {
                let o = dicom_object::open_file(f).expect("source");
                (
                    text(&o, tags::SOP_CLASS_UID),
                    text(&o, tags::SOP_INSTANCE_UID),
                )
            })
            .collect();
        assert_eq!(expected.len(), files.len());
        let refs = |items: &[InMemDicomObject]| -> std::collections::BTreeSet<(String, String)> {
            items
                .iter()
                .map(|i| {
                    (
                        text(i, tags::REFERENCED_SOP_CLASS_UID),
                        text(i, tags::REFERENCED_SOP_INSTANCE_UID),
                    )
                })
                .collect()
        };
        let source_items = back
            .get(tags::SOURCE_INSTANCE_SEQUENCE)
            .and_then(|e| e.items())
            .expect("source instance sequence");
        assert_eq!(source_items.len(), files.len());
        assert_eq!(refs(source_items), expected);
        let series_items = back
            .get(tags::REFERENCED_SERIES_SEQUENCE)
            .and_then(|e| e.items())
            .expect("referenced series sequence");
        assert_eq!(series_items.len(), 1);
        assert_eq!(
            text(&series_items[0], tags::SERIES_INSTANCE_UID),
            src.series_instance_uid
        );
        let instance_items = series_items[0]
            .get(tags::REFERENCED_INSTANCE_SEQUENCE)
            .and_then(|e| e.items())
            .expect("referenced instance sequence");
        assert_eq!(refs(instance_items), expected);
    }

    #[test]
    fn given_uids_and_content_time_are_used() {
        let (src, _) = load_series("ct_head_axial_small");
        let stl = tetra_binary();
        let mut req = request(&stl);
        req.series_instance_uid = Some("2.25.1234".to_string());
        req.sop_instance_uid = Some("2.25.5678".to_string());
        req.content_datetime = Some(("20240131".to_string(), "235959.5".to_string()));
        let obj = build_encapsulated_stl(&src, &req).expect("build");
        assert_eq!(text(&obj, tags::SERIES_INSTANCE_UID), "2.25.1234");
        assert_eq!(text(&obj, tags::SOP_INSTANCE_UID), "2.25.5678");
        assert_eq!(text(&obj, tags::CONTENT_DATE), "20240131");
        assert_eq!(text(&obj, tags::CONTENT_TIME), "235959.5");
        assert_eq!(text(&obj, tags::SERIES_NUMBER), "9001");
    }

    #[test]
    fn bad_requests_are_refused() {
        let (src, _) = load_series("ct_head_axial_small");
        let stl = tetra_binary();

        assert!(matches!(
            build_encapsulated_stl(&src, &request(&[])),
            Err(EncapError::EmptyStl)
        ));

        let mut req = request(&stl);
        req.series_instance_uid = Some(src.series_instance_uid.clone());
        assert!(matches!(
            build_encapsulated_stl(&src, &req),
            Err(EncapError::SeriesUidIsSource(_))
        ));

        let mut req = request(&stl);
        req.sop_instance_uid = Some("../../x".to_string());
        assert!(matches!(
            build_encapsulated_stl(&src, &req),
            Err(EncapError::InvalidUid { .. })
        ));

        let mut req = request(&stl);
        req.sop_instance_uid = Some(src.instances[0].sop_instance_uid.clone());
        assert!(matches!(
            build_encapsulated_stl(&src, &req),
            Err(EncapError::SopInstanceUidIsSource(_))
        ));

        for (da, tm) in [
            ("2024013", "1200"),
            ("20241301", "1200"),
            ("20240101", "2500"),
            ("20240101", "12.5"),
        ] {
            let mut req = request(&stl);
            req.content_datetime = Some((da.to_string(), tm.to_string()));
            assert!(
                matches!(
                    build_encapsulated_stl(&src, &req),
                    Err(EncapError::InvalidDateTime { .. })
                ),
                "{da} {tm}"
            );
        }

        let mut req = request(&stl);
        req.equipment.device_serial_number = "  ".to_string();
        assert!(matches!(
            build_encapsulated_stl(&src, &req),
            Err(EncapError::EmptyEquipment("DeviceSerialNumber"))
        ));

        let mut no_frame = src.clone();
        no_frame
            .representative
            .remove_element(tags::FRAME_OF_REFERENCE_UID);
        assert!(matches!(
            build_encapsulated_stl(&no_frame, &request(&stl)),
            Err(EncapError::MissingSourceAttribute("FrameOfReferenceUID"))
        ));

        let mut no_instances = src.clone();
        no_instances.instances.clear();
        assert!(matches!(
            build_encapsulated_stl(&no_instances, &request(&stl)),
            Err(EncapError::NoSourceInstances)
        ));
    }

    #[test]
    fn absent_type2_source_attributes_are_written_empty() {
        let (mut src, _) = load_series("ct_head_axial_small");
        for tag in [
            tags::PATIENT_BIRTH_DATE,
            tags::PATIENT_SEX,
            tags::ACCESSION_NUMBER,
            tags::REFERRING_PHYSICIAN_NAME,
            tags::STUDY_ID,
            tags::POSITION_REFERENCE_INDICATOR,
        ] {
            src.representative.remove_element(tag);
        }
        let stl = tetra_binary();
        let obj = build_encapsulated_stl(&src, &request(&stl)).expect("build");
        for tag in [
            tags::PATIENT_BIRTH_DATE,
            tags::PATIENT_SEX,
            tags::ACCESSION_NUMBER,
            tags::REFERRING_PHYSICIAN_NAME,
            tags::STUDY_ID,
            tags::POSITION_REFERENCE_INDICATOR,
        ] {
            let e = obj.get(tag).unwrap_or_else(|| panic!("{tag} missing"));
            assert!(
                e.to_str().map(|s| s.trim().is_empty()).unwrap_or(false),
                "{tag} must be empty"
            );
        }
    }

    #[test]
    fn non_ascii_text_keeps_the_source_character_set() {
        let (src, _) = load_series("ct_head_axial_small");
        assert_eq!(
            text(&src.representative, tags::SPECIFIC_CHARACTER_SET),
            "ISO_IR 100"
        );
        let stl = tetra_binary();

        // Latin-1 text: the source's ISO_IR 100 can carry it.
        let mut req = request(&stl);
        req.document_title = "Knochenoberfläche, iso 300 HU".to_string();
        let obj = build_encapsulated_stl(&src, &req).expect("build");
        assert_eq!(text(&obj, tags::SPECIFIC_CHARACTER_SET), "ISO_IR 100");
        let (_dir, path) = write_temp(&obj);
        let back = dicom_object::open_file(&path).expect("read back");
        assert_eq!(
            text(&back, tags::DOCUMENT_TITLE),
            "Knochenoberfläche, iso 300 HU"
        );
        assert_dciodvfy_clean(&path);

        // Not Latin-1: the character set stays the source's (its text is copied as stored),
        // and what it cannot express of the node's own text becomes `?`.
        let mut req = request(&stl);
        req.document_title = "Bone surface, iso ≥ 300 HU".to_string();
        let obj = build_encapsulated_stl(&src, &req).expect("build");
        assert_eq!(text(&obj, tags::SPECIFIC_CHARACTER_SET), "ISO_IR 100");
        let (_dir, path) = write_temp(&obj);
        let back = dicom_object::open_file(&path).expect("read back");
        assert_eq!(
            text(&back, tags::DOCUMENT_TITLE),
            "Bone surface, iso ? 300 HU"
        );
        assert_eq!(
            text(&back, tags::PATIENT_NAME),
            text(&src.representative, tags::PATIENT_NAME)
        );
        assert_dciodvfy_clean(&path);
    }

    #[test]
    fn text_the_declared_character_set_cannot_decode_is_copied_as_stored() {
        let (src, files) = load_series("ct_head_axial_small");
        // A source that declares UTF-8 but holds a Latin-1 name (a common fault): decoding
        // and re-encoding would write U+FFFD; the stored bytes must pass through untouched.
        let name = b"M\xfcller^Hans ".to_vec();
        let mut obj = dicom_object::open_file(&files[0]).expect("source");
        put_str(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
        obj.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::U8(name.clone().into()),
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("source.dcm");
        obj.write_to_file(&source).expect("write source");
        let loaded = SourceSeries::load(&source, src.instances.clone(), &src.series_instance_uid)
            .expect("load");
        let stl = tetra_binary();
        let result = build_encapsulated_stl(&loaded, &request(&stl)).expect("build");
        let (_dir, path) = write_temp(&result);
        let stored = crate::encap::stored_values(&path).expect("read result");
        let value = |tag| {
            stored
                .get(tag)
                .expect("element")
                .value()
                .to_bytes()
                .expect("bytes")
                .into_owned()
        };
        assert_eq!(value(tags::PATIENT_NAME), name);
        assert_eq!(value(tags::SPECIFIC_CHARACTER_SET), b"ISO_IR 192");
    }

    #[test]
    fn long_and_odd_text_is_cleaned() {
        let (src, _) = load_series("ct_head_axial_small");
        let stl = tetra_binary();
        let mut req = request(&stl);
        req.series_description = format!("a\\b\u{7}{}", "x".repeat(100));
        req.metrics_comment = Some("y".repeat(2000));
        let obj = build_encapsulated_stl(&src, &req).expect("build");
        let description = text(&obj, tags::SERIES_DESCRIPTION);
        assert_eq!(description.chars().count(), 64);
        assert!(description.starts_with("a/bx"));
        assert_eq!(
            text(&obj, tags::COMMENTS_ON_THE_PERFORMED_PROCEDURE_STEP).len(),
            1024
        );
    }

    #[test]
    fn date_and_time_syntax() {
        assert!(is_valid_da("20240229"));
        assert!(!is_valid_da("2024-02-29"));
        for ok in ["12", "1230", "123059", "123059.1", "235960.123456"] {
            assert!(is_valid_tm(ok), "{ok}");
        }
        for bad in [
            "",
            "1",
            "123",
            "2400",
            "1260",
            "123059.",
            "123059.1234567",
            "1230.5",
            "12:30",
        ] {
            assert!(!is_valid_tm(bad), "{bad}");
        }
    }
}
