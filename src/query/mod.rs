//! PLACEHOLDER for branch qr-scp only: the contract's signatures (docs/qr-contract.md) with
//! UID-only matching on the `instances` table, so that the net layer compiles and its tests
//! run. The real module comes from branch qr-query and replaces this file on merge.
#![allow(missing_docs)]

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    PatientRoot,
    StudyRoot,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Patient,
    Study,
    Series,
    Image,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Find,
    Move,
    Get,
}

pub const SOP_CLASSES: &[&str] = &[
    "1.2.840.10008.5.1.4.1.2.1.1",
    "1.2.840.10008.5.1.4.1.2.1.2",
    "1.2.840.10008.5.1.4.1.2.1.3",
    "1.2.840.10008.5.1.4.1.2.2.1",
    "1.2.840.10008.5.1.4.1.2.2.2",
    "1.2.840.10008.5.1.4.1.2.2.3",
];

pub fn sop_class(uid: &str) -> Option<(Model, Service)> {
    let i = SOP_CLASSES.iter().position(|c| *c == uid)?;
    let model = if i < 3 {
        Model::PatientRoot
    } else {
        Model::StudyRoot
    };
    Some((model, [Service::Find, Service::Move, Service::Get][i % 3]))
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot read the identifier: {0}")]
    Unreadable(String),
    #[error("identifier does not fit: {0}")]
    Mismatch(String),
    #[error("index: {0}")]
    Index(#[from] rusqlite::Error),
}

impl QueryError {
    pub fn status(&self) -> u16 {
        match self {
            QueryError::Unreadable(_) => 0xC000,
            QueryError::Mismatch(_) => 0xA900,
            QueryError::Index(_) => 0xA700,
        }
    }
}

pub struct Query {
    level: Level,
    keys: InMemDicomObject,
}

pub struct Found {
    pub matches: Vec<Vec<u8>>,
    pub truncated: bool,
}

pub struct InstanceRef {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax: String,
    pub path: String,
}

fn text(o: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    o.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
}

impl Query {
    pub fn parse(
        _model: Model,
        _service: Service,
        bytes: &[u8],
        ts_uid: &str,
    ) -> Result<Query, QueryError> {
        let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(ts_uid)
            .ok_or_else(|| QueryError::Unreadable(format!("transfer syntax {ts_uid}")))?;
        let keys = InMemDicomObject::read_dataset_with_ts(bytes, ts)
            .map_err(|e| QueryError::Unreadable(e.to_string()))?;
        let level = match text(&keys, tags::QUERY_RETRIEVE_LEVEL).as_deref() {
            Some("PATIENT") => Level::Patient,
            Some("STUDY") => Level::Study,
            Some("SERIES") => Level::Series,
            Some("IMAGE") => Level::Image,
            other => {
                return Err(QueryError::Mismatch(format!(
                    "Query/Retrieve Level {other:?}"
                )));
            }
        };
        Ok(Query { level, keys })
    }

    pub fn level(&self) -> Level {
        self.level
    }

    fn rows(&self, conn: &rusqlite::Connection) -> Result<Vec<[String; 6]>, QueryError> {
        let mut sql = "SELECT study_instance_uid, series_instance_uid, sop_instance_uid, \
                       sop_class_uid, transfer_syntax, path FROM instances WHERE 1=1"
            .to_string();
        let mut args: Vec<String> = Vec::new();
        for (tag, col) in [
            (tags::STUDY_INSTANCE_UID, "study_instance_uid"),
            (tags::SERIES_INSTANCE_UID, "series_instance_uid"),
            (tags::SOP_INSTANCE_UID, "sop_instance_uid"),
            (tags::MODALITY, "modality"),
        ] {
            if let Some(v) = text(&self.keys, tag) {
                let values: Vec<&str> = v.split('\\').collect();
                sql.push_str(&format!(
                    " AND {col} IN ({})",
                    vec!["?"; values.len()].join(",")
                ));
                args.extend(values.into_iter().map(str::to_string));
            }
        }
        sql.push_str(" ORDER BY study_instance_uid, series_instance_uid, instance_number");
        let mut st = conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok([
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ])
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn find(
        &self,
        conn: &rusqlite::Connection,
        limit: usize,
        ts_uid: &str,
    ) -> Result<Found, QueryError> {
        let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(ts_uid)
            .ok_or_else(|| QueryError::Unreadable(format!("transfer syntax {ts_uid}")))?;
        let depth = match self.level {
            Level::Patient => 0,
            Level::Study => 1,
            Level::Series => 2,
            Level::Image => 3,
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut matches = Vec::new();
        let mut truncated = false;
        for r in self.rows(conn)? {
            let key = r[..depth].to_vec();
            if !seen.insert(key) {
                continue;
            }
            if limit != 0 && matches.len() == limit {
                truncated = true;
                break;
            }
            let mut o = self.keys.clone();
            for (i, tag) in [
                tags::STUDY_INSTANCE_UID,
                tags::SERIES_INSTANCE_UID,
                tags::SOP_INSTANCE_UID,
            ]
            .into_iter()
            .enumerate()
            .take(depth)
            {
                o.put(DataElement::new(
                    tag,
                    VR::UI,
                    PrimitiveValue::from(r[i].as_str()),
                ));
            }
            let mut out = Vec::new();
            o.write_dataset_with_ts(&mut out, ts)
                .map_err(|e| QueryError::Unreadable(e.to_string()))?;
            matches.push(out);
        }
        Ok(Found { matches, truncated })
    }

    pub fn instances(&self, conn: &rusqlite::Connection) -> Result<Vec<InstanceRef>, QueryError> {
        Ok(self
            .rows(conn)?
            .into_iter()
            .map(|r| InstanceRef {
                sop_instance_uid: r[2].clone(),
                sop_class_uid: r[3].clone(),
                transfer_syntax: r[4].clone(),
                path: r[5].clone(),
            })
            .collect())
    }
}
