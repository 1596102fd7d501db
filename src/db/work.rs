//! `series_work`: the series the node has seen, for completion tracking and routing (the
//! series tracker's table; called `series` before schema 2).

use super::sql::{Stmt, stmt};
use super::{Db, DbError, SeriesState, now};

/// What the tracker knows of a series from an earlier run or association.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesWork {
    /// The rule that routed it (`None`: no rule matched).
    pub rule: Option<String>,
    /// Where it stands.
    pub state: SeriesState,
    /// Instances expected (rule or Images in Acquisition).
    pub expected: Option<i64>,
}

/// A series seen for the first time.
#[derive(Debug, Clone)]
pub struct NewSeriesWork<'a> {
    /// Series Instance UID.
    pub series_instance_uid: &'a str,
    /// Study Instance UID.
    pub study_instance_uid: &'a str,
    /// Calling AE title of the association that brought its first instance.
    pub calling_ae: &'a str,
    /// The rule that routed it (`None`: unrouted).
    pub rule: Option<&'a str>,
    /// Instances expected.
    pub expected: Option<i64>,
}

static RECEIVING: Stmt = stmt!(
    "SELECT series_instance_uid, rule, expected FROM series_work
     WHERE state = ?1 AND rule IS NOT NULL"
);
static GET: Stmt =
    stmt!("SELECT rule, state, expected FROM series_work WHERE series_instance_uid = ?1");
static ADD: Stmt = stmt!(
    "INSERT INTO series_work (series_instance_uid, study_instance_uid, calling_ae, rule, state, expected, first_at, last_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
     ON CONFLICT (series_instance_uid) DO NOTHING"
);
static REOPEN: Stmt =
    stmt!("UPDATE series_work SET state = ?2, last_at = ?3 WHERE series_instance_uid = ?1");
static FORGET: Stmt = stmt!("DELETE FROM series_work WHERE series_instance_uid = ?1");

impl Db {
    /// Series still receiving that a rule routed: (series UID, rule, expected).
    pub fn receiving_series(&self) -> Result<Vec<(String, String, Option<i64>)>, DbError> {
        self.run(|c| {
            c.all(&RECEIVING, &[&SeriesState::Receiving], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
        })
    }

    /// The tracking row of a series, if it has one.
    pub fn series_work(&self, series_instance_uid: &str) -> Result<Option<SeriesWork>, DbError> {
        self.run(|c| {
            c.opt(&GET, &[&series_instance_uid], |r| {
                Ok(SeriesWork {
                    rule: r.get(0)?,
                    state: r.get(1)?,
                    expected: r.get(2)?,
                })
            })
        })
    }

    /// Records a new series: `receiving` when a rule routed it, else `unrouted`. False when
    /// the series has a row already: another receiver of a shared index routed it first.
    pub fn add_series_work(&self, s: &NewSeriesWork<'_>) -> Result<bool, DbError> {
        let state = if s.rule.is_some() {
            SeriesState::Receiving
        } else {
            SeriesState::Unrouted
        };
        self.run(|c| {
            c.exec(
                &ADD,
                &[
                    &s.series_instance_uid,
                    &s.study_instance_uid,
                    &s.calling_ae,
                    &s.rule,
                    &state,
                    &s.expected,
                    &now(),
                ],
            )
            .map(|n| n > 0)
        })
    }

    /// A processed series receives again (a late instance, `late_instances = rebuild`).
    pub fn reopen_series(&self, series_instance_uid: &str) -> Result<(), DbError> {
        self.run(|c| {
            c.exec(
                &REOPEN,
                &[&series_instance_uid, &SeriesState::Receiving, &now()],
            )
            .map(drop)
        })
    }

    /// Forgets a series' tracking row (all its instances were dropped before processing).
    pub fn forget_series_work(&self, series_instance_uid: &str) -> Result<(), DbError> {
        self.run(|c| c.exec(&FORGET, &[&series_instance_uid]).map(drop))
    }
}
