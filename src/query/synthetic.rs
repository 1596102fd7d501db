//! A synthetic query index for benchmarks: realistic rows written straight into the
//! contract's tables, without files behind them.
//!
//! Realistic in what the timed queries depend on: several studies per patient, family names
//! drawn from a skewed list (about 1.5 % of patients match `SMI*`, as SMITH, SMIRNOV and
//! SMILEY would in a Western-European register), study dates spread evenly over 2019-2024 (a
//! month holds about 1/72 of the studies), 1-4 image series per study plus, in about a third
//! of the studies, an M3D series holding one Encapsulated STL result.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_object::InMemDicomObject;
use rusqlite::{Connection, params};

/// The contract's query index tables (docs/qr-contract.md) with today's `instances` table and
/// its two new columns. A copy for tests and benches until the database module that owns the
/// DDL lands; then they should create the tables through it.
pub const SCHEMA: &str = "
CREATE TABLE patients (
    pk          INTEGER PRIMARY KEY,
    patient_id  TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    name        TEXT,
    birth_date  TEXT,
    sex         TEXT,
    charset     TEXT,
    UNIQUE (patient_id, issuer)
);
CREATE INDEX patients_name ON patients(name);
CREATE TABLE studies (
    study_uid    TEXT PRIMARY KEY,
    patient_pk   INTEGER NOT NULL REFERENCES patients(pk),
    study_date   TEXT,
    study_time   TEXT,
    accession    TEXT,
    study_id     TEXT,
    description  TEXT,
    referring    TEXT,
    charset      TEXT
);
CREATE INDEX studies_patient ON studies(patient_pk);
CREATE INDEX studies_date ON studies(study_date);
CREATE INDEX studies_accession ON studies(accession);
CREATE TABLE series (
    series_uid    TEXT PRIMARY KEY,
    study_uid     TEXT NOT NULL,
    modality      TEXT,
    series_number INTEGER,
    description   TEXT,
    body_part     TEXT,
    frame_of_reference_uid TEXT,
    series_date   TEXT,
    series_time   TEXT,
    charset       TEXT
);
CREATE INDEX series_study ON series(study_uid);
CREATE TABLE instances (
    sop_instance_uid    TEXT PRIMARY KEY,
    sop_class_uid       TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    modality            TEXT,
    instance_number     INTEGER,
    transfer_syntax     TEXT NOT NULL,
    path                TEXT NOT NULL,
    size                INTEGER NOT NULL,
    calling_ae          TEXT NOT NULL,
    received_at         REAL NOT NULL,
    document_title      TEXT,
    mime_type           TEXT
);
CREATE INDEX instances_series ON instances(series_instance_uid);
";

/// UID root of synthetic rows (a documentation root, not the node's).
const ROOT: &str = "1.2.826.0.1.3680043.9.7433";

/// One synthetic series: number, modality, description, instances, SOP class, and the
/// Document Title of a result.
type SeriesPlan<'a> = (u64, &'a str, String, u64, &'a str, Option<&'a str>);

/// Encapsulated STL Storage.
const STL: &str = "1.2.840.10008.5.1.4.1.1.104.3";

/// Family names with weights out of 1000 (skewed like a real register).
const FAMILY: &[(&str, u32)] = &[
    ("MUELLER", 80),
    ("SCHMIDT", 70),
    ("MARTIN", 60),
    ("GARCIA", 60),
    ("ROSSI", 50),
    ("JANSEN", 50),
    ("NOWAK", 50),
    ("DUBOIS", 45),
    ("BROWN", 45),
    ("JONES", 45),
    ("WILSON", 40),
    ("TAYLOR", 40),
    ("MOREAU", 40),
    ("SMITH", 10),
    ("SMIRNOV", 3),
    ("SMILEY", 2),
    ("SIMMONS", 30),
    ("SIMON", 40),
    ("SAMSON", 30),
    ("FISCHER", 40),
    ("WEBER", 40),
    ("MEYER", 40),
    ("BAUER", 40),
    ("KOCH", 40),
];

