//! `[index]`: where the index lives, and who this process is on a shared one.
//!
//! Empty `url` (the default) keeps the embedded SQLite index in the storage root, for one node
//! on one machine. A `postgres://` url makes the index and the job queue a shared PostgreSQL
//! database, so that several processes (`serve` receivers, `worker`s) on several machines
//! share the storage, the series and the work; each then needs a name of its own
//! (`instance`) and holds its jobs and deliveries under leases of `lease_seconds`.

use serde::Deserialize;

/// `[index]` as written in the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// `""`: `<node.storage>/index.sqlite`; `postgres://user@host:port/db`: a shared
    /// PostgreSQL index. May hold a password; it is never logged.
    pub url: String,
    /// PostgreSQL connections per process.
    pub pool: usize,
    /// How long a job or delivery stays with a process that stopped renewing its hold (the
    /// holder renews every third of it). A dead process's work is taken over after this.
    pub lease_seconds: f64,
    /// This process's name among those sharing the index (default: the host name). Two
    /// processes with one name would share a temp directory and a lock: the second is refused.
    pub instance: String,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            url: String::new(),
            pool: 6,
            lease_seconds: 60.0,
            instance: String::new(),
        }
    }
}

/// What is wrong with `[index]`: (key, reason).
pub type Invalid = (&'static str, String);

impl IndexConfig {
    /// Whether the index is a shared PostgreSQL database.
    pub fn is_shared(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks the section. The url is parsed (not connected to) so that a typo is named at
    /// load time, without echoing the url (it may hold a password).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.is_shared() {
            if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
                return Err((
                    "index.url",
                    "must be empty (SQLite in node.storage) or start with postgres://".into(),
                ));
            }
            if let Err(e) = self.url.parse::<postgres::Config>() {
                return Err(("index.url", format!("is not a PostgreSQL url: {e}")));
            }
        }
        if !(1..=64).contains(&self.pool) {
            return Err(("index.pool", "must be 1 to 64 connections".into()));
        }
        if !(self.lease_seconds.is_finite() && (3.0..=3600.0).contains(&self.lease_seconds)) {
            return Err(("index.lease_seconds", "must be 3 to 3600 seconds".into()));
        }
        if !self.instance.is_empty() && !valid_instance(&self.instance) {
            return Err((
                "index.instance",
                "must be 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit".into(),
            ));
        }
        Ok(())
    }

    /// The instance name: as configured, else the host name (cleaned to the allowed
    /// characters), else `m3dnode`.
    pub fn instance_name(&self) -> String {
        if !self.instance.is_empty() {
            return self.instance.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let clean: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(64)
            .collect();
        if !valid_instance(&clean) {
            "m3dnode".into()
        } else {
            clean
        }
    }

    /// This process's owner id in lease columns: `<instance>:<pid>:<start ms>`. The start time
    /// tells a restarted process from its dead predecessor under the same PID.
    pub fn owner(&self) -> String {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{}:{}:{}", self.instance_name(), std::process::id(), ms)
    }
}

/// Starts with a letter or digit: the name is a directory under `tmp/`, so `.` and `..`
/// (the temp root, the storage root) must not be names.
fn valid_instance(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_sqlite_and_validates() {
        let c = IndexConfig::default();
        assert!(!c.is_shared());
        assert_eq!(c.validate(), Ok(()));
        assert!(valid_instance(&c.instance_name()));
        let owner = c.owner();
        assert_eq!(owner.split(':').count(), 3, "{owner}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let bad = |f: fn(&mut IndexConfig)| {
            let mut c = IndexConfig::default();
            f(&mut c);
            c.validate().map_err(|(k, _)| k)
        };
        assert_eq!(bad(|c| c.url = "mysql://x/y".into()), Err("index.url"));
        assert_eq!(
            bad(|c| c.url = "postgres://u@h:notaport/d".into()),
            Err("index.url")
        );
        assert_eq!(bad(|c| c.pool = 0), Err("index.pool"));
        assert_eq!(bad(|c| c.lease_seconds = 1.0), Err("index.lease_seconds"));
        assert_eq!(
            bad(|c| c.lease_seconds = f64::NAN),
            Err("index.lease_seconds")
        );
        assert_eq!(bad(|c| c.instance = "a/b".into()), Err("index.instance"));
        assert_eq!(bad(|c| c.instance = "..".into()), Err("index.instance"));
        assert_eq!(bad(|c| c.instance = ".".into()), Err("index.instance"));
        assert_eq!(bad(|c| c.instance = "-rx".into()), Err("index.instance"));
        assert_eq!(bad(|c| c.instance = "x".repeat(65)), Err("index.instance"));
        assert_eq!(
            bad(|c| {
                c.url = "postgres://m3d:secret@db.example:5432/m3d".into();
                c.instance = "rx1".into();
            }),
            Ok(())
        );
    }
}
