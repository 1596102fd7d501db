//! The index database (`<storage>/index.sqlite`): the one owner of every table, statement and
//! stored state.
//!
//! Tables: `instances` (every stored file), the query index `patients`, `studies` and `series`
//! (`migrations/0002_query_index.sql`), `series_work` (completion tracking and routing), `jobs`, `outbox` and
//! `outbox_unconfirmed`; [`Db::recent_series`] and its neighbours are the status page's reads. Other modules call typed methods ([`Db::queue_job`],
//! [`Db::claim_job`], [`Db::enqueue_deliveries`], [`Db::mark_sent`], ...); the states are enums
//! ([`JobState`], [`SeriesState`], [`DeliveryState`]). The one exception is the query module,
//! which builds its own SELECTs over the query tables through [`Db::with`].
//!
//! The metrics' scrape-time counts are read on a read-only connection of their own
//! ([`StatsReader`]), so that counting a large index never holds up ingest.
//!
//! The schema is versioned by `PRAGMA user_version` ([`migrate`]): a storage written before
//! versioning is migrated in place at start-up, its query index back-filled from the stored
//! files; a storage newer than this binary is refused.
//!
//! The files are the truth; the index makes them findable. Rows are written before an
//! instance is acknowledged, in WAL mode with `synchronous = NORMAL`: a committed row survives
//! a process crash, and the rare row lost to a power cut is rebuilt from the files at the next
//! start (see [`crate::store::Store::open`]), so the index never needs its own fsync per instance.

mod commitments;
mod instances;
mod jobs;
pub mod migrate;
mod mpps;
mod outbox;
pub mod pg;
pub mod state;
mod stats;
mod status;
mod work;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

pub use commitments::{Admission, Commitment, CommitmentItem, CommitmentSummary};
pub use instances::{InstanceRow, NewRow, now};
pub use jobs::{FailedAtStart, JobRow, JobSource};
pub use migrate::{LATEST_VERSION, MigrateOptions};
pub use mpps::{MppsInstance, MppsRow, MppsSummary, MppsWrite, OpenMppsSeries};
pub use outbox::{DueDelivery, OutboxRow};
pub use state::{CommitmentState, DeliveryState, JobState, MppsStatus, SeriesState};
pub use stats::{IndexStats, StatsReader};
pub use status::{DestinationStatus, ResultMesh, ResultStatus, SeriesStatus};
pub use work::{NewSeriesWork, SeriesWork};

/// Deliveries of one stored instance to its destinations.
#[derive(Debug, Clone)]
pub struct NewDeliveries<'a> {
    /// The instance.
    pub sop_instance_uid: &'a str,
    /// Its file, relative to the storage root.
    pub path: &'a str,
    /// (AE title, address) of each destination.
    pub destinations: &'a [(String, String)],
    /// Seconds from now after which a row that keeps failing is given up.
    pub deadline_seconds: f64,
}

/// One object a job made (table `result_objects`).
#[derive(Debug, Clone)]
pub struct ResultObject<'a> {
    /// Its SOP Instance UID.
    pub sop_instance_uid: &'a str,
    /// `stl`, `obj`, `mtl` or `surface-seg`.
    pub kind: &'a str,
    /// The structure it shows (index in the rule), `None` for an object holding them all.
    pub structure: Option<usize>,
    /// The structure's label.
    pub label: Option<&'a str>,
    /// Its recommended display colour, sRGB `#rrggbb`.
    pub colour: Option<&'a str>,
    /// Its recommended opacity, 0 to 1.
    pub opacity: Option<f32>,
}

/// Index failures.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused an operation.
    #[error("index database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The connection mutex was poisoned by a panic elsewhere.
    #[error("index database lock poisoned")]
    Poisoned,
    /// The storage was written by a newer release: its tables may mean things this binary
    /// does not know, so it is not touched.
    #[error(
        "index {} has schema version {found}, newer than the {known} this m3dnode knows; \
         run the release that wrote it (or a newer one), or point node.storage elsewhere",
        path.display()
    )]
    TooNew {
        /// The index file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// [`LATEST_VERSION`].
        known: i64,
    },
    /// The storage needs a migration that only `serve` runs.
    #[error(
        "index {} has schema version {found}, older than the {known} this m3dnode uses; \
         start `m3dnode serve` on this storage once to migrate it",
        path.display()
    )]
    NeedsMigration {
        /// The index file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// [`LATEST_VERSION`].
        known: i64,
    },
    /// A migration stopped on purpose (a test's [`MigrateOptions::stop_after_batches`]).
    #[error("migration stopped after {batches} batch(es) as asked")]
    MigrationStopped {
        /// Batches committed before stopping.
        batches: u64,
    },
}

