//! The PostgreSQL plumbing of issue 17 (step A): the throw-away cluster of
//! tests/common/pg.rs and the PostgreSQL migration runner (src/db/pg).

mod common;

use std::process::Command;

/// `psql` of the packaged PostgreSQL, for checks independent of the crate's own client.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Each test gets a database of its own, on one cluster.
#[test]
fn fresh_databases_are_separate() {
    let a = common::pg::fresh_db();
    let b = common::pg::fresh_db();
    assert_ne!(a, b);
    psql(&a, "CREATE TABLE only_in_a (x BIGINT)");
    assert_eq!(
        psql(
            &a,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"
        ),
        "1"
    );
    assert_eq!(
        psql(
            &b,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"
        ),
        "0"
    );
    assert_ne!(
        psql(&a, "SELECT current_database()"),
        psql(&b, "SELECT current_database()")
    );
}

/// A client of the crate's own PostgreSQL plumbing.
fn client(url: &str) -> postgres::Client {
    let cfg = m3dnode::db::pg::config(url, "m3dnode/test").unwrap();
    m3dnode::db::pg::connect(&cfg).unwrap()
}

/// Two processes starting at once on a fresh database: both migrations succeed, one applies
/// the baseline, the other waits on the advisory lock and finds the schema done.
#[test]
fn concurrent_migrations_apply_the_schema_once() {
    let url = common::pg::fresh_db();
    let barrier = std::sync::Barrier::new(2);
    let results: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut c = client(&url);
                    barrier.wait();
                    m3dnode::db::pg::migrate::run(&mut c, "test")
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap().unwrap())
            .collect()
    });
    let latest = m3dnode::db::migrate::LATEST_VERSION;
    let mut applied: Vec<_> = results.iter().map(|m| m.applied.clone()).collect();
    applied.sort();
    let every: Vec<i64> = m3dnode::db::pg::migrate::MIGRATIONS
        .iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(applied, vec![vec![], every], "{results:?}");
    // The run that waited saw the other's version; the one that applied saw none.
    let mut from: Vec<_> = results.iter().map(|m| m.from).collect();
    from.sort();
    assert_eq!(from, vec![None, Some(latest)]);

    let mut c = client(&url);
    assert_eq!(
        m3dnode::db::pg::migrate::version(&mut c).unwrap(),
        Some(latest)
    );
    assert_eq!(psql(&url, "SELECT count(*) FROM schema_version"), "1");
    // A third start has nothing to do.
    let again = m3dnode::db::pg::migrate::run(&mut c, "test").unwrap();
    assert_eq!(again.from, Some(latest));
    assert!(again.applied.is_empty());
}

/// A database at a newer version than this binary's is refused, untouched.
#[test]
fn newer_schema_is_refused() {
    let url = common::pg::fresh_db();
    let mut c = client(&url);
    m3dnode::db::pg::migrate::run(&mut c, "test").unwrap();
    psql(&url, "UPDATE schema_version SET version = version + 1");
    let err = m3dnode::db::pg::migrate::run(&mut c, "test").unwrap_err();
    assert!(
        matches!(err, m3dnode::db::pg::PgError::TooNew { found, .. }
            if found == m3dnode::db::migrate::LATEST_VERSION + 1),
        "{err}"
    );
}

