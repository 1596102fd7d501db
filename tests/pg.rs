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
