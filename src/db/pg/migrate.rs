//! The numbered migrations of a PostgreSQL index (design §2.4).
//!
//! Versions are shared with the SQLite index ([`LATEST_VERSION`]); the files are per dialect.
//! No PostgreSQL index predates schema 5, so the first file is a baseline,
//! `migrations/pg/0005_baseline.sql`: every table of SQLite schema 5 in PostgreSQL types.
//! Every later migration is written twice, with the same number, once per dialect.
//!
//! The version is the one row of table `schema_version`. All pending migrations run in one
//! transaction that first takes a transaction-scoped advisory lock: PostgreSQL's DDL is
//! transactional, so a crash leaves the previous version, and a second process starting at the
//! same moment waits on the lock, then finds the new version and has nothing to do.

use super::PgError;
use crate::db::migrate::LATEST_VERSION;

/// The advisory lock key of every m3dnode migration: `m3dnode` in ASCII. It is global to the
/// server (not to one database): harmless, migrations are rare and short.
pub const LOCK_KEY: i64 = 0x006d_3364_6e6f_6465;

/// The PostgreSQL migrations, ascending: (version reached, SQL).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (5, include_str!("../migrations/pg/0005_baseline.sql")),
    (6, include_str!("../migrations/pg/0006_leases.sql")),
];

/// What [`run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The version found: `None` for a database without m3dnode's tables.
    pub from: Option<i64>,
    /// The versions of the migrations applied, ascending (empty: already up to date).
    pub applied: Vec<i64>,
}

/// The schema version of a database, `None` when it has no m3dnode schema.
pub fn version(client: &mut postgres::Client) -> Result<Option<i64>, PgError> {
    super::off_runtime(|| {
        let mut tx = client.transaction()?;
        let v = read_version(&mut tx, "")?;
        tx.commit()?;
        Ok(v)
    })
}

fn read_version(tx: &mut postgres::Transaction<'_>, index: &str) -> Result<Option<i64>, PgError> {
    let present: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
        .get(0);
    if !present {
        return Ok(None);
    }
    let rows = tx.query("SELECT version FROM schema_version", &[])?;
    match rows.as_slice() {
        [] => Ok(None),
        [row] => Ok(Some(row.try_get(0)?)),
        more => Err(PgError::BadVersionTable {
            index: index.to_string(),
            rows: more.len(),
        }),
    }
}

/// Brings the database of `client` to [`LATEST_VERSION`], under the advisory lock.
/// `index` names it in errors ([`super::describe`]).
pub fn run(client: &mut postgres::Client, index: &str) -> Result<Migrated, PgError> {
    super::off_runtime(|| {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
        let from = read_version(&mut tx, index)?;
        if let Some(found) = from
            && found > LATEST_VERSION
        {
            return Err(PgError::TooNew {
                index: index.to_string(),
                found,
                known: LATEST_VERSION,
            });
        }
        let mut applied = Vec::new();
        for &(v, sql) in MIGRATIONS {
            if from.is_some_and(|f| v <= f) {
                continue;
            }
            tx.batch_execute(sql)?;
            applied.push(v);
        }
        if !applied.is_empty() {
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL); \
                 DELETE FROM schema_version",
            )?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&LATEST_VERSION],
            )?;
        }
        tx.commit()?;
        Ok(Migrated { from, applied })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PostgreSQL files end at the version the SQLite side reaches, ascending, and every one
    /// after the baseline has a SQLite twin with the same number.
    #[test]
    fn migrations_match_the_sqlite_numbers() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(versions.last(), Some(&LATEST_VERSION));
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/db/migrations");
        let sqlite: Vec<i64> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.ends_with(".sql")
                    .then(|| name[..4].parse::<i64>().unwrap())
            })
            .collect();
        assert_eq!(sqlite.iter().max(), Some(&LATEST_VERSION));
        for v in &versions[1..] {
            assert!(sqlite.contains(v), "pg migration {v} has no SQLite twin");
        }
        let pg: Vec<String> = std::fs::read_dir(dir.join("pg"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            pg.len(),
            MIGRATIONS.len(),
            "a pg/*.sql file not in MIGRATIONS: {pg:?}"
        );
    }
}
