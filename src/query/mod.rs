//! Query/Retrieve matching (PS3.4 Annex C): reads a C-FIND/C-MOVE/C-GET identifier, matches it
//! against the query index (SQLite, or PostgreSQL through [`Query::find_pg`] and
//! [`Query::instances_pg`], same answers) and encodes the C-FIND response identifiers.
//!
//! It owns the meaning of the keys (which attribute lives at which level, in which column, how
//! it is matched) and nothing of the network: [`crate::net`] hands it the identifier bytes and
//! the presentation context's transfer syntax, and sends what it returns. It only reads the
//! index; the tables are written by the database module (schema in `src/db/migrations/0002_query_index.sql`).
//!
//! Main types: [`Query`] (a parsed, checked identifier), [`Found`] (C-FIND matches, already
//! encoded), [`InstanceRef`] (what a C-MOVE/C-GET names), [`QueryError`] (every refusal, with
//! its DIMSE status and an Error Comment).
//!
//! What is matched (PS3.4 C.2.2.2): single value, universal (zero length, or `*`), wildcard
//! (`*`, `?`: SQLite GLOB, PostgreSQL LIKE with `%`, `_`, `\` of the value literal), lists
//! (backslash-separated values: UID list matching, and for other attributes any-of), DA/TM
//! ranges (`A-B`, `-B`, `A-`), Study Date + Study Time (and Series Date + Time) combined
//! into one date-time range when both are ranges (C.2.2.2.5).
//! Matching is case-sensitive for every VR, Person Name included (as DCMTK's dcmqrscp does);
//! a PN key is compared with the whole stored name, component groups (`=`) as received.
//! A stored value that is absent (NULL) matches only universal keys.
//!
//! Not matched, only returned: keys the index does not hold (they come back empty), the
//! derived counts (Number of ... Related ...), and sequences (an empty sequence comes back
//! empty; a sequence with items is refused with 0xC000).
//!
//! ```
//! # use m3dnode::query::{Model, Query, Service, synthetic};
//! # let dir = tempfile::tempdir()?;
//! let db = m3dnode::db::Db::open(&dir.path().join("index.sqlite"))?;
//! db.with(|conn| synthetic::fill(conn, 20, 10, 1))?;
//! let ident = synthetic::identifier(&[("00080052", "STUDY"), ("00100010", "SMI*")]);
//! let query = Query::parse(Model::StudyRoot, Service::Find, &ident, m3dnode::net::EXPLICIT_VR_LE)?;
//! let found = db.with(|conn| Ok(query.find(conn, 100, m3dnode::net::EXPLICIT_VR_LE)))??;
//! assert!(!found.truncated);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod charset;
mod find;
mod keys;
mod parse;
pub mod synthetic;
#[cfg(test)]
mod tests;

use dicom_core::Tag;

use charset::Charset;
use keys::Key;

/// The information model of a Q/R SOP class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Patient Root: PATIENT / STUDY / SERIES / IMAGE.
    PatientRoot,
    /// Study Root: STUDY / SERIES / IMAGE (patient attributes are study attributes).
    StudyRoot,
}

/// A Query/Retrieve Level (0008,0052).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `PATIENT`
    Patient,
    /// `STUDY`
    Study,
    /// `SERIES`
    Series,
    /// `IMAGE`
    Image,
}

impl Level {
    /// The code string of the level, as in (0008,0052).
    pub fn code(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::str::FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PATIENT" => Ok(Level::Patient),
            "STUDY" => Ok(Level::Study),
            "SERIES" => Ok(Level::Series),
            "IMAGE" | "INSTANCE" => Ok(Level::Image),
            _ => Err(format!(
                "`{s}` is not a level (PATIENT, STUDY, SERIES, IMAGE)"
            )),
        }
    }
}

impl Model {
    /// The SOP Class UID of `service` in this model.
    pub fn sop_class(self, service: Service) -> &'static str {
        CLASSES
            .iter()
            .find(|(_, m, s)| *m == self && *s == service)
            .map(|(uid, ..)| *uid)
            .unwrap_or_default()
    }
}

/// The DIMSE service of a Q/R SOP class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// C-FIND
    Find,
    /// C-MOVE
    Move,
    /// C-GET
    Get,
}

