//! The PostgreSQL side of the index (issue 17; docs/issue-17-design.md §2.2-2.4), step A:
//! connecting ([`config`], [`connect`]), a small connection pool ([`Pool`]), running blocking
//! client calls safely from async code ([`off_runtime`]) and the migration runner
//! ([`migrate`]). Nothing in the node uses it yet: the SQLite index stays the default and the
//! only one wired in until the typed statements are ported (design §5, pieces B and C).
//!
//! The client is the synchronous `postgres` crate without TLS. Each of its connections drives
//! itself on a current-thread runtime of its own, so it needs no runtime of the node's, but it
//! panics when called (or dropped) on a thread that runs async tasks; [`off_runtime`] is the one
//! way in.

pub mod migrate;
mod pool;

use std::str::FromStr;
use std::time::Duration;

pub use pool::{PgConn, Pool, Pooled};

/// How long a connection attempt may take when the URL names no `connect_timeout`: a database
/// host that is down should fail a start-up within seconds, not the TCP default of minutes.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// PostgreSQL index failures.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The `[index] url` is not a `postgres://` or `postgresql://` URL. (The text is not
    /// repeated: it may hold a password.)
    #[error("[index] url is not a postgres:// or postgresql:// URL")]
    NotPostgresUrl,
    /// The URL did not parse.
    #[error("[index] url: {0}")]
    BadUrl(#[source] postgres::Error),
    /// The server could not be reached or refused the connection. The reason is text, not a
    /// source, so that the one line a start-up failure prints says it once.
    #[error("cannot connect to the PostgreSQL index {index}: {reason}")]
    Connect {
        /// Where the database is, without credentials ([`describe`]).
        index: String,
        /// What the client said, with its causes.
        reason: String,
    },
    /// The server or the connection refused an operation.
    #[error("PostgreSQL index: {0}")]
    Postgres(#[from] postgres::Error),
    /// Every pooled connection stayed busy for the whole checkout timeout.
    #[error("no PostgreSQL connection came free within {waited:?} (pool of {size})")]
    PoolTimeout {
        /// The checkout timeout.
        waited: Duration,
        /// Connections in the pool.
        size: usize,
    },
    /// The pool's mutex was poisoned by a panic elsewhere.
    #[error("PostgreSQL connection pool lock poisoned")]
    Poisoned,
    /// The database was migrated by a newer release: its tables may mean things this binary
    /// does not know, so it is not touched.
    #[error(
        "PostgreSQL index {index} has schema version {found}, newer than the {known} this \
         m3dnode knows; stop every process and run the release that wrote it (or a newer one)"
    )]
    TooNew {
        /// Where the database is, without credentials ([`describe`]).
        index: String,
        /// Its `schema_version`.
        found: i64,
        /// [`crate::db::migrate::LATEST_VERSION`].
        known: i64,
    },
    /// `schema_version` has other than one row: something else wrote it.
    #[error("PostgreSQL index {index}: table schema_version has {rows} rows, not one")]
    BadVersionTable {
        /// Where the database is, without credentials ([`describe`]).
        index: String,
        /// Its rows.
        rows: usize,
    },
}

/// The client configuration of an `[index] url`, with this process's `application_name`
/// (shown in `pg_stat_activity`, so an operator can tell the node's processes apart) and a
/// [`DEFAULT_CONNECT_TIMEOUT`] unless the URL sets one. TCP keepalives are on, so a connection
/// to a vanished server is noticed while it idles in the pool.
pub fn config(url: &str, application_name: &str) -> Result<postgres::Config, PgError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(PgError::NotPostgresUrl);
    }
    let mut cfg = postgres::Config::from_str(url).map_err(PgError::BadUrl)?;
    cfg.application_name(application_name);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    cfg.keepalives(true);
    Ok(cfg)
}

/// Where a configuration points, for logs and errors: `host:port/dbname`, never the user's
/// password.
pub fn describe(cfg: &postgres::Config) -> String {
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match cfg.get_ports().get(i).or(cfg.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "{}/{}",
        hosts.join(","),
        cfg.get_dbname().unwrap_or_default()
    )
}

/// Opens one connection (no TLS), off any async runtime.
pub fn connect(cfg: &postgres::Config) -> Result<postgres::Client, PgError> {
    off_runtime(|| cfg.connect(postgres::NoTls)).map_err(|e| PgError::Connect {
        index: describe(cfg),
        reason: error_chain(&e),
    })
}

/// An error and its sources in one line ("error connecting to server: Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// Runs `f`, which blocks on a `postgres` client, where that is allowed: directly when this
/// thread runs no tokio runtime; through `block_in_place` on a multi-thread runtime's worker
/// (the worker gives its tasks to others while it blocks); on a scoped thread of its own under
/// a current-thread runtime, which cannot give its thread away. The client would panic
/// ("Cannot start a runtime from within a runtime") on a runtime's thread otherwise.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Err(_) => f(),
        Ok(h) => match h.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
            _ => std::thread::scope(|s| match s.spawn(f).join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_accepts_postgres_urls_only() {
        assert!(matches!(
            config("host=db user=m3d", "m3dnode/test"),
            Err(PgError::NotPostgresUrl)
        ));
        assert!(matches!(
            config("mysql://db/m3d", "m3dnode/test"),
            Err(PgError::NotPostgresUrl)
        ));
        assert!(matches!(
            config("postgres://db:notaport/m3d", "m3dnode/test"),
            Err(PgError::BadUrl(_))
        ));
        let cfg = config(
            "postgresql://m3d:secret@db.example:5433/index",
            "m3dnode/rx1",
        )
        .unwrap();
        assert_eq!(cfg.get_application_name(), Some("m3dnode/rx1"));
        assert_eq!(cfg.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(cfg.get_user(), Some("m3d"));
        assert_eq!(describe(&cfg), "db.example:5433/index");
        assert!(!describe(&cfg).contains("secret"));
    }

    #[test]
    fn config_keeps_a_connect_timeout_from_the_url() {
        let cfg = config("postgres://db/m3d?connect_timeout=3", "m3dnode/test").unwrap();
        assert_eq!(cfg.get_connect_timeout(), Some(&Duration::from_secs(3)));
    }

    #[test]
    fn off_runtime_runs_on_every_kind_of_thread() {
        let on_thread = |label: &'static str| {
            off_runtime(move || {
                // What the client's calls do: block on a runtime of their own.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async { label })
            })
        };
        assert_eq!(on_thread("plain"), "plain");
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert_eq!(multi.block_on(async { on_thread("multi") }), "multi");
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { on_thread("current") }), "current");
    }
}
