//! The states stored in the `jobs`, `series_work` and `outbox` tables, as enums.
//!
//! Why enums and not string literals: the literals used to be spelled out in four modules,
//! and a misspelt state in one `UPDATE` would have stranded its rows silently. The text stored
//! is unchanged from the release before the enums (`'queued'`, `'pending'`, ...), so that a
//! storage written by it reads back without a data migration; an unknown text in the column is
//! a read error naming the column's type, never a silent default.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// Declares a state enum with its stored text, `Display` (padded like `str`), `ToSql` and
/// `FromSql`.
macro_rules! state_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The text stored in the table.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The state stored as `text`, if it is one.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // `pad`, so that `{:<8}` in listings aligns as it did with strings.
                f.pad(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                $name::parse(text).ok_or_else(|| {
                    FromSqlError::Other(
                        format!("unknown {} {:?}", stringify!($name), text).into(),
                    )
                })
            }
        }

        impl postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &postgres::types::Type,
                out: &mut postgres::types::private::BytesMut,
            ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
                postgres::types::ToSql::to_sql(&self.as_str(), ty, out)
            }

            fn accepts(ty: &postgres::types::Type) -> bool {
                <&str as postgres::types::ToSql>::accepts(ty)
            }

            postgres::types::to_sql_checked!();
        }

        impl<'a> postgres::types::FromSql<'a> for $name {
            fn from_sql(
                ty: &postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let text = <&str as postgres::types::FromSql>::from_sql(ty, raw)?;
                $name::parse(text).ok_or_else(|| {
                    format!("unknown {} {:?}", stringify!($name), text).into()
                })
            }

            fn accepts(ty: &postgres::types::Type) -> bool {
                <&str as postgres::types::FromSql>::accepts(ty)
            }
        }
    };
}

state_enum! {
    /// A reconstruction job: `queued -> running -> done | failed` (a running job interrupted by
    /// a stop goes back to `queued`).
    JobState {
        /// Waiting for a worker.
        Queued = "queued",
        /// A worker runs it (counted in `attempts` before it started).
        Running = "running",
        /// Its result is stored and its deliveries are queued.
        Done = "done",
        /// It failed; `error` says why.
        Failed = "failed",
    }
}

state_enum! {
    /// Where a received series stands (`series_work`): still `receiving`, a job was queued
    /// for what arrived (`processed`), no rule matched it (`unrouted`), or its MPPS step was
    /// DISCONTINUED under a rule with `on_discontinued = "skip"` (`skipped`).
    SeriesState {
        /// Instances are arriving; completion is pending.
        Receiving = "receiving",
        /// A job was queued for the instances so far.
        Processed = "processed",
        /// No rule matched: stored, not processed.
        Unrouted = "unrouted",
        /// Its MPPS step was discontinued and its rule says skip: stored, not processed.
        Skipped = "skipped",
    }
}

state_enum! {
    /// A Modality Performed Procedure Step (`mpps.status`): the Performed Procedure Step
    /// Status (0040,0252) as the scanner sent it, `IN PROGRESS -> COMPLETED | DISCONTINUED`.
    MppsStatus {
        /// Created by N-CREATE; the acquisition runs.
        InProgress = "IN PROGRESS",
        /// The acquisition ended; the Performed Series Sequence lists what it made.
        Completed = "COMPLETED",
        /// The acquisition was stopped before the end.
        Discontinued = "DISCONTINUED",
    }
}

impl MppsStatus {
    /// A final status: the step may no longer be updated (PS3.4 F.7.2.2, Error ID A710).
    pub fn is_final(self) -> bool {
        self != MppsStatus::InProgress
    }
}

state_enum! {
    /// One delivery of a result to a destination: `pending -> sent | failed`.
    DeliveryState {
        /// To be sent (now or at `next_attempt_at`).
        Pending = "pending",
        /// The destination confirmed it.
        Sent = "sent",
        /// Given up (deadline or permanent refusal) until `m3dnode retry`.
        Failed = "failed",
    }
}

state_enum! {
    /// A Storage Commitment transaction (`commitments`): `waiting` for listed instances,
    /// `reporting` once decided (its N-EVENT-REPORT not yet confirmed), then `reported`, or
    /// `undeliverable` when every attempt failed (the scanner keeps its copy).
    CommitmentState {
        /// Some listed instances are not stored yet; the deadline is `deadline_at`.
        Waiting = "waiting",
        /// Decided (`event_type`, failure reasons set); the report is being sent.
        Reporting = "reporting",
        /// The requester confirmed the N-EVENT-REPORT.
        Reported = "reported",
        /// Every attempt failed, or the requester has no `[[peers]]` address.
        Undeliverable = "undeliverable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// Every state goes through a column and comes back, as the text the release before the
    /// enums wrote.
    #[test]
    fn states_round_trip_through_sqlite_as_their_old_text() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (s TEXT)").unwrap();
        for s in JobState::ALL {
            c.execute("DELETE FROM t", []).unwrap();
            c.execute("INSERT INTO t VALUES (?1)", [s]).unwrap();
            let back: JobState = c.query_row("SELECT s FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(back, *s);
            let text: String = c.query_row("SELECT s FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(text, s.as_str());
        }
        for s in SeriesState::ALL {
            c.execute("DELETE FROM t", []).unwrap();
            c.execute("INSERT INTO t VALUES (?1)", [s]).unwrap();
            let back: SeriesState = c.query_row("SELECT s FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(back, *s);
        }
        for s in DeliveryState::ALL {
            c.execute("DELETE FROM t", []).unwrap();
            c.execute("INSERT INTO t VALUES (?1)", [s]).unwrap();
            let back: DeliveryState = c.query_row("SELECT s FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(back, *s);
        }
        let old: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(old, ["queued", "running", "done", "failed"]);
        let old: Vec<&str> = SeriesState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(old, ["receiving", "processed", "unrouted", "skipped"]);
        for s in MppsStatus::ALL {
            c.execute("DELETE FROM t", []).unwrap();
            c.execute("INSERT INTO t VALUES (?1)", [s]).unwrap();
            let back: MppsStatus = c.query_row("SELECT s FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(back, *s);
        }
        assert_eq!(
            MppsStatus::parse("IN PROGRESS"),
            Some(MppsStatus::InProgress)
        );
        let old: Vec<&str> = DeliveryState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(old, ["pending", "sent", "failed"]);
    }

    #[test]
    fn an_unknown_state_is_a_read_error_not_a_default() {
        let c = Connection::open_in_memory().unwrap();
        let r: rusqlite::Result<JobState> = c.query_row("SELECT 'paused'", [], |r| r.get(0));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("unknown JobState \"paused\""), "{e}");
        let r: rusqlite::Result<DeliveryState> = c.query_row("SELECT 3", [], |r| r.get(0));
        assert!(r.is_err());
    }

    #[test]
    fn states_pad_like_strings_in_listings() {
        assert_eq!(format!("[{:<8}]", JobState::Done), "[done    ]");
        assert_eq!(format!("{}", DeliveryState::Sent), "sent");
    }
}