/// The Q/R SOP classes this node accepts, with their model and service.
const CLASSES: &[(&str, Model, Service)] = &[
    (
        "1.2.840.10008.5.1.4.1.2.1.1",
        Model::PatientRoot,
        Service::Find,
    ),
    (
        "1.2.840.10008.5.1.4.1.2.1.2",
        Model::PatientRoot,
        Service::Move,
    ),
    (
        "1.2.840.10008.5.1.4.1.2.1.3",
        Model::PatientRoot,
        Service::Get,
    ),
    (
        "1.2.840.10008.5.1.4.1.2.2.1",
        Model::StudyRoot,
        Service::Find,
    ),
    (
        "1.2.840.10008.5.1.4.1.2.2.2",
        Model::StudyRoot,
        Service::Move,
    ),
    (
        "1.2.840.10008.5.1.4.1.2.2.3",
        Model::StudyRoot,
        Service::Get,
    ),
];

/// All Q/R SOP classes this node accepts (Patient Root and Study Root; FIND, MOVE, GET).
pub const SOP_CLASSES: &[&str] = &[
    CLASSES[0].0,
    CLASSES[1].0,
    CLASSES[2].0,
    CLASSES[3].0,
    CLASSES[4].0,
    CLASSES[5].0,
];

/// The model and service a Q/R SOP Class UID names (None: not a Q/R class).
pub fn sop_class(uid: &str) -> Option<(Model, Service)> {
    let uid = uid.trim_end_matches(['\0', ' ']);
    CLASSES
        .iter()
        .find(|(u, _, _)| *u == uid)
        .map(|&(_, m, s)| (m, s))
}

/// The largest identifier [`Query::parse`] reads (after inflating a deflated one). A
/// 10,000-value UID list is about 650 KB; 4 MiB leaves room for that and for generous keys
/// while bounding what one request can make the node hold.
pub const MAX_IDENTIFIER_BYTES: usize = 4 << 20;

/// The deepest nesting of sequences read in an identifier. Matching keys are one level deep
/// (a sequence and its item); deeper data is no query and is refused before it costs stack or
/// memory.
pub const MAX_DEPTH: usize = 4;

/// Why an identifier cannot be answered. [`QueryError::status`] gives the DIMSE status,
/// [`QueryError::comment`] the Error Comment (0000,0902).
///
/// Messages name tags, levels and limits, never values of the identifier: they may be logged
/// and sent back without carrying patient data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The identifier is larger than [`MAX_IDENTIFIER_BYTES`].
    #[error("identifier larger than {limit} bytes")]
    TooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// Sequences nest deeper than [`MAX_DEPTH`].
    #[error("identifier nested deeper than {limit} levels")]
    TooDeep {
        /// The cap.
        limit: usize,
    },
    /// The bytes are not a data set in the transfer syntax.
    #[error("malformed identifier: {0}")]
    Malformed(String),
    /// The transfer syntax is unknown or cannot carry a data set.
    #[error("unsupported transfer syntax {0}")]
    TransferSyntax(String),
    /// (0008,0052) is absent or empty.
    #[error("Query/Retrieve Level (0008,0052) missing")]
    MissingLevel,
    /// (0008,0052) holds no level this node knows.
    #[error("invalid Query/Retrieve Level (0008,0052)")]
    InvalidLevel,
    /// The level does not exist in the model (Study Root has no PATIENT level).
    #[error("level {level} not in the {model:?} model")]
    LevelNotInModel {
        /// The level asked for.
        level: Level,
        /// The model of the SOP class.
        model: Model,
    },
    /// A unique key that the hierarchical model requires is absent, empty or not one value.
    #[error("{tag} must be a single value at level {level}")]
    MissingUniqueKey {
        /// The unique key.
        tag: TagName,
        /// The query level.
        level: Level,
    },
    /// A key of a level below the query level.
    #[error("key {tag} is below the {level} level")]
    KeyBelowLevel {
        /// The key.
        tag: TagName,
        /// The query level.
        level: Level,
    },
    /// A sequence with items as a matching key.
    #[error("sequence matching not supported: {tag}")]
    SequenceMatching {
        /// The sequence.
        tag: TagName,
    },
    /// A key value that its VR does not allow (e.g. a malformed date range).
    #[error("invalid value in key {tag}")]
    InvalidValue {
        /// The key.
        tag: TagName,
    },
    /// A Specific Character Set this node cannot decode.
    #[error("unsupported Specific Character Set")]
    Charset,
    /// The index could not be read.
    #[error("index database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The PostgreSQL index could not be read.
    #[error("index database (PostgreSQL): {0}")]
    Postgres(#[from] postgres::Error),
    /// The index could not serve the query (no connection free, the database down).
    #[error("index: {0}")]
    Index(String),
    /// A response identifier could not be written.
    #[error("cannot encode response: {0}")]
    Encode(String),
}

/// The SQL dialect a statement is written for: the query index lives in SQLite or in
/// PostgreSQL (issue 17), and the statements differ in placeholders, wildcard matching and
/// list parameters (docs/issue-17-design.md §1.3), never in their answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (the bundled library): `?`, GLOB, `json_each`.
    Sqlite,
    /// PostgreSQL 15 with the baseline schema (`COLLATE "C"` text): `$n`, LIKE, `ANY(text[])`.
    Postgres,
}

