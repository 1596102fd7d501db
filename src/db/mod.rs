//! The index database (`<storage>/index.sqlite`, or a PostgreSQL database shared by several
//! processes: issue 17): the one owner of every table, statement and stored state.
//!
//! Both backends run the same typed methods: each statement is written once against the
//! neutral layer of [`sql`] (one text, or one per dialect where they differ), and [`Db`] runs
//! it on the SQLite connection or on a pooled PostgreSQL connection ([`pg`]). Jobs and
//! deliveries are leased to one process at a time ([`Db::set_owner`], [`Db::claim_job`],
//! [`Db::claim_deliveries`], [`Db::renew_leases`]); a holder that stops renewing loses them,
//! and its late writes are refused ([`DbError::LeaseLost`]).
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
mod completion;
mod instances;
mod jobs;
pub mod migrate;
mod mpps;
mod outbox;
pub mod pg;
pub mod settings;
pub(crate) mod sql;
pub mod state;
mod stats;
mod status;
mod work;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rusqlite::Connection;
use tracing::{info, warn};

use crate::query::{Found, InstanceRef, Query, QueryError};
use sql::{Conn, PgClient};

pub use commitments::{Admission, Commitment, CommitmentItem, CommitmentSummary};
pub use completion::ReceivingFacts;
pub use instances::{InstanceRow, NewRow, now};
pub use jobs::{FailedAtStart, JobRow, JobSource, ProcessRow};
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
    /// PostgreSQL refused an operation.
    #[error("PostgreSQL index: {0}")]
    Postgres(#[from] postgres::Error),
    /// The PostgreSQL plumbing failed (URL, pool, migration).
    #[error("{0}")]
    Pg(#[from] pg::PgError),
    /// A SQLite-only operation ([`Db::with`]) on a PostgreSQL index.
    #[error("this operation needs the SQLite index; the index is PostgreSQL")]
    NotSqlite,
    /// An operation not available on PostgreSQL yet.
    #[error("{0} is not available on the PostgreSQL index yet")]
    NotPorted(&'static str),
    /// The row's lease is no longer this process's: another process took the job or delivery
    /// over (this one was stopped or cut off longer than the lease). Nothing was written.
    #[error("the lease was lost: another process took the work over")]
    LeaseLost,
    /// A statement expected a row and found none.
    #[error("index database: an expected row is missing")]
    NoRow,
    /// A PostgreSQL index at another schema version than this binary's (`m3dnode jobs` does
    /// not migrate).
    #[error(
        "PostgreSQL index {index} has schema version {}, not the {known} this m3dnode uses; \
         start `m3dnode serve` (of the matching release) once to migrate it",
        found.map_or_else(|| "none".to_string(), |v| v.to_string())
    )]
    WrongVersion {
        /// Where the database is, without credentials.
        index: String,
        /// Its version (`None`: no m3dnode schema).
        found: Option<i64>,
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

impl DbError {
    /// A PostgreSQL deadlock or serialisation failure: the transaction may succeed if run
    /// again.
    pub fn is_transient(&self) -> bool {
        use postgres::error::SqlState;
        match self {
            DbError::Postgres(e) => e.code().is_some_and(|c| {
                *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
            }),
            _ => false,
        }
    }
}

/// A shared handle to the index database: SQLite (one node, the default) or PostgreSQL (the
/// shared index of several processes, issue 17).
pub struct Db {
    backend: Backend,
    /// Query rows known to be current, so that ingest skips their upserts. Updated only after
    /// a commit (the group commit has one leader at a time).
    written: Mutex<instances::Written>,
    /// This process's lease owner and lease length ([`Db::set_owner`]).
    lease: OnceLock<Lease>,
}

/// Who holds the leases this handle takes, and for how long.
#[derive(Debug, Clone)]
struct Lease {
    owner: String,
    seconds: f64,
}

/// The lease owner of a handle nobody named ([`Db::set_owner`]).
pub const DEFAULT_OWNER: &str = "local";
/// The lease length of a handle nobody set, in seconds.
pub const DEFAULT_LEASE_SECONDS: f64 = 60.0;

/// The two backends.
enum Backend {
    /// The one SQLite connection; its mutex serialises every statement.
    Sqlite(Mutex<Connection>),
    /// A pool of PostgreSQL connections (boxed: it is three times the SQLite variant).
    Postgres(Box<pg::Pool>),
}

/// How long a PostgreSQL statement waits for a pooled connection (SQLite's busy timeout).
const CHECKOUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
        Ok(Db::from_backend(Backend::Sqlite(Mutex::new(conn))))
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
        Ok(Db::from_backend(Backend::Sqlite(Mutex::new(conn))))
    }

    /// Connects to the PostgreSQL index at `url` with up to `pool_size` connections named
    /// `application_name`, and migrates it to the latest schema under the migration lock
    /// (several processes may start at once). The URL is logged without its password.
    pub fn open_postgres(
        url: &str,
        application_name: &str,
        pool_size: usize,
    ) -> Result<Db, DbError> {
        let (pool, index) = connect_pool(url, application_name, pool_size)?;
        let migrated = {
            let mut conn = pool.get()?;
            pg::migrate::run(conn.client(), &index)?
        };
        if migrated.applied.is_empty() {
            info!(index = %index, version = LATEST_VERSION, "PostgreSQL index opened");
        } else {
            info!(index = %index, from = ?migrated.from, applied = ?migrated.applied, "PostgreSQL index migrated");
        }
        Ok(Db::from_backend(Backend::Postgres(Box::new(pool))))
    }

    /// Connects to a PostgreSQL index that running processes use (`m3dnode jobs`): no
    /// migration, and a schema other than [`LATEST_VERSION`] is refused.
    pub fn open_postgres_existing(
        url: &str,
        application_name: &str,
        pool_size: usize,
    ) -> Result<Db, DbError> {
        let (pool, index) = connect_pool(url, application_name, pool_size)?;
        let found = {
            let mut conn = pool.get()?;
            pg::migrate::version(conn.client())?
        };
        if found != Some(LATEST_VERSION) {
            return Err(DbError::WrongVersion {
                index,
                found,
                known: LATEST_VERSION,
            });
        }
        Ok(Db::from_backend(Backend::Postgres(Box::new(pool))))
    }

    fn from_backend(backend: Backend) -> Db {
        Db {
            backend,
            written: Mutex::new(instances::Written::default()),
            lease: OnceLock::new(),
        }
    }

    /// Whether this index is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Names the owner of the leases this handle takes (jobs, deliveries; unique per process
    /// on one database, e.g. `<instance>:<pid>:<start ms>`) and their length. Once per
    /// handle: a later call is ignored (returns false), so leases never change hands silently.
    pub fn set_owner(&self, owner: &str, lease_seconds: f64) -> bool {
        self.lease
            .set(Lease {
                owner: owner.to_string(),
                seconds: lease_seconds,
            })
            .is_ok()
    }

    /// This handle's lease owner ([`DEFAULT_OWNER`] unless [`Db::set_owner`] named one).
    pub fn owner(&self) -> &str {
        self.lease.get().map_or(DEFAULT_OWNER, |l| l.owner.as_str())
    }

    /// This handle's lease length in seconds.
    pub fn lease_seconds(&self) -> f64 {
        self.lease
            .get()
            .map_or(DEFAULT_LEASE_SECONDS, |l| l.seconds)
    }

    /// Runs `f` on the SQLite connection (short, await-free sections only: it holds a std
    /// mutex). For tests and benches; [`DbError::NotSqlite`] on PostgreSQL.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        match &self.backend {
            Backend::Sqlite(m) => {
                let c = m.lock().map_err(|_| DbError::Poisoned)?;
                Ok(f(&c)?)
            }
            Backend::Postgres(_) => Err(DbError::NotSqlite),
        }
    }

    /// Runs `f` on a connection, each statement committing by itself.
    fn run<T: Send>(
        &self,
        f: impl FnOnce(&mut Conn<'_>) -> Result<T, DbError> + Send,
    ) -> Result<T, DbError> {
        match &self.backend {
            Backend::Sqlite(m) => {
                let c = m.lock().map_err(|_| DbError::Poisoned)?;
                f(&mut Conn::Lite(&c))
            }
            Backend::Postgres(pool) => pg::off_runtime(|| {
                let mut pooled = pool.get()?;
                let (client, stmts) = pooled.parts();
                f(&mut Conn::Pg {
                    client: PgClient::Client(client),
                    stmts,
                })
            }),
        }
    }

    /// Runs `f` in one transaction: committed when it returns `Ok`, rolled back otherwise. On
    /// PostgreSQL a transaction that a deadlock or a serialisation failure aborted is run
    /// once more (so `f` must only write to the database).
    fn tx<T: Send>(
        &self,
        mut f: impl FnMut(&mut Conn<'_>) -> Result<T, DbError> + Send,
    ) -> Result<T, DbError> {
        match &self.backend {
            Backend::Sqlite(m) => {
                let c = m.lock().map_err(|_| DbError::Poisoned)?;
                in_transaction(&c, |c| f(&mut Conn::Lite(c)))
            }
            Backend::Postgres(pool) => pg::off_runtime(|| {
                let mut pooled = pool.get()?;
                let mut retried = false;
                loop {
                    let (client, stmts) = pooled.parts();
                    let mut conn = Conn::Pg {
                        client: PgClient::Tx(client.transaction()?),
                        stmts,
                    };
                    let result = f(&mut conn);
                    let Conn::Pg {
                        client: PgClient::Tx(tx),
                        ..
                    } = conn
                    else {
                        unreachable!("a PostgreSQL transaction stays one")
                    };
                    let result = match result {
                        Ok(v) => tx.commit().map(|()| v).map_err(DbError::from),
                        Err(e) => {
                            // The error says what went wrong; a failed rollback adds nothing
                            // (the server rolls back when the connection goes).
                            let _ = tx.rollback();
                            Err(e)
                        }
                    };
                    match result {
                        Err(e) if !retried && e.is_transient() => {
                            warn!(error = %e, "PostgreSQL index: transaction aborted by a concurrent one; running it again");
                            retried = true;
                        }
                        other => return other,
                    }
                }
            }),
        }
    }

    /// The schema version (`PRAGMA user_version`, or PostgreSQL's `schema_version` row; 0 for
    /// an empty PostgreSQL database).
    pub fn schema_version(&self) -> Result<i64, DbError> {
        match &self.backend {
            Backend::Sqlite(_) => self.with(migrate::version),
            Backend::Postgres(pool) => {
                let mut conn = pool.get()?;
                Ok(pg::migrate::version(conn.client())?.unwrap_or(0))
            }
        }
    }

    /// C-FIND through the query module: the matches of `q`, at most `limit` (0: no limit),
    /// each encoded in `ts_uid` (see [`Query::find`]).
    pub fn find(&self, q: &Query, limit: usize, ts_uid: &str) -> Result<Found, QueryError> {
        match &self.backend {
            Backend::Sqlite(_) => self
                .with(|c| Ok(q.find(c, limit, ts_uid)))
                .map_err(query_error)?,
            Backend::Postgres(pool) => pg::off_runtime(|| {
                let mut conn = pool.get().map_err(|e| query_error(e.into()))?;
                q.find_pg(conn.client(), limit, ts_uid)
            }),
        }
    }

    /// C-MOVE / C-GET through the query module: the instances `q` names (see
    /// [`Query::instances`]).
    pub fn retrieve_refs(&self, q: &Query) -> Result<Vec<InstanceRef>, QueryError> {
        match &self.backend {
            Backend::Sqlite(_) => self.with(|c| Ok(q.instances(c))).map_err(query_error)?,
            Backend::Postgres(pool) => pg::off_runtime(|| {
                let mut conn = pool.get().map_err(|e| query_error(e.into()))?;
                q.instances_pg(conn.client())
            }),
        }
    }
}

/// The pool of a PostgreSQL index and where it is, without credentials (for the log and
/// errors).
fn connect_pool(
    url: &str,
    application_name: &str,
    pool_size: usize,
) -> Result<(pg::Pool, String), DbError> {
    let pool = pg::Pool::new(
        pg::config(url, application_name)?,
        pool_size,
        CHECKOUT_TIMEOUT,
    )?;
    let index = pool.describe();
    Ok((pool, index))
}

/// A [`DbError`] as the query module's error.
fn query_error(e: DbError) -> QueryError {
    match e {
        DbError::Sqlite(e) => QueryError::Database(e),
        DbError::Postgres(e) => QueryError::Postgres(e),
        other => QueryError::Index(other.to_string()),
    }
}

fn connect(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Runs `f` in a SQLite transaction (BEGIN and COMMIT as cached statements: parsing them anew
/// cost more than a single insert).
fn in_transaction<T, E: From<rusqlite::Error>>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    c.prepare_cached("BEGIN")?.execute([])?;
    match f(c) {
        Ok(v) => match c.prepare_cached("COMMIT").and_then(|mut s| s.execute([])) {
            Ok(_) => Ok(v),
            Err(e) => {
                let _ = c.prepare_cached("ROLLBACK").and_then(|mut s| s.execute([]));
                Err(e.into())
            }
        },
        Err(e) => {
            let _ = c.prepare_cached("ROLLBACK").and_then(|mut s| s.execute([]));
            Err(e)
        }
    }
}

/// The tests' backends: SQLite in a temporary directory, and PostgreSQL (a fresh database on
/// the test cluster: `M3DNODE_TEST_PG_URL`, or one started with scripts/pg-cluster) when
/// PostgreSQL is installed. Set `M3DNODE_TEST_NO_PG=1` to run SQLite only.
#[cfg(test)]
pub(crate) fn test_backends() -> Vec<(&'static str, Db, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let lite = Db::open(&dir.path().join("index.sqlite")).unwrap();
    let mut out = vec![("sqlite", lite, Some(dir))];
    if let Some(url) = test_pg_url() {
        out.push((
            "postgres",
            Db::open_postgres(&url, "m3dnode/test", 4).unwrap(),
            None,
        ));
    }
    out
}

/// Two handles on one index per backend, as two processes would hold (leases, concurrent
/// claims): (backend, first, second, the SQLite directory).
#[cfg(test)]
pub(crate) fn test_backend_pairs() -> Vec<(&'static str, Db, Db, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.sqlite");
    let a = Db::open(&path).unwrap();
    let b = Db::open(&path).unwrap();
    let mut out = vec![("sqlite", a, b, Some(dir))];
    if let Some(url) = test_pg_url() {
        let a = Db::open_postgres(&url, "m3dnode/test-a", 4).unwrap();
        let b = Db::open_postgres(&url, "m3dnode/test-b", 4).unwrap();
        out.push(("postgres", a, b, None));
    }
    out
}

/// A fresh PostgreSQL database for a test, when a cluster is available.
#[cfg(test)]
pub(crate) fn test_pg_url() -> Option<String> {
    if std::env::var_os("M3DNODE_TEST_NO_PG").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    let installed = std::env::var_os("M3DNODE_TEST_PG_URL").is_some_and(|v| !v.is_empty())
        || Path::new("/usr/lib/postgresql/15/bin/initdb").exists()
        || std::process::Command::new("pg_config")
            .arg("--bindir")
            .output()
            .is_ok_and(|o| o.status.success());
    installed.then(test_cluster::fresh_db)
}

/// The throw-away cluster of the integration tests, shared with the unit tests.
#[cfg(test)]
#[path = "../../tests/common/pg.rs"]
mod test_cluster;

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

    /// `m3dnode jobs` on PostgreSQL: the latest schema opens, an empty database is refused
    /// with its version; the SQLite-only entry points say so.
    #[test]
    fn postgres_opens_existing_at_the_latest_schema_only() {
        let Some(url) = test_pg_url() else {
            return;
        };
        match Db::open_postgres_existing(&url, "m3dnode/test", 1) {
            Err(DbError::WrongVersion {
                found: None, known, ..
            }) => assert_eq!(known, LATEST_VERSION),
            other => panic!("{:?}", other.err()),
        }
        let db = Db::open_postgres(&url, "m3dnode/test", 2).unwrap();
        assert!(db.is_postgres());
        assert_eq!(db.schema_version().unwrap(), LATEST_VERSION);
        let existing = Db::open_postgres_existing(&url, "m3dnode/test", 1).unwrap();
        assert_eq!(existing.schema_version().unwrap(), LATEST_VERSION);
        assert!(matches!(db.with(|_| Ok(())), Err(DbError::NotSqlite)));
        let err = DbError::WrongVersion {
            index: "db:5432/m3d".into(),
            found: Some(5),
            known: 6,
        }
        .to_string();
        assert!(err.contains("schema version 5, not the 6"), "{err}");
    }
}
