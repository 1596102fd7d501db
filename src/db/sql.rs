//! The neutral statement layer of the index (docs/issue-17-design.md §2.3): one typed method
//! per operation in the modules beside this one, written once against [`Conn`], which runs
//! either on a SQLite connection or on a pooled PostgreSQL connection.
//!
//! A statement ([`Stmt`]) is one text when both dialects accept it, or one text per dialect
//! where they differ (the dialect traps are listed in the design, §1: `IS NOT` versus
//! `IS DISTINCT FROM`, NULL ordering, untyped parameters, `INSERT OR ...`). Texts are written
//! with SQLite's numbered placeholders `?N`; the PostgreSQL text is rewritten to `$N` once and
//! kept, so the per-connection statement cache can key on a `'static` text.
//!
//! Parameters ([`Param`]) are values both drivers can bind. Integers are always `i64`: a
//! PostgreSQL `BIGINT` refuses an `i32` bind at run time, which SQLite would accept silently.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::DbError;

/// A statement: its SQLite text and, where PostgreSQL needs another, its PostgreSQL text.
pub struct Stmt {
    lite: &'static str,
    pg: Option<&'static str>,
    pg_text: OnceLock<String>,
}

impl Stmt {
    /// A statement (see [`stmt!`]).
    pub const fn new(lite: &'static str, pg: Option<&'static str>) -> Stmt {
        Stmt {
            lite,
            pg,
            pg_text: OnceLock::new(),
        }
    }

    /// The SQLite text.
    pub fn lite(&self) -> &'static str {
        self.lite
    }

    /// The PostgreSQL text, placeholders rewritten (once).
    pub fn pg(&'static self) -> &'static str {
        self.pg_text
            .get_or_init(|| placeholders_to_pg(self.pg.unwrap_or(self.lite)))
            .as_str()
    }
}

/// `static NAME: Stmt = stmt!("text")` for a text both dialects run, or
/// `stmt!(lite: "...", pg: "...")` where they differ. Texts may be `concat!`s.
macro_rules! stmt {
    (lite: $a:expr, pg: $b:expr $(,)?) => {
        $crate::db::sql::Stmt::new($a, Some($b))
    };
    ($both:expr) => {
        $crate::db::sql::Stmt::new($both, None)
    };
}
pub(crate) use stmt;

/// Rewrites SQLite's `?N` into PostgreSQL's `$N`, outside quoted text and identifiers.
pub fn placeholders_to_pg(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        match quote {
            Some(q) => {
                out.push(ch);
                if ch == q {
                    quote = None;
                }
            }
            None => match ch {
                '\'' | '"' => {
                    quote = Some(ch);
                    out.push(ch);
                }
                '?' if chars.peek().is_some_and(|c| c.is_ascii_digit()) => out.push('$'),
                _ => out.push(ch),
            },
        }
    }
    out
}

/// A value both drivers bind.
pub trait Param: Sync {
    /// For rusqlite.
    fn lite(&self) -> &dyn rusqlite::ToSql;
    /// For postgres.
    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync);
}

impl<T: rusqlite::ToSql + postgres::types::ToSql + Sync> Param for T {
    fn lite(&self) -> &dyn rusqlite::ToSql {
        self
    }
    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync) {
        self
    }
}

/// A type both drivers read from a column.
pub trait Col: rusqlite::types::FromSql + for<'b> postgres::types::FromSql<'b> {}
impl<T: rusqlite::types::FromSql + for<'b> postgres::types::FromSql<'b>> Col for T {}

/// One result row of either backend.
pub enum Row<'r> {
    /// SQLite.
    Lite(&'r rusqlite::Row<'r>),
    /// PostgreSQL.
    Pg(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `i` (0-based).
    pub fn get<T: Col>(&self, i: usize) -> Result<T, DbError> {
        match self {
            Row::Lite(r) => Ok(r.get(i)?),
            Row::Pg(r) => Ok(r.try_get(i)?),
        }
    }
}

