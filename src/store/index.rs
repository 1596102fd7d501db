//! The SQLite index of stored instances.
//!
//! The files are the truth; the index makes them findable. Rows are written before an
//! instance is acknowledged, in WAL mode with `synchronous = NORMAL`: a committed row survives
//! a process crash, and the rare row lost to a power cut is rebuilt from the files at the next
//! start (see [`super::Store::open`]), so the index never needs its own fsync per instance.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::header::Header;

/// Index failures.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// SQLite refused an operation.
    #[error("index database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The connection mutex was poisoned by a panic elsewhere.
    #[error("index database lock poisoned")]
    Poisoned,
}

/// One indexed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// SOP Instance UID (primary key).
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Modality, when present.
    pub modality: Option<String>,
    /// Instance Number, when present.
    pub instance_number: Option<i64>,
    /// Transfer syntax the instance is stored in (as received).
    pub transfer_syntax: String,
    /// Path relative to the storage root.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// Calling AE title of the association that brought it (empty for local results).
    pub calling_ae: String,
}

/// A shared handle to the index database.
pub struct Index {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
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
    received_at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_instance_uid);
-- Nothing looks instances up by study yet, and every index is one more b-tree to update per
-- received instance; indexes made by earlier versions are dropped.
DROP INDEX IF EXISTS instances_study;

-- Series the node has seen, for completion tracking and routing (series module).
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    calling_ae          TEXT NOT NULL,
    rule                TEXT,
    state               TEXT NOT NULL,
    expected            INTEGER,
    result_series_uid   TEXT,
    result_version      INTEGER NOT NULL DEFAULT 0,
    first_at            REAL NOT NULL,
    last_at             REAL NOT NULL
);

-- Reconstruction jobs: queued -> running -> done | failed.
CREATE TABLE IF NOT EXISTS jobs (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    series_instance_uid     TEXT NOT NULL,
    rule                    TEXT NOT NULL,
    state                   TEXT NOT NULL,
    version                 INTEGER NOT NULL,
    result_series_uid       TEXT NOT NULL,
    result_sop_instance_uid TEXT NOT NULL,
    created_at              REAL NOT NULL,
    started_at              REAL,
    finished_at             REAL,
    error                   TEXT,
    summary                 TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);

-- One delivery per (result instance, destination): pending -> sent | failed.
CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER,
    sop_instance_uid TEXT NOT NULL,
    path             TEXT NOT NULL,
    destination      TEXT NOT NULL,
    address          TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    deadline_at      REAL NOT NULL,
    last_error       TEXT,
    created_at       REAL NOT NULL,
    sent_at          REAL,
    UNIQUE (sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, next_attempt_at);
";

const UPSERT: &str = "INSERT OR REPLACE INTO instances (sop_instance_uid, sop_class_uid,
    study_instance_uid, series_instance_uid, modality, instance_number, transfer_syntax, path,
    size, calling_ae, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// The one statement that writes an instance's row, for [`Index::upsert`] and
/// [`Index::upsert_all`].
fn insert_row(
    c: &Connection,
    h: &Header,
    ts: &str,
    rel_path: &str,
    size: u64,
    calling_ae: &str,
    now: f64,
) -> rusqlite::Result<usize> {
    c.prepare_cached(UPSERT)?.execute(params![
        h.sop_instance_uid,
        h.sop_class_uid,
        h.study_instance_uid,
        h.series_instance_uid,
        h.modality,
        h.instance_number,
        ts,
        rel_path,
        size as i64,
        calling_ae,
        now
    ])
}

/// An instance's row as the store writes it.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// The data set's header.
    pub header: Header,
    /// Transfer syntax it is stored in.
    pub transfer_syntax: String,
    /// Path relative to the storage root.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// Calling AE title it came from.
    pub calling_ae: String,
}

/// Seconds since the Unix epoch, the time unit of every table.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Index {
    /// Opens (creating if needed) the index at `path`.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Index {
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` on the connection (short, await-free sections only: it holds a std mutex).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, IndexError> {
        let conn = self.conn.lock().map_err(|_| IndexError::Poisoned)?;
        Ok(f(&conn)?)
    }

    /// Inserts or replaces the rows of several instances in one transaction (one WAL append
    /// for a whole group commit). A single row is written in autocommit mode; BEGIN and COMMIT
    /// are cached statements, because parsing them anew cost more than the insert itself.
    pub fn upsert_all<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a NewRow>,
    ) -> Result<(), IndexError> {
        let rows: Vec<&NewRow> = rows.into_iter().collect();
        let now = now();
        self.with(|c| {
            let insert = |r: &NewRow| {
                insert_row(
                    c,
                    &r.header,
                    &r.transfer_syntax,
                    &r.path,
                    r.size,
                    &r.calling_ae,
                    now,
                )
            };
            match rows.as_slice() {
                [] => Ok(()),
                [one] => insert(one).map(|_| ()),
                many => {
                    c.prepare_cached("BEGIN")?.execute([])?;
                    match many.iter().try_for_each(|r| insert(r).map(|_| ())) {
                        Ok(()) => c.prepare_cached("COMMIT")?.execute([]).map(|_| ()),
                        Err(e) => {
                            let _ = c.prepare_cached("ROLLBACK").and_then(|mut s| s.execute([]));
                            Err(e)
                        }
                    }
                }
            }
        })
    }

    /// Inserts or replaces the row of an instance.
    pub fn upsert(
        &self,
        header: &Header,
        ts: &str,
        rel_path: &str,
        size: u64,
        calling_ae: &str,
    ) -> Result<(), IndexError> {
        let now = now();
        self.with(|c| insert_row(c, header, ts, rel_path, size, calling_ae, now).map(|_| ()))
    }

    /// The row of one instance.
    pub fn get(&self, sop_instance_uid: &str) -> Result<Option<InstanceRow>, IndexError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
                 modality, instance_number, transfer_syntax, path, size, calling_ae
                 FROM instances WHERE sop_instance_uid = ?1",
            )?
            .query_row([sop_instance_uid], row_to_instance)
            .optional()
        })
    }

    /// Every instance of a series, in Instance Number order.
    pub fn series(&self, series_instance_uid: &str) -> Result<Vec<InstanceRow>, IndexError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
                 modality, instance_number, transfer_syntax, path, size, calling_ae
                 FROM instances WHERE series_instance_uid = ?1 ORDER BY instance_number, path",
            )?
            .query_map([series_instance_uid], row_to_instance)?
            .collect()
        })
    }

    /// Number of indexed instances.
    pub fn count(&self) -> Result<u64, IndexError> {
        self.with(|c| c.query_row("SELECT COUNT(*) FROM instances", [], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
    }
}

fn row_to_instance(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        sop_instance_uid: r.get(0)?,
        sop_class_uid: r.get(1)?,
        study_instance_uid: r.get(2)?,
        series_instance_uid: r.get(3)?,
        modality: r.get(4)?,
        instance_number: r.get(5)?,
        transfer_syntax: r.get(6)?,
        path: r.get(7)?,
        size: r.get::<_, i64>(8)? as u64,
        calling_ae: r.get(9)?,
    })
}
