//! The Modality Performed Procedure Step SCP (PS3.4 Annex F): N-CREATE and N-SET of the MPPS
//! SOP Class, kept in the index (`mpps`, `mpps_instances`), and the series-complete signal
//! they carry to the series tracker ([`MppsEvent`]).
//!
//! The checks are the SCP's part of PS3.4 F.7.2: N-CREATE only with status IN PROGRESS and its
//! type 1 attributes; N-SET only on a known step that is still IN PROGRESS (else Error ID
//! A710), never changing an attribute the N-SET column of Table F.7.2-1 does not allow (a value
//! equal to the stored one is tolerated: some scanners send the whole step again), and a final
//! status only with its end date and time and a Performed Series Sequence. The data set kept is
//! the merge of the N-CREATE and every N-SET, in Explicit VR Little Endian.
//!
//! [`create`] and [`set`] do the work synchronously on the index (a few rows); the SCP sends
//! their answer, then tells the tracker of a final step and hands the request to the forwarder
//! ([`forward`]) when `[mpps] forward_to` is set.

use std::sync::Mutex;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde::Deserialize;

use super::dimse::{self, status};
use crate::db::{Db, DbError, MppsInstance, MppsStatus, MppsWrite};

pub mod forward;

/// `[mpps]`: the MPPS SCP.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MppsConfig {
    /// A `[[peers]]` AE title (a RIS or PACS) that every accepted N-CREATE and N-SET is sent on
    /// to, after the scanner has its answer. Unset: nothing is forwarded.
    pub forward_to: Option<String>,
    /// Attempts per forwarded message before it is given up (logged).
    pub forward_attempts: u32,
    /// Seconds before the first retry; each further retry waits twice as long.
    pub forward_retry_seconds: f64,
}

impl Default for MppsConfig {
    fn default() -> Self {
        MppsConfig {
            forward_to: None,
            forward_attempts: 3,
            forward_retry_seconds: 2.0,
        }
    }
}

/// A step reached a final status: what the series tracker needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MppsEvent {
    /// The step's SOP Instance UID.
    pub sop_instance_uid: String,
    /// COMPLETED or DISCONTINUED.
    pub status: MppsStatus,
    /// Its Performed Series Sequence: each series with the SOP Instance UIDs listed for it
    /// (Referenced Image Sequence and Referenced Non-Image Composite SOP Instance Sequence).
    pub series: Vec<PerformedSeries>,
}

/// One Performed Series Sequence item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerformedSeries {
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// The instances listed for it (may be empty).
    pub sop_instance_uids: Vec<String>,
}

/// A request the SCP refuses: the DIMSE status and what the response says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// DIMSE status (0x0106, 0x0110, 0x0111, 0x0112, 0x0120, 0x0121).
    pub status: u16,
    /// Error Comment (at most 64 characters go on the wire).
    pub comment: String,
    /// Error ID (0000,0903): 0xA710 for an update of a final step.
    pub error_id: Option<u16>,
    /// Attribute Identifier List (0000,1005) for 0x0106/0x0120/0x0121.
    pub attributes: Vec<u32>,
}

impl Refusal {
    fn new(status: u16, comment: impl Into<String>) -> Refusal {
        Refusal {
            status,
            comment: comment.into(),
            error_id: None,
            attributes: Vec::new(),
        }
    }

    fn about(mut self, tags: &[Tag]) -> Refusal {
        self.attributes = tags.iter().map(|t| tag_u32(*t)).collect();
        self
    }

    /// The failure response to `field` (N_CREATE_RQ or N_SET_RQ).
    pub fn response(&self, field: u16, message_id: u16, sop_instance_uid: Option<&str>) -> Vec<u8> {
        let mut b = dimse::n_rsp(
            field,
            message_id,
            Some(super::MPPS),
            sop_instance_uid,
            self.status,
            false,
        )
        .error_comment(&self.comment);
        if let Some(id) = self.error_id {
            b = b.error_id(id);
        }
        if !self.attributes.is_empty() {
            b = b.attribute_identifier_list(&self.attributes);
        }
        b.encode()
    }
}

/// The index failed under a request: the SCP answers 0x0110.
impl From<DbError> for Refusal {
    fn from(e: DbError) -> Refusal {
        Refusal::new(status::PROCESSING_FAILURE, format!("index: {e}"))
    }
}

