//! The Q/R benchmark's data set (bench/README.md, "The data set"), written straight into the
//! query index: the patients, studies, series and instances that `bench/qr_data.py` writes as
//! files for Orthanc and dcmqrscp, so that the node and its peers answer the same queries over
//! the same data (`m3dnode bench qr-load`, the query tests and benches).
//!
//! Every value is a pure function of the seed, the study index and the instance index (one
//! SplitMix64 hash), so the first K studies are the same data whoever makes them and however
//! many are made. `bench/qr_data.py` is the reference: change both or neither (the tests below
//! compare this module with the files it writes).
//!
//! Rows only, no files behind them: C-FIND never reads the stored files, C-MOVE and C-GET of
//! these instances fail.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_object::InMemDicomObject;
use rusqlite::{Connection, params};

/// Root of every UID of the data set: a UUID-derived root (PS3.5 B.2) drawn once for this
/// benchmark, extended by `.seed.kind.study[.n]`.
pub const UID_ROOT: &str = "2.25.13974899806710873671008007745640960696";

/// The largest seed: with it, 1,000,000 studies and 10,000 instances a study, the longest UID
/// has 63 characters (64 is the limit).
pub const MAX_SEED: u64 = 999;

/// Hash tags of the stored values: one per drawn attribute, so that the draws are independent.
const T_STUDIES_PER_PATIENT: u64 = 1;
const T_SURNAME: u64 = 2;
const T_GIVEN: u64 = 3;
const T_SEX: u64 = 4;
const T_BIRTH: u64 = 5;
const T_DATE: u64 = 6;
const T_TIME: u64 = 7;
const T_MODALITY: u64 = 8;
const T_REFERRING: u64 = 9;
/// Hash tag choosing the study whose patient query `q` asks for (Patient ID queries).
const T_Q_PATIENT: u64 = 101;
/// Hash tag choosing the month (0 = 2020-01, of 72) of Study Date query `q`.
const T_Q_MONTH: u64 = 102;
/// Hash tag choosing the study of SERIES query `q`.
const T_Q_STUDY: u64 = 103;

/// 64 surnames, drawn uniformly: SMITH and SMIRNOV make `SMI*` match ~3 % of the patients;
/// SMALL, SIMMONS and SCHMIDT are near misses.
const SURNAMES: [&str; 64] = [
    "SMITH",
    "SMIRNOV",
    "JOHNSON",
    "WILLIAMS",
    "BROWN",
    "JONES",
    "GARCIA",
    "MILLER",
    "DAVIS",
    "RODRIGUEZ",
    "MARTINEZ",
    "HERNANDEZ",
    "LOPEZ",
    "GONZALEZ",
    "WILSON",
    "ANDERSON",
    "THOMAS",
    "TAYLOR",
    "MOORE",
    "JACKSON",
    "MARTIN",
    "LEE",
    "PEREZ",
    "THOMPSON",
    "WHITE",
    "HARRIS",
    "SANCHEZ",
    "CLARK",
    "RAMIREZ",
    "LEWIS",
    "ROBINSON",
    "WALKER",
    "YOUNG",
    "ALLEN",
    "KING",
    "WRIGHT",
    "SCOTT",
    "TORRES",
    "NGUYEN",
    "HILL",
    "FLORES",
    "GREEN",
    "ADAMS",
    "NELSON",
    "BAKER",
    "HALL",
    "RIVERA",
    "CAMPBELL",
    "MITCHELL",
    "CARTER",
    "ROBERTS",
    "MUELLER",
    "SCHMIDT",
    "SCHNEIDER",
    "FISCHER",
    "WEBER",
    "MEYER",
    "WAGNER",
    "ROSSI",
    "RUSSO",
    "DUBOIS",
    "IVANOV",
    "SMALL",
    "SIMMONS",
];
const GIVEN_F: [&str; 16] = [
    "MARY", "ANNA", "ELENA", "SOPHIE", "LAURA", "JULIA", "MARIA", "EMMA", "OLGA", "CLAIRE",
    "SARAH", "LINDA", "KAREN", "NINA", "EVA", "ROSA",
];
const GIVEN_M: [&str; 16] = [
    "JOHN", "PETER", "IVAN", "LUCAS", "DAVID", "MICHAEL", "THOMAS", "PAUL", "JAMES", "ANDREW",
    "MARCO", "KARL", "PIERRE", "JOSE", "ALEXEI", "OMAR",
];
const REFERRING: [&str; 8] = [
    "HOUSE^GREGORY",
    "GREY^MEREDITH",
    "ROSS^DOUG",
    "KILDARE^JAMES",
    "WHO^JOHN",
    "QUINN^MIKAELA",
    "STRANGE^STEPHEN",
    "ZHIVAGO^YURI",
];