/// The PostgreSQL baseline has every table and column of the SQLite schema at the same
/// version, each read from its engine's catalogue, with the type rules of the design (G2,
/// G5): INTEGER is BIGINT, REAL is DOUBLE PRECISION, TEXT is TEXT COLLATE "C", BLOB is BYTEA;
/// and the same nullability outside primary keys.
#[test]
fn baseline_matches_the_sqlite_schema() {
    use std::collections::BTreeMap;
    // (table, column) -> (type, nullable)
    let mut lite = BTreeMap::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.sqlite");
    let c = rusqlite::Connection::open(&path).unwrap();
    m3dnode::db::migrate::run(&c, &path, dir.path(), &Default::default()).unwrap();
    assert_eq!(
        m3dnode::db::migrate::version(&c).unwrap(),
        m3dnode::db::migrate::LATEST_VERSION
    );
    let mut st = c
        .prepare(
            "SELECT m.name, p.name, p.type, p.\"notnull\", p.pk \
             FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, i64>(4)? > 0,
            ))
        })
        .unwrap();
    for row in rows {
        let (table, column, ty, notnull, pk) = row.unwrap();
        let pg_type = match ty.as_str() {
            "INTEGER" => "bigint",
            "REAL" => "double precision",
            "TEXT" => "text",
            "BLOB" => "bytea",
            other => panic!("{table}.{column}: SQLite type {other} has no rule"),
        };
        // Primary keys are NOT NULL on PostgreSQL whatever SQLite says.
        lite.insert((table, column), (pg_type.to_string(), !(notnull || pk), pk));
    }
    assert!(
        lite.len() > 80,
        "too few SQLite columns read: {}",
        lite.len()
    );

    let url = common::pg::fresh_db();
    let mut client = client(&url);
    m3dnode::db::pg::migrate::run(&mut client, "test").unwrap();
    let mut pg = BTreeMap::new();
    for row in client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'YES', \
                    collation_name::text \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name <> 'schema_version'",
            &[],
        )
        .unwrap()
    {
        let (table, column, ty): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let nullable: bool = row.get(3);
        let collation: Option<String> = row.get(4);
        if ty == "text" {
            assert_eq!(
                collation.as_deref(),
                Some("C"),
                "{table}.{column} collation"
            );
        }
        pg.insert((table, column), (ty, nullable));
    }
    // PostgreSQL only (migration 6): the request order of commitment items, which SQLite
    // reads from its rowid.
    assert!(
        pg.remove(&("commitment_items".to_string(), "seq".to_string()))
            .is_some()
    );
    let lite_keys: Vec<_> = lite.keys().collect();
    let pg_keys: Vec<_> = pg.keys().collect();
    assert_eq!(lite_keys, pg_keys, "tables and columns differ");
    for (key, (ty, nullable, pk)) in &lite {
        let (pg_ty, pg_nullable) = &pg[key];
        assert_eq!(pg_ty, ty, "{key:?} type");
        if !pk {
            assert_eq!(pg_nullable, nullable, "{key:?} nullability");
        }
    }
}

/// The pool opens connections up to its size, waits for one given back, times out when none
/// is, reuses a connection's prepared statements, and replaces a connection the server closed.
#[test]
fn pool_checkout_reuse_and_timeout() {
    use m3dnode::db::pg::{PgError, Pool, config};
    use std::time::{Duration, Instant};
    let url = common::pg::fresh_db();
    let pool = Pool::new(
        config(&url, "m3dnode/pool-test").unwrap(),
        2,
        Duration::from_millis(300),
    )
    .unwrap();
    assert_eq!(pool.size(), 2);
    let mut a = pool.get().unwrap();
    let b = pool.get().unwrap();
    let t = Instant::now();
    match pool.get() {
        Err(PgError::PoolTimeout { size: 2, .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a third connection from a pool of 2"),
    }
    assert!(t.elapsed() >= Duration::from_millis(300));

    // The application name reaches the server.
    let name: String = a
        .client()
        .query_one("SELECT current_setting('application_name')", &[])
        .unwrap()
        .get(0);
    assert_eq!(name, "m3dnode/pool-test");
    let pid_a: i32 = a
        .client()
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let s1 = a.prepare_cached("SELECT $1::bigint + 1").unwrap();
    let s2 = a.prepare_cached("SELECT $1::bigint + 1").unwrap();
    let prepared: i64 = a
        .client()
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::bigint + 1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(prepared, 1, "prepared once per connection");
    let n: i64 = a.client().query_one(&s2, &[&1i64]).unwrap().get(0);
    assert_eq!(n, 2);
    let n: i64 = a.client().query_one(&s1, &[&41i64]).unwrap().get(0);
    assert_eq!(n, 42);

    // A waiter gets the connection given back by another thread.
    std::thread::scope(|s| {
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(b);
        });
        let c = pool.get().unwrap();
        drop(c);
    });

    // The server ends `a`'s session: the pool drops it when it comes back and opens another.
    drop(a);
    let mut killer = client(&url);
    killer
        .execute("SELECT pg_terminate_backend($1)", &[&pid_a])
        .unwrap();
    // The client notices only when it next uses the connection: that use fails and marks it
    // closed. Two checkouts (the pool hands out the last one given back) reach it.
    for _ in 0..2 {
        let mut c = pool.get().unwrap();
        let _ = c.client().query_one("SELECT 1", &[]);
    }
    let mut c = pool.get().unwrap();
    let pid: i32 = c
        .client()
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    assert_ne!(pid, pid_a, "a terminated connection was handed out again");
}