/// An accepted N-CREATE or N-SET.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The step (for N-CREATE, the UID the SCU gave or the one assigned).
    pub sop_instance_uid: String,
    /// Its status after the request.
    pub status: MppsStatus,
    /// Its series and instances, when the request made it final.
    pub event: Option<MppsEvent>,
}

fn tag_u32(t: Tag) -> u32 {
    (u32::from(t.group()) << 16) | u32::from(t.element())
}

/// The text of an element, padding removed; `None` when absent, `Some("")` when empty.
fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = obj.get(tag)?;
    if e.items().is_some() {
        return Some(String::new());
    }
    Some(
        e.to_str()
            .map(|s| s.trim_matches(['\0', ' ']).to_string())
            .unwrap_or_default(),
    )
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag)?.items()?.first()
}

/// The type 1 attributes of an MPPS N-CREATE (PS3.4 Table F.7.2-1), besides the status.
const CREATE_TYPE_1: &[Tag] = &[
    tags::PERFORMED_STATION_AE_TITLE,
    tags::PERFORMED_PROCEDURE_STEP_START_DATE,
    tags::PERFORMED_PROCEDURE_STEP_START_TIME,
    tags::PERFORMED_PROCEDURE_STEP_ID,
    tags::MODALITY,
    tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE,
];

/// Attributes an N-SET may not change (the "Not allowed" entries of the N-SET column of
/// PS3.4 Table F.7.2-1).
const SET_NOT_ALLOWED: &[Tag] = &[
    tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::REFERENCED_PATIENT_SEQUENCE,
    tags::PERFORMED_PROCEDURE_STEP_ID,
    tags::PERFORMED_STATION_AE_TITLE,
    tags::PERFORMED_STATION_NAME,
    tags::PERFORMED_LOCATION,
    tags::PERFORMED_PROCEDURE_STEP_START_DATE,
    tags::PERFORMED_PROCEDURE_STEP_START_TIME,
    tags::MODALITY,
    tags::STUDY_ID,
];

/// Keeps concurrent N-SETs of one step (from two associations) from both passing the status
/// check before either writes.
static UPDATES: Mutex<()> = Mutex::new(());

fn read(data: &[u8], ts: &str) -> Result<InMemDicomObject, Refusal> {
    dimse::read_data_set(data, ts).map_err(|e| {
        Refusal::new(
            status::PROCESSING_FAILURE,
            format!("unreadable attribute list: {e}"),
        )
    })
}

fn status_of(obj: &InMemDicomObject) -> Result<Option<MppsStatus>, Refusal> {
    match text(obj, tags::PERFORMED_PROCEDURE_STEP_STATUS) {
        None => Ok(None),
        Some(s) => MppsStatus::parse(&s).map(Some).ok_or_else(|| {
            Refusal::new(
                status::INVALID_ATTRIBUTE_VALUE,
                format!("Performed Procedure Step Status {s:?} is not IN PROGRESS, COMPLETED or DISCONTINUED"),
            )
            .about(&[tags::PERFORMED_PROCEDURE_STEP_STATUS])
        }),
    }
}

/// The Performed Series Sequence as series with their listed instances.
fn performed_series(obj: &InMemDicomObject) -> Vec<(PerformedSeries, Vec<MppsInstance>)> {
    let Some(items) = obj
        .get(tags::PERFORMED_SERIES_SEQUENCE)
        .and_then(|e| e.items())
    else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let series = text(item, tags::SERIES_INSTANCE_UID).filter(|s| !s.is_empty())?;
            let mut instances = Vec::new();
            for seq in [
                tags::REFERENCED_IMAGE_SEQUENCE,
                tags::REFERENCED_NON_IMAGE_COMPOSITE_SOP_INSTANCE_SEQUENCE,
            ] {
                for r in item.get(seq).and_then(|e| e.items()).unwrap_or(&[]) {
                    let Some(sop) =
                        text(r, tags::REFERENCED_SOP_INSTANCE_UID).filter(|s| !s.is_empty())
                    else {
                        continue;
                    };
                    instances.push(MppsInstance {
                        series_instance_uid: series.clone(),
                        sop_class_uid: text(r, tags::REFERENCED_SOP_CLASS_UID).unwrap_or_default(),
                        sop_instance_uid: sop,
                    });
                }
            }
            Some((
                PerformedSeries {
                    series_instance_uid: series,
                    sop_instance_uids: instances
                        .iter()
                        .map(|i| i.sop_instance_uid.clone())
                        .collect(),
                },
                instances,
            ))
        })
        .collect()
}