/// The study's modality, which picks the SOP class and the descriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    /// MR Image Storage.
    Mr,
    /// CT Image Storage.
    Ct,
}

impl Modality {
    /// The Modality value.
    pub fn code(self) -> &'static str {
        match self {
            Modality::Mr => "MR",
            Modality::Ct => "CT",
        }
    }

    /// SOP Class UID of its instances.
    pub fn sop_class(self) -> &'static str {
        match self {
            Modality::Mr => "1.2.840.10008.5.1.4.1.1.4",
            Modality::Ct => "1.2.840.10008.5.1.4.1.1.2",
        }
    }

    fn study_description(self) -> &'static str {
        match self {
            Modality::Mr => "MR HEAD",
            Modality::Ct => "CT HEAD",
        }
    }

    fn series_description(self, k: u64) -> &'static str {
        let list = match self {
            Modality::Mr => ["T1 MPRAGE", "T2 TSE", "FLAIR", "DWI"],
            Modality::Ct => ["HEAD 0.6", "HEAD 5.0", "BONE 0.6", "ANGIO"],
        };
        list[(k % 4) as usize]
    }
}

/// Explicit VR Little Endian, the transfer syntax of every instance.
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// Size recorded for every instance: about that of the file `qr_data.py` writes (1,136 to
/// 1,146 bytes at seed 1, by UID length). Only reported, never read.
const FILE_SIZE: i64 = 1_140;

/// Calling AE title recorded for the rows: none sent them.
const LOADER_AE: &str = "QR-LOAD";

/// Days from 1970-01-01 to 2020-01-01 (first study date), and the study dates' span in days
/// (to 2025-12-31).
const DATE0: i64 = 18_262;
const DATE_DAYS: u64 = 2_192;
/// Days from 1970-01-01 to 1930-01-01 (first birth date), and the span (to 1999-12-31).
const BIRTH0: i64 = -14_610;
const BIRTH_DAYS: u64 = 25_567;

/// Why a data set cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SchemeError {
    /// The seed is part of every UID: beyond [`MAX_SEED`] the longest UIDs outgrow 64
    /// characters.
    #[error("seed {0} is outside 0..={MAX_SEED} (it is part of every UID)")]
    Seed(u64),
    /// A study without instances would have no series either.
    #[error("at least one instance per study is needed")]
    NoInstances,
}

/// SplitMix64's output function (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", OOPSLA 2014), on wrapping 64-bit words.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

/// Month `m` of the study dates (0 = 2020-01, 71 = 2025-12) as a DA range
/// `YYYYMM01-YYYYMMDD`, as the benchmark's Study Date queries ask.
pub fn month_range(m: u64) -> String {
    let (y, mo) = (2020 + m / 12, m % 12 + 1);
    let last = match mo {
        2 if y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400)) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    format!("{y:04}{mo:02}01-{y:04}{mo:02}{last:02}")
}

/// One patient of the data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patient {
    /// 0-based, in the order of their studies.
    pub index: u64,
    /// `P%06d` of index + 1.
    pub id: String,
    /// `SURNAME^GIVEN`.
    pub name: String,
    /// `F` or `M`.
    pub sex: &'static str,
    /// `YYYYMMDD`.
    pub birth_date: String,
}