/// A shared handle to the index database.
pub struct Db {
    inner: Mutex<Inner>,
}

struct Inner {
    conn: Connection,
    /// Query rows known to be current, so that ingest skips their upserts.
    written: instances::Written,
}

impl Db {
    /// Opens (creating if needed) the index at `path` and migrates it to the latest schema.
    /// A back-fill reads the stored files under `path`'s directory (the storage root). Only
    /// the process that holds the storage lock may call this (`serve`, tests).
    pub fn open(path: &Path) -> Result<Db, DbError> {
        Db::open_with(path, &MigrateOptions::default())
    }

    /// [`Db::open`] with migration options (batch size, test hooks).
    pub fn open_with(path: &Path, opts: &MigrateOptions) -> Result<Db, DbError> {
        let conn = connect(path)?;
        let root = path.parent().unwrap_or(Path::new("."));
        migrate::run(&conn, path, root, opts)?;
        Ok(Db::from_conn(conn))
    }

    /// Opens the index of a node that may be running (`m3dnode jobs`, `m3dnode retry`): no
    /// migration, and a schema other than the latest is refused with what to do.
    pub fn open_existing(path: &Path) -> Result<Db, DbError> {
        let conn = connect(path)?;
        let found = migrate::version(&conn)?;
        if found > LATEST_VERSION {
            return Err(DbError::TooNew {
                path: path.to_path_buf(),
                found,
                known: LATEST_VERSION,
            });
        }
        if found < LATEST_VERSION {
            return Err(DbError::NeedsMigration {
                path: path.to_path_buf(),
                found,
                known: LATEST_VERSION,
            });
        }
        Ok(Db::from_conn(conn))
    }

    fn from_conn(conn: Connection) -> Db {
        Db {
            inner: Mutex::new(Inner {
                conn,
                written: instances::Written::default(),
            }),
        }
    }

    /// Runs `f` on the connection (short, await-free sections only: it holds a std mutex).
    /// For the query module's SELECTs and for tests; writes belong in this module.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let inner = self.inner.lock().map_err(|_| DbError::Poisoned)?;
        Ok(f(&inner.conn)?)
    }

    /// [`Db::with`] with the query-row cache, for the instance writers.
    fn with_inner<T>(
        &self,
        f: impl FnOnce(&mut Inner) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let mut inner = self.inner.lock().map_err(|_| DbError::Poisoned)?;
        Ok(f(&mut inner)?)
    }

    /// The schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64, DbError> {
        self.with(migrate::version)
    }
}

fn connect(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Runs `f` in a transaction (BEGIN and COMMIT as cached statements: parsing them anew cost
/// more than a single insert).
fn in_transaction<T>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached("BEGIN")?.execute([])?;
    match f(c) {
        Ok(v) => match c.prepare_cached("COMMIT").and_then(|mut s| s.execute([])) {
            Ok(_) => Ok(v),
            Err(e) => {
                let _ = c.prepare_cached("ROLLBACK").and_then(|mut s| s.execute([]));
                Err(e)
            }
        },
        Err(e) => {
            let _ = c.prepare_cached("ROLLBACK").and_then(|mut s| s.execute([]));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_index_gets_the_latest_schema_and_the_cli_refuses_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let db = Db::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), LATEST_VERSION);
        drop(db);
        assert!(Db::open_existing(&path).is_ok());
        // A schema 1 index (as a release before 2 would leave it): `jobs` must not touch it.
        let old = dir.path().join("old.sqlite");
        let c = Connection::open(&old).unwrap();
        c.execute_batch(include_str!("migrations/0001_initial.sql"))
            .unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        drop(c);
        match Db::open_existing(&old) {
            Err(DbError::NeedsMigration {
                found: 1, known, ..
            }) => {
                assert_eq!(known, LATEST_VERSION)
            }
            other => panic!("{:?}", other.err()),
        }
        // `serve` migrates it.
        assert_eq!(
            Db::open(&old).unwrap().schema_version().unwrap(),
            LATEST_VERSION
        );
    }
}