/// Writes `obj` as the step's row (create or update).
fn write_step(
    index: &Db,
    uid: &str,
    calling_ae: &str,
    st: MppsStatus,
    obj: &InMemDicomObject,
    create: bool,
) -> Result<(bool, Vec<PerformedSeries>), Refusal> {
    let attributes = dimse::write_data_set(obj, super::EXPLICIT_VR_LE).map_err(|e| {
        Refusal::new(
            status::PROCESSING_FAILURE,
            format!("cannot keep the step: {e}"),
        )
    })?;
    let listed = performed_series(obj);
    let instances: Vec<MppsInstance> = listed.iter().flat_map(|(_, i)| i.clone()).collect();
    let scheduled = first_item(obj, tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE);
    let study = scheduled.and_then(|s| text(s, tags::STUDY_INSTANCE_UID));
    let accession = scheduled.and_then(|s| text(s, tags::ACCESSION_NUMBER));
    let patient_id = text(obj, tags::PATIENT_ID);
    let modality = text(obj, tags::MODALITY);
    let pps_id = text(obj, tags::PERFORMED_PROCEDURE_STEP_ID);
    let w = MppsWrite {
        sop_instance_uid: uid,
        calling_ae,
        status: st,
        study_instance_uid: study.as_deref(),
        patient_id: patient_id.as_deref(),
        accession_number: accession.as_deref(),
        modality: modality.as_deref(),
        pps_id: pps_id.as_deref(),
        attributes: &attributes,
        instances: &instances,
    };
    let done = if create {
        index.create_mpps(&w)?
    } else {
        index.update_mpps(&w)?
    };
    Ok((done, listed.into_iter().map(|(s, _)| s).collect()))
}

/// An N-CREATE: checks the attribute list and records the step. `sop_instance_uid` is the
/// request's Affected SOP Instance UID; without one a UID is assigned (PS3.4 F.7.2.1.1 makes
/// the SCU give it; being lenient costs nothing).
pub fn create(
    index: &Db,
    calling_ae: &str,
    sop_instance_uid: Option<&str>,
    data: &[u8],
    ts: &str,
) -> Result<Accepted, Refusal> {
    let obj = read(data, ts)?;
    match status_of(&obj)? {
        Some(MppsStatus::InProgress) => {}
        None => {
            return Err(Refusal::new(
                status::MISSING_ATTRIBUTE,
                "Performed Procedure Step Status is missing",
            )
            .about(&[tags::PERFORMED_PROCEDURE_STEP_STATUS]));
        }
        Some(other) => {
            return Err(Refusal::new(
                status::INVALID_ATTRIBUTE_VALUE,
                format!("N-CREATE must have status IN PROGRESS, not {other}"),
            )
            .about(&[tags::PERFORMED_PROCEDURE_STEP_STATUS]));
        }
    }
    let missing: Vec<Tag> = CREATE_TYPE_1
        .iter()
        .copied()
        .filter(|t| obj.get(*t).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(Refusal::new(
            status::MISSING_ATTRIBUTE,
            "type 1 attributes of the step are missing",
        )
        .about(&missing));
    }
    let mut empty: Vec<Tag> = CREATE_TYPE_1
        .iter()
        .copied()
        .filter(|t| {
            let e = obj.get(*t);
            match e.and_then(|e| e.items()) {
                Some(items) => items.is_empty(),
                None => text(&obj, *t).is_none_or(|s| s.is_empty()),
            }
        })
        .collect();
    if first_item(&obj, tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE)
        .is_some_and(|s| text(s, tags::STUDY_INSTANCE_UID).is_none_or(|u| u.is_empty()))
    {
        empty.push(tags::STUDY_INSTANCE_UID);
    }
    if !empty.is_empty() {
        return Err(Refusal::new(
            status::MISSING_ATTRIBUTE_VALUE,
            "type 1 attributes of the step are empty",
        )
        .about(&empty));
    }
    let uid = match sop_instance_uid.map(|u| u.trim_end_matches(['\0', ' '])) {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => crate::store::uid::new_uid(),
    };
    let _g = UPDATES.lock().unwrap_or_else(|e| e.into_inner());
    let (created, _) = write_step(index, &uid, calling_ae, MppsStatus::InProgress, &obj, true)?;
    if !created {
        return Err(Refusal::new(
            status::DUPLICATE_SOP_INSTANCE,
            "a Performed Procedure Step with this SOP Instance UID exists",
        ));
    }
    Ok(Accepted {
        sop_instance_uid: uid,
        status: MppsStatus::InProgress,
        event: None,
    })
}