/// One study of the data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Study {
    /// 0-based.
    pub index: u64,
    /// Its patient.
    pub patient: Patient,
    /// Study Instance UID.
    pub uid: String,
    /// Study Date (and Series and Content Date).
    pub date: String,
    /// Study Time `HHMMSS` (and Series and Content Time).
    pub time: String,
    /// Accession Number.
    pub accession: String,
    /// Study ID.
    pub study_id: String,
    /// Referring Physician's Name.
    pub referring: &'static str,
    /// Modality of every series.
    pub modality: Modality,
}

/// One series of a study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Series Instance UID.
    pub uid: String,
    /// Series Number (1-based).
    pub number: u64,
    /// Series Description.
    pub description: &'static str,
    /// Instances in it.
    pub instances: u64,
}

/// The data set of one seed with `per_study` instances a study, in min(4, per_study) series.
#[derive(Debug, Clone)]
pub struct Scheme {
    seed: u64,
    per_study: u64,
}

impl Scheme {
    /// The data set of `seed` (0..=[`MAX_SEED`]), `per_study` (>= 1) instances a study.
    pub fn new(seed: u64, per_study: u64) -> Result<Scheme, SchemeError> {
        if seed > MAX_SEED {
            return Err(SchemeError::Seed(seed));
        }
        if per_study == 0 {
            return Err(SchemeError::NoInstances);
        }
        Ok(Scheme { seed, per_study })
    }

    /// `h(tag, i) = mix(mix(seed ^ (tag << 32)) ^ i)`: the only source of randomness.
    pub fn h(&self, tag: u64, i: u64) -> u64 {
        mix(mix(self.seed ^ (tag << 32)) ^ i)
    }

    /// Series per study.
    pub fn series_per_study(&self) -> u64 {
        self.per_study.min(4)
    }

    /// `UID_ROOT.seed.kind.numbers...`; kinds: 1 study, 2 series, 3 instance, 4 frame of
    /// reference.
    fn uid(&self, kind: u8, numbers: &[u64]) -> String {
        use std::fmt::Write;
        let mut s = format!("{UID_ROOT}.{}.{kind}", self.seed);
        for n in numbers {
            let _ = write!(s, ".{n}");
        }
        s
    }

    /// Patient `p`.
    pub fn patient(&self, p: u64) -> Patient {
        let female = self.h(T_SEX, p) % 2 == 1;
        let given = if female { GIVEN_F } else { GIVEN_M }[(self.h(T_GIVEN, p) % 16) as usize];
        Patient {
            index: p,
            id: format!("P{:06}", p + 1),
            name: format!("{}^{given}", SURNAMES[(self.h(T_SURNAME, p) % 64) as usize]),
            sex: if female { "F" } else { "M" },
            birth_date: date(BIRTH0 + (self.h(T_BIRTH, p) % BIRTH_DAYS) as i64),
        }
    }

    /// Studies this many the patient `p` owns (the last patient of a load may have fewer).
    fn studies_of(&self, p: u64) -> u64 {
        1 + self.h(T_STUDIES_PER_PATIENT, p) % 4
    }

    /// Study `s` of `patient`.
    fn study(&self, s: u64, patient: Patient) -> Study {
        let modality = [Modality::Mr, Modality::Ct][(self.h(T_MODALITY, s) % 2) as usize];
        let t = 7 * 3600 + self.h(T_TIME, s) % (12 * 3600);
        Study {
            index: s,
            patient,
            uid: self.study_uid(s),
            date: date(DATE0 + (self.h(T_DATE, s) % DATE_DAYS) as i64),
            time: format!("{:02}{:02}{:02}", t / 3600, t / 60 % 60, t % 60),
            accession: format!("A{:08}", s + 1),
            study_id: (s + 1).to_string(),
            referring: REFERRING[(self.h(T_REFERRING, s) % 8) as usize],
            modality,
        }
    }

