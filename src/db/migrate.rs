//! The versioned schema: `PRAGMA user_version` and numbered migrations.
//!
//! | version | schema |
//! |---|---|
//! | 0 | none yet, or a storage written before versioning |
//! | 1 | the tables of the releases before versioning (`migrations/0001_initial.sql`) |
//! | 2 | the query index (`migrations/0002_query_index.sql`), back-filled from the files |
//! | 3 | each series' calling AE title and first arrival (`migrations/0003_series_origin.sql`) |
//! | 4 | the objects each job made, with their structure's label and colour (`migrations/0004_result_objects.sql`) |
//! | 5 | Storage Commitment transactions and MPPS steps (`migrations/0005_commitment_mpps.sql`) |
//! | 6 | leases of jobs and deliveries, the `processes` table (`migrations/0006_leases.sql`; issue 17) |
//!
//! Each migration runs in its own transaction and sets `user_version` in it, so a crash leaves
//! the storage at one version or the next. The one exception is migration 2's back-fill, which
//! reads every stored file: its schema change is one transaction, then the back-fill commits a
//! batch at a time with its progress (table `backfill`), so that a migration of millions of
//! instances interrupted by a kill restarts where it stopped; the last transaction drops the
//! progress table and sets version 2. The upserts are keyed (patient ID and issuer, study and
//! series UID), so a batch done twice writes no duplicate.

use std::path::Path;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use rusqlite::Connection;
use tracing::{info, warn};

use super::sql::Conn;
use super::{DbError, in_transaction, instances};
use crate::store::header;

/// The schema this binary writes.
pub const LATEST_VERSION: i64 = 6;

/// How a migration runs.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Instances read and committed per back-fill batch.
    pub batch: usize,
    /// Progress is logged this often.
    pub progress_every: Duration,
    /// Test hook: stop (with [`DbError::MigrationStopped`]) after this many back-fill batches
    /// have been committed, as a kill would.
    pub stop_after_batches: Option<u64>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            // Large enough that a commit (one WAL append) is a small share of the time spent
            // reading the batch's files, small enough that a kill loses seconds of work.
            batch: 2000,
            progress_every: Duration::from_secs(5),
            stop_after_batches: None,
        }
    }
}

/// The schema version of an open index.
pub fn version(c: &Connection) -> rusqlite::Result<i64> {
    c.pragma_query_value(None, "user_version", |r| r.get(0))
}

fn set_version(c: &Connection, v: i64) -> rusqlite::Result<()> {
    c.pragma_update(None, "user_version", v)
}

/// Brings the index at `path` (storage root `root`) to [`LATEST_VERSION`].
pub fn run(c: &Connection, path: &Path, root: &Path, opts: &MigrateOptions) -> Result<(), DbError> {
    let found = version(c)?;
    if found > LATEST_VERSION {
        return Err(DbError::TooNew {
            path: path.to_path_buf(),
            found,
            known: LATEST_VERSION,
        });
    }
    if found < 1 {
        let fresh = !has_table(c, "instances")?;
        in_transaction(c, |c| {
            c.execute_batch(include_str!("migrations/0001_initial.sql"))?;
            ensure_attempts_column(c)?;
            set_version(c, 1)
        })?;
        if !fresh {
            info!(
                index = %path.display(),
                "index written before schema versioning: migrated to schema 1"
            );
        }
    }
    if found < 2 {
        migrate_2(c, path, root, opts)?;
    }
    if found < 3 {
        in_transaction(c, |c| {
            c.execute_batch(include_str!("migrations/0003_series_origin.sql"))?;
            set_version(c, 3)
        })?;
    }
    if found < 4 {
        in_transaction(c, |c| {
            c.execute_batch(include_str!("migrations/0004_result_objects.sql"))?;
            set_version(c, 4)
        })?;
    }
    if found < 5 {
        in_transaction(c, |c| {
            c.execute_batch(include_str!("migrations/0005_commitment_mpps.sql"))?;
            set_version(c, 5)
        })?;
    }
    if found < 6 {
        in_transaction(c, |c| {
            c.execute_batch(include_str!("migrations/0006_leases.sql"))?;
            set_version(c, 6)
        })?;
    }
    Ok(())
}