const GIVEN: &[&str] = &[
    "ANNA", "JOHN", "MARIA", "PETER", "LUCAS", "EMMA", "NOAH", "SOFIA", "PAUL", "LEA", "JAN", "MIA",
];

const STUDIES: &[(&str, &str, &str)] = &[
    ("CT", "CT HEAD W/O CONTRAST", "HEAD"),
    ("CT", "CT CHEST", "CHEST"),
    ("MR", "MR BRAIN NAVIGATION", "HEAD"),
    ("MR", "MR KNEE", "KNEE"),
    ("CT", "CT ABDOMEN PELVIS", "ABDOMEN"),
];

/// SplitMix64: a small seeded generator, so that a seed gives the same index everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `YYYYMMDD` of a day counted from 1970-01-01 (Howard Hinnant's civil_from_days).
fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// Days from 1970-01-01 to 2019-01-01, and the six years of study dates.
const FIRST_DAY: i64 = 17_897;
const DAYS: u64 = 2_192;

/// The patient ID of the `k`-th synthetic patient (for benchmark queries).
pub fn patient_id(k: u64) -> String {
    format!("PID{k:08}")
}

/// The Study Instance UID of the `s`-th synthetic study of the index made with `seed`.
pub fn study_uid(seed: u64, s: u64) -> String {
    format!("{ROOT}.{seed}.{s}")
}

/// Inserts `studies` studies of `instances_per_study` instances each (patients, studies,
/// series, instances) in one transaction, reproducibly for a `seed`. Each patient has 1-3
/// studies; patient `k` is [`patient_id`]`(k)`, study `s` is [`study_uid`]`(seed, s)`.
/// 10,000 x 100 takes about ten seconds on one core of this machine.
pub fn fill(
    conn: &Connection,
    studies: u64,
    instances_per_study: u64,
    seed: u64,
) -> rusqlite::Result<()> {
    let mut rng = Rng(seed);
    let tx = conn.unchecked_transaction()?;
    {
        let mut patient = tx.prepare(
            "INSERT INTO patients (pk, patient_id, issuer, name, birth_date, sex, charset) \
             VALUES (?1, ?2, '', ?3, ?4, ?5, 'ISO_IR 100')",
        )?;
        let mut study = tx.prepare(
            "INSERT INTO studies (study_uid, patient_pk, study_date, study_time, accession, \
             study_id, description, referring, charset) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
             'ISO_IR 100')",
        )?;
        let mut series = tx.prepare(
            "INSERT INTO series (series_uid, study_uid, modality, series_number, description, \
             body_part, frame_of_reference_uid, series_date, series_time, charset) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'ISO_IR 100')",
        )?;
        let mut instance = tx.prepare(
            "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid, \
             series_instance_uid, modality, instance_number, transfer_syntax, path, size, \
             calling_ae, received_at, document_title, mime_type) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, '1.2.840.10008.1.2.1', ?7, ?8, ?9, 0, ?10, ?11)",
        )?;
        let total_weight: u32 = FAMILY.iter().map(|f| f.1).sum();
        let mut next_patient = 0u64;
        let mut studies_left_for_patient = 0u64;
        for s in 0..studies {
            if studies_left_for_patient == 0 {
                let mut w = rng.below(u64::from(total_weight)) as u32;
                let family = FAMILY
                    .iter()
                    .find(|(_, weight)| {
                        if w < *weight {
                            true
                        } else {
                            w -= weight;
                            false
                        }
                    })
                    .map_or("DOE", |f| f.0);
                let given = GIVEN[rng.below(GIVEN.len() as u64) as usize];
                let birth = date(-14_600 + rng.below(32_000) as i64);
                let sex = if rng.below(2) == 0 { "F" } else { "M" };
                patient.execute(params![
                    next_patient as i64,
                    patient_id(next_patient),
                    format!("{family}^{given}"),
                    birth,
                    sex
                ])?;
                next_patient += 1;
                studies_left_for_patient = 1 + rng.below(3);
            }
            studies_left_for_patient -= 1;
            let pk = next_patient as i64 - 1;
            let st_uid = study_uid(seed, s);
            let day = date(FIRST_DAY + rng.below(DAYS) as i64);
            let time = format!(
                "{:02}{:02}{:02}",
                7 + rng.below(12),
                rng.below(60),
                rng.below(60)
            );
            let (modality, description, body) = STUDIES[rng.below(STUDIES.len() as u64) as usize];
            study.execute(params![
                st_uid,
                pk,
                day,
                time,
                format!("ACC{s:08}"),
                format!("{}", s % 100_000),
                description,
                "REF^DOCTOR"
            ])?;
            let result = instances_per_study >= 2 && rng.below(3) == 0;
            let images = instances_per_study - u64::from(result);
            let n_series = (1 + rng.below(4)).min(images.max(1));
            let for_uid = format!("{st_uid}.9");
            let sop_class = if modality == "CT" {
                "1.2.840.10008.5.1.4.1.1.2"
            } else {
                "1.2.840.10008.5.1.4.1.1.4"
            };
            let mut plan: Vec<SeriesPlan> = (0..n_series)
                .map(|k| {
                    let count = if k + 1 == n_series {
                        images - images / n_series * k
                    } else {
                        images / n_series
                    };
                    let d = format!("{description} {}", k + 1);
                    (k + 1, modality, d, count, sop_class, None)
                })
                .collect();
            if result {
                let title = Some("Bone surface, iso 300 HU");
                plan.push((100, "M3D", "Bone surface".into(), 1, STL, title));
            }
            for (number, modality, series_description, count, sop_class, title) in plan {
                let se_uid = format!("{st_uid}.{number}");
                series.execute(params![
                    se_uid,
                    st_uid,
                    modality,
                    number as i64,
                    series_description,
                    body,
                    for_uid,
                    day,
                    time
                ])?;
                for n in 0..count {
                    instance.execute(params![
                        format!("{se_uid}.{}", n + 1),
                        sop_class,
                        st_uid,
                        se_uid,
                        modality,
                        n as i64 + 1,
                        format!("{s}/{number}/{}.dcm", n + 1),
                        if title.is_some() {
                            2_400_000i64
                        } else {
                            526_000
                        },
                        if title.is_some() { "" } else { "SCANNER" },
                        title,
                        title.map(|_| "model/stl")
                    ])?;
                }
            }
        }
    }
    tx.commit()
}