    /// Studies 0, 1, 2, ... in order (without end): patient p owns the next
    /// `1 + h(1, p) % 4` of them.
    pub fn studies(&self) -> Studies<'_> {
        Studies {
            scheme: self,
            next_study: 0,
            next_patient: 0,
            patient: None,
            left: 0,
        }
    }

    /// The series of a study: number k + 1 holds the instances j with j % n == k.
    pub fn series(&self, study: &Study) -> Vec<Series> {
        let n = self.series_per_study();
        (0..n)
            .map(|k| Series {
                uid: self.uid(2, &[study.index + 1, k + 1]),
                number: k + 1,
                description: study.modality.series_description(k),
                instances: (self.per_study - k).div_ceil(n),
            })
            .collect()
    }

    /// Study Instance UID of study `s` (0-based).
    pub fn study_uid(&self, s: u64) -> String {
        self.uid(1, &[s + 1])
    }

    /// Frame of Reference UID of the series of study `s`.
    pub fn frame_of_reference_uid(&self, s: u64) -> String {
        self.uid(4, &[s + 1])
    }

    /// SOP Instance UID of instance `j` (0-based) of study `s`; it is in series `j % n`, with
    /// Instance Number `j / n + 1`.
    pub fn instance_uid(&self, s: u64, j: u64) -> String {
        self.uid(3, &[s + 1, j + 1])
    }
}

/// The matching keys of the benchmark's query number `q` (bench/README.md, "What `find`
/// does"), drawn as `qr_data.py`'s `make_queries` draws them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryKeys {
    /// STUDY by Patient ID: the patient of a drawn study.
    pub patient_id: String,
    /// STUDY by Study Date: a drawn month, `YYYYMM01-YYYYMMDD`.
    pub month: String,
    /// SERIES by Study Instance UID: a drawn study.
    pub study_uid: String,
}

impl Scheme {
    /// The keys of query `q` on a system holding `studies` (the first K of the data set, not
    /// empty).
    pub fn query_keys(&self, studies: &[Study], q: u64) -> QueryKeys {
        let k = studies.len().max(1) as u64;
        let pick = |tag| &studies[(self.h(tag, q) % k) as usize];
        QueryKeys {
            patient_id: pick(T_Q_PATIENT).patient.id.clone(),
            month: month_range(self.h(T_Q_MONTH, q) % 72),
            study_uid: pick(T_Q_STUDY).uid.clone(),
        }
    }
}

/// The studies of a [`Scheme`], in order.
#[derive(Debug)]
pub struct Studies<'a> {
    scheme: &'a Scheme,
    next_study: u64,
    next_patient: u64,
    patient: Option<Patient>,
    /// Studies the current patient still owns.
    left: u64,
}

impl Iterator for Studies<'_> {
    type Item = Study;

    fn next(&mut self) -> Option<Study> {
        if self.left == 0 || self.patient.is_none() {
            let p = self.next_patient;
            self.next_patient += 1;
            self.left = self.scheme.studies_of(p);
            self.patient = Some(self.scheme.patient(p));
        }
        let patient = self.patient.clone()?;
        self.left -= 1;
        let s = self.next_study;
        self.next_study += 1;
        Some(self.scheme.study(s, patient))
    }
}

/// What [`fill`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    /// Patients rows.
    pub patients: u64,
    /// Studies rows.
    pub studies: u64,
    /// Series rows.
    pub series: u64,
    /// Instances rows.
    pub instances: u64,
}

/// One row of the data set, as [`fill`] and [`fill_pg`] write it: the rows come from one
/// walk, so that both engines hold the same data.
enum Row<'a> {
    Patient {
        /// The store's primary keys count from 1.
        pk: i64,
        patient: &'a Patient,
    },
    Study {
        patient_pk: i64,
        study: &'a Study,
    },
    Series {
        study: &'a Study,
        series: &'a Series,
        frame_of_reference: &'a str,
    },
    Instance {
        study: &'a Study,
        series: &'a Series,
        uid: String,
        number: i64,
        path: String,
    },
}

