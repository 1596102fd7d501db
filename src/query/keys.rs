//! The attributes the index knows: level, VR, SQL column and how a key on it is matched.
//!
//! Table aliases in the SQL: `p` patients, `st` studies, `se` series, `i` instances.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;

use super::Level;

/// How a key's value selects rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Matching {
    /// UI: single value or UID list; no wildcards.
    Uid,
    /// Text (CS, SH, LO, PN, ...): single value, wildcard, any-of list; case-sensitive.
    Text,
    /// DA: single value or range.
    Date,
    /// TM: single value or range.
    Time,
    /// IS stored as INTEGER: single value or any-of list.
    Int,
    /// Modalities in Study: a study matches when one of its series has one of the modalities.
    ModalitiesInStudy,
    /// Returned, never filters (derived counts).
    ReturnOnly,
}

/// One attribute of the index.
#[derive(Debug)]
pub(super) struct Attr {
    pub tag: Tag,
    pub vr: VR,
    pub level: Level,
    /// The SQL expression giving its value for a row of the level's join.
    pub sql: &'static str,
    pub matching: Matching,
}

macro_rules! attr {
    ($tag:expr, $vr:ident, $level:ident, $sql:expr, $m:ident) => {
        Attr {
            tag: $tag,
            vr: VR::$vr,
            level: Level::$level,
            sql: $sql,
            matching: Matching::$m,
        }
    };
}

/// Every attribute the index holds or derives (PS3.4 C.6.1.1, C.6.2.1).
pub(super) static ATTRS: &[Attr] = &[
    attr!(tags::PATIENT_NAME, PN, Patient, "p.name", Text),
    attr!(tags::PATIENT_ID, LO, Patient, "p.patient_id", Text),
    attr!(tags::ISSUER_OF_PATIENT_ID, LO, Patient, "p.issuer", Text),
    attr!(tags::PATIENT_BIRTH_DATE, DA, Patient, "p.birth_date", Date),
    attr!(tags::PATIENT_SEX, CS, Patient, "p.sex", Text),
    attr!(
        tags::NUMBER_OF_PATIENT_RELATED_STUDIES,
        IS,
        Patient,
        "(SELECT COUNT(*) FROM studies x WHERE x.patient_pk = p.pk)",
        ReturnOnly
    ),
    attr!(
        tags::NUMBER_OF_PATIENT_RELATED_SERIES,
        IS,
        Patient,
        "(SELECT COUNT(*) FROM studies x JOIN series y ON y.study_uid = x.study_uid \
         WHERE x.patient_pk = p.pk)",
        ReturnOnly
    ),
    attr!(
        tags::NUMBER_OF_PATIENT_RELATED_INSTANCES,
        IS,
        Patient,
        "(SELECT COUNT(*) FROM studies x JOIN series y ON y.study_uid = x.study_uid \
         JOIN instances z ON z.series_instance_uid = y.series_uid WHERE x.patient_pk = p.pk)",
        ReturnOnly
    ),
    attr!(tags::STUDY_INSTANCE_UID, UI, Study, "st.study_uid", Uid),
    attr!(tags::STUDY_DATE, DA, Study, "st.study_date", Date),
    attr!(tags::STUDY_TIME, TM, Study, "st.study_time", Time),
    attr!(tags::ACCESSION_NUMBER, SH, Study, "st.accession", Text),
    attr!(tags::STUDY_ID, SH, Study, "st.study_id", Text),
    attr!(tags::STUDY_DESCRIPTION, LO, Study, "st.description", Text),
    attr!(
        tags::REFERRING_PHYSICIAN_NAME,
        PN,
        Study,
        "st.referring",
        Text
    ),
    attr!(
        tags::MODALITIES_IN_STUDY,
        CS,
        Study,
        // `string_agg` with ORDER BY: both SQLite (3.44+, bundled) and PostgreSQL read it,
        // and the order is defined by the aggregate, not by the subquery's row order.
        "(SELECT string_agg(d.m, '\\' ORDER BY d.m) FROM (SELECT DISTINCT y.modality AS m \
         FROM series y WHERE y.study_uid = st.study_uid AND y.modality IS NOT NULL) d)",
        ModalitiesInStudy
    ),
    attr!(
        tags::NUMBER_OF_STUDY_RELATED_SERIES,
        IS,
        Study,
        "(SELECT COUNT(*) FROM series y WHERE y.study_uid = st.study_uid)",
        ReturnOnly
    ),
    attr!(
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        IS,
        Study,
        "(SELECT COUNT(*) FROM series y JOIN instances z ON z.series_instance_uid = y.series_uid \
         WHERE y.study_uid = st.study_uid)",
        ReturnOnly
    ),
    attr!(tags::SERIES_INSTANCE_UID, UI, Series, "se.series_uid", Uid),
    attr!(tags::MODALITY, CS, Series, "se.modality", Text),
    attr!(tags::SERIES_NUMBER, IS, Series, "se.series_number", Int),
    attr!(tags::SERIES_DESCRIPTION, LO, Series, "se.description", Text),
    attr!(tags::BODY_PART_EXAMINED, CS, Series, "se.body_part", Text),
    attr!(
        tags::FRAME_OF_REFERENCE_UID,
        UI,
        Series,
        "se.frame_of_reference_uid",
        Uid
    ),
    attr!(tags::SERIES_DATE, DA, Series, "se.series_date", Date),
    attr!(tags::SERIES_TIME, TM, Series, "se.series_time", Time),
    attr!(
        tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
        IS,
        Series,
        "(SELECT COUNT(*) FROM instances z WHERE z.series_instance_uid = se.series_uid)",
        ReturnOnly
    ),
    attr!(tags::SOP_INSTANCE_UID, UI, Image, "i.sop_instance_uid", Uid),
    attr!(tags::SOP_CLASS_UID, UI, Image, "i.sop_class_uid", Uid),
    attr!(tags::INSTANCE_NUMBER, IS, Image, "i.instance_number", Int),
    attr!(tags::DOCUMENT_TITLE, ST, Image, "i.document_title", Text),
    attr!(
        tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT,
        LO,
        Image,
        "i.mime_type",
        Text
    ),
];

/// The attribute of `tag`, when the index knows it.
pub(super) fn attr(tag: Tag) -> Option<&'static Attr> {
    ATTRS.iter().find(|a| a.tag == tag)
}

/// The unique key of a level (PS3.4 C.6.1.1, C.6.2.1).
pub(super) fn unique_key(level: Level) -> Tag {
    match level {
        Level::Patient => tags::PATIENT_ID,
        Level::Study => tags::STUDY_INSTANCE_UID,
        Level::Series => tags::SERIES_INSTANCE_UID,
        Level::Image => tags::SOP_INSTANCE_UID,
    }
}

/// The value of a key as the identifier gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyValue {
    /// Zero length: universal matching, a return key.
    Empty,
    /// Decoded text, padding removed (never empty).
    Text(String),
    /// An empty sequence (or one whose items hold only empty keys): returned empty.
    Sequence,
}

/// One key of the identifier.
#[derive(Debug, Clone)]
pub(super) struct Key {
    pub tag: Tag,
    /// VR written in the response.
    pub vr: VR,
    pub attr: Option<&'static Attr>,
    pub value: KeyValue,
}

impl Key {
    /// The value when it is not universal (`*` alone is universal too, C.2.2.2.3).
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            KeyValue::Text(t) if t != "*" => Some(t),
            _ => None,
        }
    }
}