/// An N-SET: checks the modification list against the stored step, merges it in and records
/// the result. A final status yields the [`MppsEvent`] for the tracker.
pub fn set(
    index: &Db,
    calling_ae: &str,
    sop_instance_uid: &str,
    data: &[u8],
    ts: &str,
) -> Result<Accepted, Refusal> {
    let mods = read(data, ts)?;
    let _g = UPDATES.lock().unwrap_or_else(|e| e.into_inner());
    let Some(row) = index.mpps(sop_instance_uid)? else {
        return Err(Refusal::new(
            status::NO_SUCH_SOP_INSTANCE,
            "no Performed Procedure Step with this SOP Instance UID",
        ));
    };
    if row.status.is_final() {
        let mut r = Refusal::new(
            status::PROCESSING_FAILURE,
            "Performed Procedure Step Object may no longer be updated",
        );
        r.error_id = Some(status::MPPS_NO_LONGER_UPDATABLE);
        return Err(r);
    }
    let stored_bytes = index.mpps_attributes(sop_instance_uid)?.unwrap_or_default();
    let mut obj = read(&stored_bytes, super::EXPLICIT_VR_LE)?;
    let new_status = status_of(&mods)?.unwrap_or(row.status);
    let changed: Vec<Tag> = SET_NOT_ALLOWED
        .iter()
        .copied()
        .filter(|t| match (mods.get(*t), obj.get(*t)) {
            (None, _) => false,
            (Some(new), Some(old)) => new.value() != old.value(),
            (Some(_), None) => true,
        })
        .collect();
    if !changed.is_empty() {
        return Err(Refusal::new(
            status::INVALID_ATTRIBUTE_VALUE,
            "N-SET may not change these attributes of the step",
        )
        .about(&changed));
    }
    for e in mods {
        obj.put(e);
    }
    if new_status.is_final() {
        let mut missing: Vec<Tag> = [
            tags::PERFORMED_PROCEDURE_STEP_END_DATE,
            tags::PERFORMED_PROCEDURE_STEP_END_TIME,
        ]
        .into_iter()
        .filter(|t| text(&obj, *t).is_none_or(|s| s.is_empty()))
        .collect();
        let series = obj
            .get(tags::PERFORMED_SERIES_SEQUENCE)
            .and_then(|e| e.items())
            .unwrap_or(&[]);
        if series.is_empty()
            || series
                .iter()
                .any(|i| text(i, tags::SERIES_INSTANCE_UID).is_none_or(|s| s.is_empty()))
        {
            missing.push(tags::PERFORMED_SERIES_SEQUENCE);
        }
        if !missing.is_empty() {
            return Err(Refusal::new(
                status::MISSING_ATTRIBUTE,
                format!("{new_status} needs the end date and time and a Performed Series Sequence with Series Instance UIDs"),
            )
            .about(&missing));
        }
    }
    // The stored status follows the merged data set.
    obj.put(DataElement::new(
        tags::PERFORMED_PROCEDURE_STEP_STATUS,
        VR::CS,
        PrimitiveValue::from(new_status.as_str()),
    ));
    let (updated, series) =
        write_step(index, sop_instance_uid, calling_ae, new_status, &obj, false)?;
    if !updated {
        return Err(Refusal::new(
            status::NO_SUCH_SOP_INSTANCE,
            "no Performed Procedure Step with this SOP Instance UID",
        ));
    }
    Ok(Accepted {
        sop_instance_uid: sop_instance_uid.to_string(),
        status: new_status,
        event: new_status.is_final().then(|| MppsEvent {
            sop_instance_uid: sop_instance_uid.to_string(),
            status: new_status,
            series,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::DataSetSequence;

    fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str) {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }

    fn seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
        obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
    }

    fn creation() -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        put(
            &mut o,
            tags::PERFORMED_PROCEDURE_STEP_STATUS,
            VR::CS,
            "IN PROGRESS",
        );
        put(&mut o, tags::PERFORMED_STATION_AE_TITLE, VR::AE, "SCANNER");
        put(
            &mut o,
            tags::PERFORMED_PROCEDURE_STEP_START_DATE,
            VR::DA,
            "20261204",
        );
        put(
            &mut o,
            tags::PERFORMED_PROCEDURE_STEP_START_TIME,
            VR::TM,
            "120000",
        );
        put(&mut o, tags::PERFORMED_PROCEDURE_STEP_ID, VR::SH, "PPS1");
        put(&mut o, tags::MODALITY, VR::CS, "CT");
        put(&mut o, tags::PATIENT_ID, VR::LO, "PID");
        let mut item = InMemDicomObject::new_empty();
        put(&mut item, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3");
        put(&mut item, tags::ACCESSION_NUMBER, VR::SH, "ACC");
        seq(&mut o, tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE, vec![item]);
        o
    }

    fn reference(sop: &str) -> InMemDicomObject {
        let mut r = InMemDicomObject::new_empty();
        put(
            &mut r,
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.2",
        );
        put(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, sop);
        r
    }

    fn bytes(o: &InMemDicomObject) -> Vec<u8> {
        dimse::write_data_set(o, super::super::IMPLICIT_VR_LE).unwrap()
    }

    #[test]
    fn a_step_is_created_merged_and_completed_with_both_reference_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("index.sqlite")).unwrap();
        let ts = super::super::IMPLICIT_VR_LE;
        let a = create(&db, "SCANNER", Some("9.1"), &bytes(&creation()), ts).unwrap();
        assert_eq!(
            (a.sop_instance_uid.as_str(), a.status),
            ("9.1", MppsStatus::InProgress)
        );
        let row = db.mpps("9.1").unwrap().unwrap();
        assert_eq!(row.study_instance_uid.as_deref(), Some("1.2.3"));
        assert_eq!(row.pps_id.as_deref(), Some("PPS1"));
        // Without a UID, one is assigned.
        let b = create(&db, "SCANNER", None, &bytes(&creation()), ts).unwrap();
        assert!(
            b.sop_instance_uid.starts_with("2.25."),
            "{}",
            b.sop_instance_uid
        );

        // An N-SET sending the stored Modality again is tolerated; a different one is not.
        let mut mods = InMemDicomObject::new_empty();
        put(&mut mods, tags::MODALITY, VR::CS, "CT");
        put(
            &mut mods,
            tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION,
            VR::LO,
            "head",
        );
        assert!(
            set(&db, "SCANNER", "9.1", &bytes(&mods), ts)
                .unwrap()
                .event
                .is_none()
        );
        put(&mut mods, tags::MODALITY, VR::CS, "MR");
        let r = set(&db, "SCANNER", "9.1", &bytes(&mods), ts).unwrap_err();
        assert_eq!(r.status, status::INVALID_ATTRIBUTE_VALUE);
        assert_eq!(r.attributes, [0x0008_0060]);

        let mut done = InMemDicomObject::new_empty();
        put(
            &mut done,
            tags::PERFORMED_PROCEDURE_STEP_STATUS,
            VR::CS,
            "COMPLETED",
        );
        put(
            &mut done,
            tags::PERFORMED_PROCEDURE_STEP_END_DATE,
            VR::DA,
            "20261204",
        );
        // No end time: 0x0120 naming it.
        let mut s1 = InMemDicomObject::new_empty();
        put(&mut s1, tags::SERIES_INSTANCE_UID, VR::UI, "S1");
        seq(
            &mut s1,
            tags::REFERENCED_IMAGE_SEQUENCE,
            vec![reference("a"), reference("b")],
        );
        seq(
            &mut s1,
            tags::REFERENCED_NON_IMAGE_COMPOSITE_SOP_INSTANCE_SEQUENCE,
            vec![reference("c")],
        );
        let mut s2 = InMemDicomObject::new_empty();
        put(&mut s2, tags::SERIES_INSTANCE_UID, VR::UI, "S2");
        seq(&mut done, tags::PERFORMED_SERIES_SEQUENCE, vec![s1, s2]);
        let r = set(&db, "SCANNER", "9.1", &bytes(&done), ts).unwrap_err();
        assert_eq!(r.status, status::MISSING_ATTRIBUTE);
        assert_eq!(r.attributes, [0x0040_0251]);
        put(
            &mut done,
            tags::PERFORMED_PROCEDURE_STEP_END_TIME,
            VR::TM,
            "121500",
        );
        let a = set(&db, "SCANNER", "9.1", &bytes(&done), ts).unwrap();
        let event = a.event.unwrap();
        assert_eq!(event.status, MppsStatus::Completed);
        assert_eq!(
            event.series,
            [
                PerformedSeries {
                    series_instance_uid: "S1".into(),
                    sop_instance_uids: vec!["a".into(), "b".into(), "c".into()],
                },
                PerformedSeries {
                    series_instance_uid: "S2".into(),
                    sop_instance_uids: vec![],
                },
            ]
        );
        assert_eq!(db.mpps_instances("9.1").unwrap().len(), 3);
        // The stored data set is the merge: the creation's attributes, the description from
        // the first N-SET, the final status.
        let stored = read(
            &db.mpps_attributes("9.1").unwrap().unwrap(),
            super::super::EXPLICIT_VR_LE,
        )
        .unwrap();
        assert_eq!(
            text(&stored, tags::PERFORMED_STATION_AE_TITLE).as_deref(),
            Some("SCANNER")
        );
        assert_eq!(
            text(&stored, tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION).as_deref(),
            Some("head")
        );
        assert_eq!(
            text(&stored, tags::PERFORMED_PROCEDURE_STEP_STATUS).as_deref(),
            Some("COMPLETED")
        );
        // Final: no more updates (A710).
        let r = set(&db, "SCANNER", "9.1", &bytes(&mods), ts).unwrap_err();
        assert_eq!(
            (r.status, r.error_id),
            (status::PROCESSING_FAILURE, Some(0xA710))
        );
        // Garbage is a processing failure, not a panic.
        let r = set(&db, "SCANNER", "9.1", b"\x08\x00\x60\x00\xff\xff", ts).unwrap_err();
        assert_eq!(r.status, status::PROCESSING_FAILURE);
    }

    #[test]
    fn creation_checks_status_and_type_1_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("index.sqlite")).unwrap();
        let ts = super::super::EXPLICIT_VR_LE;
        let mut o = creation();
        put(
            &mut o,
            tags::PERFORMED_PROCEDURE_STEP_STATUS,
            VR::CS,
            "PAUSED",
        );
        assert_eq!(
            create(
                &db,
                "S",
                Some("1"),
                &bytes(&o),
                super::super::IMPLICIT_VR_LE
            )
            .unwrap_err()
            .status,
            status::INVALID_ATTRIBUTE_VALUE
        );
        let mut o = creation();
        o.remove_element(tags::PERFORMED_STATION_AE_TITLE);
        o.remove_element(tags::MODALITY);
        let r = create(
            &db,
            "S",
            Some("1"),
            &dimse::write_data_set(&o, ts).unwrap(),
            ts,
        )
        .unwrap_err();
        assert_eq!(r.status, status::MISSING_ATTRIBUTE);
        assert_eq!(r.attributes, [0x0040_0241, 0x0008_0060]);
        let mut o = creation();
        put(&mut o, tags::PERFORMED_PROCEDURE_STEP_ID, VR::SH, "");
        seq(
            &mut o,
            tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE,
            vec![InMemDicomObject::new_empty()],
        );
        let r = create(
            &db,
            "S",
            Some("1"),
            &dimse::write_data_set(&o, ts).unwrap(),
            ts,
        )
        .unwrap_err();
        assert_eq!(r.status, status::MISSING_ATTRIBUTE_VALUE);
        assert_eq!(r.attributes, [0x0040_0253, 0x0020_000D]);
        assert!(db.mpps("1").unwrap().is_none());
        assert!(
            create(
                &db,
                "S",
                Some("1"),
                &dimse::write_data_set(&creation(), ts).unwrap(),
                ts
            )
            .is_ok()
        );
        assert_eq!(
            create(
                &db,
                "S",
                Some("1"),
                &dimse::write_data_set(&creation(), ts).unwrap(),
                ts
            )
            .unwrap_err()
            .status,
            status::DUPLICATE_SOP_INSTANCE
        );
    }
}