/// A PostgreSQL client in autocommit mode or in a transaction.
pub enum PgClient<'a> {
    /// Each statement commits by itself.
    Client(&'a mut postgres::Client),
    /// Statements run in this transaction.
    Tx(postgres::Transaction<'a>),
}

/// A connection (or transaction) of either backend.
pub enum Conn<'a> {
    /// SQLite: the one connection (its transaction, if any, was begun by the caller).
    Lite(&'a rusqlite::Connection),
    /// PostgreSQL: a pooled connection and its statement cache.
    Pg {
        /// The client or its open transaction.
        client: PgClient<'a>,
        /// Statements prepared on this connection, by text.
        stmts: &'a mut HashMap<&'static str, postgres::Statement>,
    },
}

macro_rules! pg_call {
    ($client:expr, $method:ident($($arg:expr),*)) => {
        match $client {
            PgClient::Client(c) => c.$method($($arg),*),
            PgClient::Tx(t) => t.$method($($arg),*),
        }
    };
}

fn lite_params<'p>(p: &'p [&'p dyn Param]) -> impl Iterator<Item = &'p dyn rusqlite::ToSql> {
    p.iter().map(|x| x.lite())
}

fn pg_params<'p>(p: &'p [&'p dyn Param]) -> Vec<&'p (dyn postgres::types::ToSql + Sync)> {
    p.iter().map(|x| x.pg()).collect()
}

impl Conn<'_> {
    fn prepared(
        client: &mut PgClient<'_>,
        stmts: &mut HashMap<&'static str, postgres::Statement>,
        s: &'static Stmt,
    ) -> Result<postgres::Statement, DbError> {
        let text = s.pg();
        if let Some(st) = stmts.get(text) {
            return Ok(st.clone());
        }
        let st = pg_call!(client, prepare(text))?;
        stmts.insert(text, st.clone());
        Ok(st)
    }

    /// Runs a statement that returns no rows; the rows changed.
    pub fn exec(&mut self, s: &'static Stmt, p: &[&dyn Param]) -> Result<u64, DbError> {
        match self {
            Conn::Lite(c) => {
                Ok(c.prepare_cached(s.lite())?
                    .execute(rusqlite::params_from_iter(lite_params(p)))? as u64)
            }
            Conn::Pg { client, stmts } => {
                let st = Self::prepared(client, stmts, s)?;
                let params = pg_params(p);
                Ok(pg_call!(client, execute(&st, &params))?)
            }
        }
    }

    /// Every row, each through `f`.
    pub fn all<T>(
        &mut self,
        s: &'static Stmt,
        p: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        match self {
            Conn::Lite(c) => {
                let mut st = c.prepare_cached(s.lite())?;
                let mut rows = st.query(rusqlite::params_from_iter(lite_params(p)))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Lite(r))?);
                }
                Ok(out)
            }
            Conn::Pg { client, stmts } => {
                let st = Self::prepared(client, stmts, s)?;
                let params = pg_params(p);
                let rows = pg_call!(client, query(&st, &params))?;
                rows.iter().map(|r| f(&Row::Pg(r))).collect()
            }
        }
    }

    /// The first row through `f`, if there is one.
    pub fn opt<T>(
        &mut self,
        s: &'static Stmt,
        p: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        match self {
            Conn::Lite(c) => {
                let mut st = c.prepare_cached(s.lite())?;
                let mut rows = st.query(rusqlite::params_from_iter(lite_params(p)))?;
                match rows.next()? {
                    Some(r) => Ok(Some(f(&Row::Lite(r))?)),
                    None => Ok(None),
                }
            }
            Conn::Pg { client, stmts } => {
                let st = Self::prepared(client, stmts, s)?;
                let params = pg_params(p);
                let row = pg_call!(client, query_opt(&st, &params))?;
                row.as_ref().map(|r| f(&Row::Pg(r))).transpose()
            }
        }
    }

    /// The first row through `f`; no row is an error ([`DbError::NoRow`]).
    pub fn one<T>(
        &mut self,
        s: &'static Stmt,
        p: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.opt(s, p, f)?.ok_or(DbError::NoRow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes_only() {
        assert_eq!(
            placeholders_to_pg("SELECT ?1, '?2', \"a?3\", ?12 || '?' WHERE x = ?2"),
            "SELECT $1, '?2', \"a?3\", $12 || '?' WHERE x = $2"
        );
        assert_eq!(placeholders_to_pg("SELECT $1::bigint"), "SELECT $1::bigint");
    }
}