/// Hands every row of studies 0..`studies` to `write`, parents before children, and counts
/// them.
fn walk<E>(
    scheme: &Scheme,
    studies: u64,
    mut write: impl FnMut(Row<'_>) -> Result<(), E>,
) -> Result<Filled, E> {
    let n = scheme.series_per_study();
    let mut filled = Filled {
        patients: 0,
        studies: 0,
        series: 0,
        instances: 0,
    };
    let mut last_patient = None;
    for st in scheme
        .studies()
        .take(usize::try_from(studies).unwrap_or(usize::MAX))
    {
        let pk = st.patient.index as i64 + 1;
        if last_patient != Some(st.patient.index) {
            last_patient = Some(st.patient.index);
            write(Row::Patient {
                pk,
                patient: &st.patient,
            })?;
            filled.patients += 1;
        }
        write(Row::Study {
            patient_pk: pk,
            study: &st,
        })?;
        filled.studies += 1;
        let frame_of_reference = scheme.frame_of_reference_uid(st.index);
        let all = scheme.series(&st);
        for se in &all {
            write(Row::Series {
                study: &st,
                series: se,
                frame_of_reference: &frame_of_reference,
            })?;
        }
        filled.series += all.len() as u64;
        for j in 0..scheme.per_study {
            let se = &all[(j % n) as usize];
            let uid = scheme.instance_uid(st.index, j);
            let path = format!("{}/{}/{uid}.dcm", st.uid, se.uid);
            write(Row::Instance {
                study: &st,
                series: se,
                uid,
                number: (j / n + 1) as i64,
                path,
            })?;
        }
        filled.instances += scheme.per_study;
    }
    Ok(filled)
}

/// Writes studies 0..`studies` of the data set of `seed` with `per_study` instances each
/// (patients, studies, series and instances rows) into an empty index made by
/// [`crate::db::Db`], in one transaction, as the store would have indexed the files
/// `bench/qr_data.py` writes (no Specific Character Set: charset NULL; paths in the store's
/// layout). 10,000 x 100 takes a few seconds.
///
/// A seed beyond [`MAX_SEED`] or `per_study` 0 is refused as
/// `rusqlite::Error::ToSqlConversionFailure` holding the [`SchemeError`], so that this runs
/// inside [`crate::db::Db::with`].
pub fn fill(
    conn: &Connection,
    studies: u64,
    per_study: u64,
    seed: u64,
) -> rusqlite::Result<Filled> {
    let scheme = Scheme::new(seed, per_study)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let now = crate::db::now();
    let tx = conn.unchecked_transaction()?;
    let filled = {
        let mut patient = tx.prepare(
            "INSERT INTO patients (pk, patient_id, issuer, name, birth_date, sex, charset) \
             VALUES (?1, ?2, '', ?3, ?4, ?5, NULL)",
        )?;
        let mut study = tx.prepare(
            "INSERT INTO studies (study_uid, patient_pk, study_date, study_time, accession, \
             study_id, description, referring, charset) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)",
        )?;
        let mut series = tx.prepare(
            "INSERT INTO series (series_uid, study_uid, modality, series_number, description, \
             body_part, frame_of_reference_uid, series_date, series_time, charset, calling_ae, \
             received_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'HEAD', ?6, ?7, ?8, NULL, ?9, ?10)",
        )?;
        let mut instance = tx.prepare(
            "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid, \
             series_instance_uid, modality, instance_number, transfer_syntax, path, size, \
             calling_ae, received_at, document_title, mime_type) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, NULL)",
        )?;
        walk(&scheme, studies, |row| {
            match row {
                Row::Patient { pk, patient: p } => {
                    patient.execute(params![pk, p.id, p.name, p.birth_date, p.sex])?;
                }
                Row::Study {
                    patient_pk,
                    study: st,
                } => {
                    study.execute(params![
                        st.uid,
                        patient_pk,
                        st.date,
                        st.time,
                        st.accession,
                        st.study_id,
                        st.modality.study_description(),
                        st.referring
                    ])?;
                }
                Row::Series {
                    study: st,
                    series: se,
                    frame_of_reference,
                } => {
                    series.execute(params![
                        se.uid,
                        st.uid,
                        st.modality.code(),
                        se.number as i64,
                        se.description,
                        frame_of_reference,
                        st.date,
                        st.time,
                        LOADER_AE,
                        now
                    ])?;
                }
                Row::Instance {
                    study: st,
                    series: se,
                    uid,
                    number,
                    path,
                } => {
                    instance.execute(params![
                        uid,
                        st.modality.sop_class(),
                        st.uid,
                        se.uid,
                        st.modality.code(),
                        number,
                        EXPLICIT_LE,
                        path,
                        FILE_SIZE,
                        LOADER_AE,
                        now
                    ])?;
                }
            }
            Ok::<(), rusqlite::Error>(())
        })?
    };
    tx.commit()?;
    Ok(filled)
}

/// Why [`fill_pg`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// The seed or the instance count cannot make a data set.
    #[error(transparent)]
    Scheme(#[from] SchemeError),
    /// PostgreSQL refused a statement or the copy.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
}

/// [`fill`] into a PostgreSQL index (schema `src/db/migrations/pg/0005_baseline.sql`, tables
/// empty): the same rows, in one transaction, each table by one binary COPY (row-by-row
/// INSERTs cost a round trip each). The patients' explicit keys leave the identity sequence
/// behind, so it is set past them afterwards and the store's own inserts do not collide.
pub fn fill_pg(
    client: &mut postgres::Client,
    studies: u64,
    per_study: u64,
    seed: u64,
) -> Result<Filled, FillError> {
    use postgres::binary_copy::BinaryCopyInWriter;
    use postgres::types::Type;
    const NULL: Option<&str> = None;
    let scheme = Scheme::new(seed, per_study)?;
    let now = crate::db::now();
    let mut tx = client.transaction()?;

    // One COPY at a time per connection: one walk per table.
    let mut w = BinaryCopyInWriter::new(
        tx.copy_in(
            "COPY patients (pk, patient_id, issuer, name, birth_date, sex, charset) \
             FROM STDIN (FORMAT binary)",
        )?,
        &[
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
        ],
    );
    walk(&scheme, studies, |row| match row {
        Row::Patient { pk, patient: p } => {
            w.write(&[&pk, &p.id, &"", &p.name, &p.birth_date, &p.sex, &NULL])
        }
        _ => Ok(()),
    })?;
    w.finish()?;

    let mut w = BinaryCopyInWriter::new(
        tx.copy_in(
            "COPY studies (study_uid, patient_pk, study_date, study_time, accession, study_id, \
             description, referring, charset) FROM STDIN (FORMAT binary)",
        )?,
        &[
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
        ],
    );
    walk(&scheme, studies, |row| match row {
        Row::Study {
            patient_pk,
            study: st,
        } => w.write(&[
            &st.uid,
            &patient_pk,
            &st.date,
            &st.time,
            &st.accession,
            &st.study_id,
            &st.modality.study_description(),
            &st.referring,
            &NULL,
        ]),
        _ => Ok(()),
    })?;
    w.finish()?;

    let mut w = BinaryCopyInWriter::new(
        tx.copy_in(
            "COPY series (series_uid, study_uid, modality, series_number, description, \
             body_part, frame_of_reference_uid, series_date, series_time, charset, calling_ae, \
             received_at) FROM STDIN (FORMAT binary)",
        )?,
        &[
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::FLOAT8,
        ],
    );
    walk(&scheme, studies, |row| match row {
        Row::Series {
            study: st,
            series: se,
            frame_of_reference,
        } => w.write(&[
            &se.uid,
            &st.uid,
            &st.modality.code(),
            &(se.number as i64),
            &se.description,
            &"HEAD",
            &frame_of_reference,
            &st.date,
            &st.time,
            &NULL,
            &LOADER_AE,
            &now,
        ]),
        _ => Ok(()),
    })?;
    w.finish()?;

    let mut w = BinaryCopyInWriter::new(
        tx.copy_in(
            "COPY instances (sop_instance_uid, sop_class_uid, study_instance_uid, \
             series_instance_uid, modality, instance_number, transfer_syntax, path, size, \
             calling_ae, received_at, document_title, mime_type) FROM STDIN (FORMAT binary)",
        )?,
        &[
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::FLOAT8,
            Type::TEXT,
            Type::TEXT,
        ],
    );
    let filled = walk(&scheme, studies, |row| match row {
        Row::Instance {
            study: st,
            series: se,
            uid,
            number,
            path,
        } => w.write(&[
            &uid,
            &st.modality.sop_class(),
            &st.uid,
            &se.uid,
            &st.modality.code(),
            &number,
            &EXPLICIT_LE,
            &path,
            &FILE_SIZE,
            &LOADER_AE,
            &now,
            &NULL,
            &NULL,
        ]),
        _ => Ok(()),
    })?;
    w.finish()?;

    // Past the largest key (or back to 1, unused, for an empty table).
    tx.execute(
        "SELECT setval(pg_get_serial_sequence('patients', 'pk'), \
         GREATEST(COALESCE(MAX(pk), 0), 1), MAX(pk) IS NOT NULL) FROM patients",
        &[],
    )?;
    tx.commit()?;
    Ok(filled)
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

/// One of the four C-FIND queries issue 13 sets goals for, shared by `benches/query.rs` (SQL)
/// and `benches/qr_find.rs` (over the wire) so that both time the same identifiers.
pub struct BenchQuery {
    /// The name the benches print.
    pub name: &'static str,
    /// The goal for the median, in ms.
    pub goal_ms: f64,
    level: &'static str,
    key: fn(&QueryKeys) -> (&'static str, String),
}

fn by_patient_id(k: &QueryKeys) -> (&'static str, String) {
    ("00100020", k.patient_id.clone())
}

fn by_name(_: &QueryKeys) -> (&'static str, String) {
    ("00100010", "SMI*".into())
}

fn by_month(k: &QueryKeys) -> (&'static str, String) {
    ("00080020", k.month.clone())
}

fn by_study_uid(k: &QueryKeys) -> (&'static str, String) {
    ("0020000D", k.study_uid.clone())
}

/// The benchmark queries, in the order the benches report them.
pub const BENCH_QUERIES: [BenchQuery; 4] = [
    BenchQuery {
        name: "STUDY by Patient ID",
        goal_ms: 5.0,
        level: "STUDY",
        key: by_patient_id,
    },
    BenchQuery {
        name: "STUDY by Patient's Name SMI*",
        goal_ms: 20.0,
        level: "STUDY",
        key: by_name,
    },
    BenchQuery {
        name: "STUDY by Study Date, one month",
        goal_ms: 20.0,
        level: "STUDY",
        key: by_month,
    },
    BenchQuery {
        name: "SERIES by Study Instance UID",
        goal_ms: 2.0,
        level: "SERIES",
        key: by_study_uid,
    },
];

impl BenchQuery {
    /// The identifier's keys for one run: the level, the matching key drawn in `k`, then the
    /// return keys (`study_returns` not already present at STUDY level; the series keys at
    /// SERIES level).
    pub fn keys(&self, k: &QueryKeys, study_returns: &[(&str, &str)]) -> Vec<(String, String)> {
        let (tag, value) = (self.key)(k);
        let mut keys = vec![
            ("00080052".to_string(), self.level.to_string()),
            (tag.to_string(), value),
        ];
        if self.level == "SERIES" {
            keys.extend(
                ["0020000E", "00080060", "00200011", "0008103E", "00201209"]
                    .map(|t| (t.to_string(), String::new())),
            );
        } else {
            for (t, v) in study_returns {
                if !keys.iter().any(|(k, _)| k == t) {
                    keys.push((t.to_string(), v.to_string()));
                }
            }
        }
        keys
    }
}