/// A tag shown as `(gggg,eeee)` in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagName(pub Tag);

impl std::fmt::Display for TagName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({:04X},{:04X})", self.0.0, self.0.1)
    }
}

impl QueryError {
    /// The DIMSE status to answer with: 0xA900 (identifier does not match SOP class) for an
    /// identifier whose structure the model forbids (level, unique keys, keys below the
    /// level); 0xC000 (unable to process) for what could be a valid identifier but cannot be
    /// read or answered here (malformed, too large, sequence matching, character set,
    /// database).
    pub fn status(&self) -> u16 {
        match self {
            QueryError::MissingLevel
            | QueryError::InvalidLevel
            | QueryError::LevelNotInModel { .. }
            | QueryError::MissingUniqueKey { .. }
            | QueryError::KeyBelowLevel { .. } => 0xA900,
            _ => 0xC000,
        }
    }

    /// The Error Comment (0000,0902): the message cut to the 64 characters an LO holds.
    pub fn comment(&self) -> String {
        let mut s: String = self
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
            .collect();
        s.truncate(64);
        s
    }
}

/// A parsed identifier, checked against its model, level and service.
#[derive(Debug, Clone)]
pub struct Query {
    model: Model,
    service: Service,
    level: Level,
    /// The identifier's keys in tag order, plus the unique keys of the level and above and the
    /// level itself when the identifier lacked them.
    keys: Vec<Key>,
    charset: Charset,
}

/// C-FIND matches.
#[derive(Debug)]
pub struct Found {
    /// Each match as a response identifier encoded in the requested transfer syntax.
    pub matches: Vec<Vec<u8>>,
    /// More matches existed than `limit`.
    pub truncated: bool,
}

/// A stored instance that a C-MOVE/C-GET names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef {
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// The transfer syntax the instance is stored in.
    pub transfer_syntax: String,
    /// Relative to the storage root.
    pub path: String,
}

impl Query {
    /// Parses an identifier data set (`bytes` encoded in transfer syntax `ts_uid`).
    /// `Service::Move`/`Get` identifiers name what to retrieve (unique keys down to the level).
    pub fn parse(
        model: Model,
        service: Service,
        bytes: &[u8],
        ts_uid: &str,
    ) -> Result<Query, QueryError> {
        parse::parse(model, service, bytes, ts_uid)
    }

    /// The Query/Retrieve Level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The information model.
    pub fn model(&self) -> Model {
        self.model
    }

    /// C-FIND: the matches, each already encoded as a response identifier in `ts_uid`
    /// (every requested return key present, empty when unknown; Specific Character Set of the
    /// query when every value fits it, else ISO_IR 192; Query/Retrieve Level set).
    /// At most `limit` matches (0: no limit); `truncated` tells whether more existed.
    /// Matches come in index order, which is not specified.
    pub fn find(
        &self,
        conn: &rusqlite::Connection,
        limit: usize,
        ts_uid: &str,
    ) -> Result<Found, QueryError> {
        find::find(self, conn, limit, ts_uid)
    }

    /// [`Query::find`] on a PostgreSQL index (schema `src/db/migrations/pg/0005_baseline.sql`):
    /// the same matches and the same response identifiers. Runs on the blocking client: a
    /// caller inside an async runtime calls it from a blocking thread.
    pub fn find_pg(
        &self,
        client: &mut postgres::Client,
        limit: usize,
        ts_uid: &str,
    ) -> Result<Found, QueryError> {
        find::find_pg(self, client, limit, ts_uid)
    }

    /// The SQLite plan of the statement [`Query::find`] runs (EXPLAIN QUERY PLAN, one line per
    /// step): benches and tests check with it that the index answers, not a table scan.
    pub fn explain(&self, conn: &rusqlite::Connection) -> Result<Vec<String>, QueryError> {
        find::explain(self, conn)
    }

    /// C-MOVE / C-GET: the instances the identifier names, in study/series/instance-number
    /// order (Study and Series Instance UID, then Instance Number, then SOP Instance UID).
    pub fn instances(&self, conn: &rusqlite::Connection) -> Result<Vec<InstanceRef>, QueryError> {
        find::instances(self, conn)
    }

    /// [`Query::instances`] on a PostgreSQL index: the same instances in the same order.
    pub fn instances_pg(
        &self,
        client: &mut postgres::Client,
    ) -> Result<Vec<InstanceRef>, QueryError> {
        find::instances_pg(self, client)
    }
}