fn has_table(c: &Connection, name: &str) -> rusqlite::Result<bool> {
    c.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists([name])
}

/// Jobs tables made before the start counter lack `attempts`.
fn ensure_attempts_column(c: &Connection) -> rusqlite::Result<()> {
    let present = c
        .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'attempts'")?
        .exists([])?;
    if !present {
        c.execute_batch("ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// Migration 2: the query index, back-filled from the stored files.
fn migrate_2(
    c: &Connection,
    path: &Path,
    root: &Path,
    opts: &MigrateOptions,
) -> Result<(), DbError> {
    if !has_table(c, "backfill")? {
        in_transaction(c, |c| {
            c.execute_batch(include_str!("migrations/0002_query_index.sql"))
        })?;
    }
    let total: u64 =
        c.query_row("SELECT COUNT(*) FROM instances", [], |r| r.get::<_, i64>(0))? as u64;
    let mut cursor: i64 = c.query_row("SELECT last_rowid FROM backfill", [], |r| r.get(0))?;
    let mut done: u64 = c.query_row(
        "SELECT COUNT(*) FROM instances WHERE rowid <= ?1",
        [cursor],
        |r| r.get::<_, i64>(0),
    )? as u64;
    if total > done {
        info!(
            index = %path.display(),
            instances = total,
            already_done = done,
            "migrating the index to schema 2: back-filling the query index from the stored files"
        );
    }
    let started = Instant::now();
    let done_at_start = done;
    let mut last_log = Instant::now();
    let mut batches = 0u64;
    let mut unreadable = 0u64;
    loop {
        let batch: Vec<(i64, String)> = c
            .prepare_cached(
                "SELECT rowid, path FROM instances WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            )?
            .query_map(rusqlite::params![cursor, opts.batch as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let Some(&(last, _)) = batch.last() else {
            break;
        };
        // Reading the files is the slow part: in parallel, outside the transaction.
        let headers: Vec<(i64, Result<header::Header, String>)> = batch
            .par_iter()
            .map(|(rowid, rel)| {
                let file = root.join(rel);
                (
                    *rowid,
                    header::scan_part10(&file)
                        .map(|(h, _)| h)
                        .map_err(|e| format!("{}: {e}", file.display())),
                )
            })
            .collect();
        in_transaction(c, |c| -> Result<(), DbError> {
            for (rowid, h) in &headers {
                match h {
                    Ok(h) => {
                        instances::upsert_study(&mut Conn::Lite(c), h)?;
                        instances::upsert_series(&mut Conn::Lite(c), h)?;
                        c.prepare_cached("UPDATE instances SET document_title = ?2, mime_type = ?3 WHERE rowid = ?1")?
                            .execute(rusqlite::params![rowid, h.query.document_title, h.query.mime_type])?;
                    }
                    Err(why) => {
                        // The path and the walker's reason only: no values of the file.
                        warn!(error = %why, "back-fill: stored file unreadable; its instance stays out of the query index");
                        unreadable += 1;
                    }
                }
            }
            c.prepare_cached("UPDATE backfill SET last_rowid = ?1")?
                .execute([last])?;
            Ok(())
        })?;
        cursor = last;
        done += batch.len() as u64;
        batches += 1;
        if last_log.elapsed() >= opts.progress_every {
            let secs = started.elapsed().as_secs_f64();
            info!(
                done,
                total,
                per_second = format_args!("{:.0}", (done - done_at_start) as f64 / secs.max(1e-9)),
                "back-filling the query index"
            );
            last_log = Instant::now();
        }
        if opts.stop_after_batches.is_some_and(|n| batches >= n) {
            return Err(DbError::MigrationStopped { batches });
        }
    }
    in_transaction(c, |c| {
        c.execute_batch("DROP TABLE backfill")?;
        set_version(c, 2)
    })?;
    if done > 0 {
        let secs = started.elapsed().as_secs_f64();
        info!(
            instances = done,
            unreadable,
            seconds = format_args!("{secs:.1}"),
            "index migrated to schema 2 (query index back-filled)"
        );
    }
    Ok(())
}
