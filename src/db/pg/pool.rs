//! A small pool of PostgreSQL connections (design §2.2): a mutex-guarded stack of idle
//! connections and a condition variable, opened lazily up to a fixed size. Hand-written rather
//! than `r2d2_postgres`, whose bare `Client` leaves no room for the per-connection statement
//! cache ([`PgConn::prepare_cached`]; the `postgres` crate has none of its own).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{PgError, connect, describe, off_runtime};

/// One connection and its prepared statements.
pub struct PgConn {
    client: postgres::Client,
    stmts: HashMap<&'static str, postgres::Statement>,
}

impl PgConn {
    /// The client, for queries and transactions.
    pub fn client(&mut self) -> &mut postgres::Client {
        &mut self.client
    }

    /// The client and the statement cache, borrowed together (a transaction borrows the
    /// client while statements are prepared into the cache).
    pub fn parts(
        &mut self,
    ) -> (
        &mut postgres::Client,
        &mut HashMap<&'static str, postgres::Statement>,
    ) {
        (&mut self.client, &mut self.stmts)
    }

    /// `sql` prepared once per connection: the statements are `'static` texts, so the text is
    /// the key.
    pub fn prepare_cached(&mut self, sql: &'static str) -> Result<postgres::Statement, PgError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = off_runtime(|| self.client.prepare(sql))?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }
}

struct State {
    idle: Vec<PgConn>,
    /// Connections open, idle or checked out.
    open: usize,
}

/// A fixed-size pool. Connections are opened on demand; one that the server or the network
/// closed is dropped when it comes back or is found idle, and replaced on the next demand.
pub struct Pool {
    config: postgres::Config,
    size: usize,
    checkout_timeout: Duration,
    state: Mutex<State>,
    freed: Condvar,
}

impl Pool {
    /// A pool of up to `size` (at least 1) connections to `config`; [`Pool::get`] waits up to
    /// `checkout_timeout` for one. One connection is opened at once, so that a wrong URL or an
    /// unreachable server fails here, at start-up, and not at the first instance received.
    pub fn new(
        config: postgres::Config,
        size: usize,
        checkout_timeout: Duration,
    ) -> Result<Pool, PgError> {
        let first = PgConn {
            client: connect(&config)?,
            stmts: HashMap::new(),
        };
        Ok(Pool {
            config,
            size: size.max(1),
            checkout_timeout,
            state: Mutex::new(State {
                idle: vec![first],
                open: 1,
            }),
            freed: Condvar::new(),
        })
    }

    /// The most connections this pool opens.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Where the pool connects, without credentials.
    pub fn describe(&self) -> String {
        describe(&self.config)
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, PgError> {
        self.state.lock().map_err(|_| PgError::Poisoned)
    }

    /// A connection: an idle one, a new one while fewer than the size are open, else the next
    /// one given back within the checkout timeout ([`PgError::PoolTimeout`] after it).
    pub fn get(&self) -> Result<Pooled<'_>, PgError> {
        let deadline = Instant::now() + self.checkout_timeout;
        let mut st = self.lock()?;
        loop {
            while let Some(conn) = st.idle.pop() {
                if conn.client.is_closed() {
                    st.open -= 1;
                    off_runtime(move || drop(conn));
                    continue;
                }
                return Ok(Pooled {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if st.open < self.size {
                st.open += 1;
                drop(st);
                return match connect(&self.config) {
                    Ok(client) => Ok(Pooled {
                        pool: self,
                        conn: Some(PgConn {
                            client,
                            stmts: HashMap::new(),
                        }),
                    }),
                    Err(e) => {
                        let mut st = self.lock()?;
                        st.open -= 1;
                        drop(st);
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PgError::PoolTimeout {
                    waited: self.checkout_timeout,
                    size: self.size,
                });
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .map_err(|_| PgError::Poisoned)?
                .0;
        }
    }

    fn give_back(&self, conn: PgConn) {
        let Ok(mut st) = self.state.lock() else {
            off_runtime(move || drop(conn));
            return;
        };
        if conn.client.is_closed() {
            st.open -= 1;
            drop(st);
            off_runtime(move || drop(conn));
        } else {
            st.idle.push(conn);
            drop(st);
        }
        self.freed.notify_one();
    }
}

impl Drop for Pool {
    /// Each connection owns a runtime, which must not be dropped on an async runtime's thread.
    fn drop(&mut self) {
        let idle = match self.state.get_mut() {
            Ok(st) => std::mem::take(&mut st.idle),
            Err(poisoned) => std::mem::take(&mut poisoned.into_inner().idle),
        };
        off_runtime(move || drop(idle));
    }
}

/// A checked-out connection, given back to the pool when dropped.
pub struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<PgConn>,
}

impl Deref for Pooled<'_> {
    type Target = PgConn;
    fn deref(&self) -> &PgConn {
        // Some until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut PgConn {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}