/// An identifier in Explicit VR Little Endian from `(tag, value)` pairs, tags as eight hex
/// digits (`"00100010"`), values ASCII (multiple values separated by `\`); the VR comes from
/// the standard dictionary. For tests, docs and benchmarks; a tag that does not parse is
/// left out.
pub fn identifier(keys: &[(&str, &str)]) -> Vec<u8> {
    identifier_in(keys, "1.2.840.10008.1.2.1")
}

/// [`identifier`] in the transfer syntax `ts_uid` (empty when it is unknown). Explicit VR
/// lengths of UI and most text VRs have 16 bits: a long UID list needs Implicit VR.
pub fn identifier_in(keys: &[(&str, &str)], ts_uid: &str) -> Vec<u8> {
    use dicom_core::dictionary::DataDictionary;
    let mut obj = InMemDicomObject::new_empty();
    for (tag, value) in keys {
        let Ok(t) = u32::from_str_radix(tag, 16) else {
            continue;
        };
        let tag = Tag((t >> 16) as u16, t as u16);
        let vr = StandardDataDictionary
            .by_tag(tag)
            .map_or(VR::UN, |e| e.vr.relaxed());
        let mut bytes = value.as_bytes().to_vec();
        if bytes.len() % 2 == 1 {
            bytes.push(if vr == VR::UI { 0 } else { b' ' });
        }
        let value = if bytes.is_empty() {
            PrimitiveValue::Empty
        } else {
            PrimitiveValue::from(String::from_utf8_lossy(&bytes).into_owned())
        };
        obj.put(DataElement::new(tag, vr, value));
    }
    let mut out = Vec::new();
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    if let Some(ts) = dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(ts_uid) {
        // Writing to a Vec cannot fail.
        let _ = obj.write_dataset_with_ts(&mut out, ts);
    }
    out
}
