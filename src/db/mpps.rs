//! `mpps` and `mpps_instances`: the Modality Performed Procedure Steps the scanners reported
//! (N-CREATE, N-SET), and the instances each step's Performed Series Sequence lists.
//!
//! The SCP merges an N-SET into the stored attributes itself (it owns the DICOM rules) and
//! hands this module the result: the step's row is replaced as a whole, and its instance
//! list with it, in one transaction, so the series tracker and `m3dnode jobs` never see a
//! status without its list. The series tracker reads the lists back at start-up
//! ([`Db::open_mpps_series`]) to resume waiting for instances a COMPLETED step listed.

use super::sql::{Conn, Row, Stmt, stmt};
use super::{Db, DbError, MppsStatus, SeriesState, now};

/// A step as N-CREATE makes it, or as an N-SET leaves it.
#[derive(Debug, Clone, PartialEq)]
pub struct MppsWrite<'a> {
    /// Affected SOP Instance UID: the step's identity.
    pub sop_instance_uid: &'a str,
    /// The calling AE title that created (or last updated) it.
    pub calling_ae: &'a str,
    /// Performed Procedure Step Status.
    pub status: MppsStatus,
    /// Study Instance UID of the first Scheduled Step Attributes item.
    pub study_instance_uid: Option<&'a str>,
    /// Patient ID (0010,0020).
    pub patient_id: Option<&'a str>,
    /// Accession Number of the first Scheduled Step Attributes item.
    pub accession_number: Option<&'a str>,
    /// Modality (0008,0060).
    pub modality: Option<&'a str>,
    /// Performed Procedure Step ID (0040,0253).
    pub pps_id: Option<&'a str>,
    /// The merged data set, Explicit VR Little Endian, for forwarding and later reads.
    pub attributes: &'a [u8],
    /// What its Performed Series Sequence lists (replaces the stored list).
    pub instances: &'a [MppsInstance],
}

/// One instance a step lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MppsInstance {
    /// The series the Performed Series Sequence item names.
    pub series_instance_uid: String,
    /// >>Referenced SOP Class UID.
    pub sop_class_uid: String,
    /// >>Referenced SOP Instance UID.
    pub sop_instance_uid: String,
}

/// A stored step (without its attributes blob, which [`Db::mpps_attributes`] reads).
#[derive(Debug, Clone, PartialEq)]
pub struct MppsRow {
    /// Its SOP Instance UID.
    pub sop_instance_uid: String,
    /// Calling AE title.
    pub calling_ae: String,
    /// Where it stands.
    pub status: MppsStatus,
    /// Study Instance UID.
    pub study_instance_uid: Option<String>,
    /// Modality.
    pub modality: Option<String>,
    /// PPS ID.
    pub pps_id: Option<String>,
    /// Created (Unix seconds).
    pub created_at: f64,
    /// Last updated (Unix seconds).
    pub updated_at: f64,
}

/// One step in `m3dnode jobs`: its row and its series' progress.
#[derive(Debug, Clone, PartialEq)]
pub struct MppsSummary {
    /// The step.
    pub step: MppsRow,
    /// Series its Performed Series Sequence lists (with at least one instance).
    pub series_listed: i64,
    /// Of those, series every listed instance of which is stored.
    pub series_complete: i64,
    /// Instances it lists.
    pub instances_listed: i64,
    /// Of those, instances stored.
    pub instances_stored: i64,
}

/// A series that a final step lists and that is not processed yet: what the tracker resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenMppsSeries {
    /// The step.
    pub mpps_uid: String,
    /// COMPLETED or DISCONTINUED.
    pub status: MppsStatus,
    /// The series.
    pub series_instance_uid: String,
    /// The SOP Instance UIDs listed for it.
    pub sop_instance_uids: Vec<String>,
}

macro_rules! mpps_columns {
    () => {
        "sop_instance_uid, calling_ae, status, study_instance_uid, modality, pps_id, created_at, updated_at"
    };
}

fn mpps_row(r: &Row<'_>) -> Result<MppsRow, DbError> {
    Ok(MppsRow {
        sop_instance_uid: r.get(0)?,
        calling_ae: r.get(1)?,
        status: r.get(2)?,
        study_instance_uid: r.get(3)?,
        modality: r.get(4)?,
        pps_id: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

static DELETE_INSTANCES: Stmt = stmt!("DELETE FROM mpps_instances WHERE mpps_uid = ?1");
static INSERT_INSTANCE: Stmt = stmt!(
    lite: "INSERT OR REPLACE INTO mpps_instances (mpps_uid, series_instance_uid, sop_class_uid, sop_instance_uid)
     VALUES (?1, ?2, ?3, ?4)",
    pg: "INSERT INTO mpps_instances (mpps_uid, series_instance_uid, sop_class_uid, sop_instance_uid)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (mpps_uid, sop_instance_uid) DO UPDATE SET
         series_instance_uid = EXCLUDED.series_instance_uid, sop_class_uid = EXCLUDED.sop_class_uid",
);
static CREATE: Stmt = stmt!(
    lite: "INSERT OR IGNORE INTO mpps (sop_instance_uid, calling_ae, status, study_instance_uid, patient_id,
     accession_number, modality, pps_id, created_at, updated_at, attributes)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
    pg: "INSERT INTO mpps (sop_instance_uid, calling_ae, status, study_instance_uid, patient_id,
     accession_number, modality, pps_id, created_at, updated_at, attributes)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)
     ON CONFLICT (sop_instance_uid) DO NOTHING",
);
static UPDATE: Stmt = stmt!(
    "UPDATE mpps SET status = ?2, study_instance_uid = ?3, patient_id = ?4, accession_number = ?5,
     modality = ?6, pps_id = ?7, updated_at = ?8, attributes = ?9
     WHERE sop_instance_uid = ?1"
);
static GET: Stmt = stmt!(concat!(
    "SELECT ",
    mpps_columns!(),
    " FROM mpps WHERE sop_instance_uid = ?1"
));
static ATTRIBUTES: Stmt = stmt!("SELECT attributes FROM mpps WHERE sop_instance_uid = ?1");
static INSTANCES: Stmt = stmt!(
    "SELECT series_instance_uid, sop_class_uid, sop_instance_uid FROM mpps_instances
     WHERE mpps_uid = ?1 ORDER BY series_instance_uid, sop_instance_uid"
);
static LIST: Stmt = stmt!(
    lite: concat!("WITH per_series AS (
         SELECT mi.mpps_uid, mi.series_instance_uid, COUNT(*) AS listed,
                COUNT(i.sop_instance_uid) AS stored
         FROM mpps_instances mi
         LEFT JOIN instances i ON i.sop_instance_uid = mi.sop_instance_uid
         GROUP BY mi.mpps_uid, mi.series_instance_uid)
     SELECT ", mpps_columns!(), ",
         (SELECT COUNT(*) FROM per_series p WHERE p.mpps_uid = m.sop_instance_uid),
         (SELECT COUNT(*) FROM per_series p WHERE p.mpps_uid = m.sop_instance_uid AND p.stored = p.listed),
         (SELECT COALESCE(SUM(listed), 0) FROM per_series p WHERE p.mpps_uid = m.sop_instance_uid),
         (SELECT COALESCE(SUM(stored), 0) FROM per_series p WHERE p.mpps_uid = m.sop_instance_uid)
     FROM mpps m ORDER BY m.updated_at DESC, m.sop_instance_uid LIMIT ?1"),
    // SUM of a bigint is a numeric on PostgreSQL.
    pg: concat!("WITH per_series AS (
         SELECT mi.mpps_uid, mi.series_instance_uid, COUNT(*) AS listed,
                COUNT(i.sop_instance_uid) AS stored
         FROM mpps_instances mi
         LEFT JOIN instances i ON i.sop_instance_uid = mi.sop_instance_uid
         GROUP BY mi.mpps_uid, mi.series_instance_uid)
     SELECT ", mpps_columns!(), ",
         (SELECT COUNT(*) FROM per_series p WHERE p.mpps_uid = m.sop_instance_uid),
         (SELECT COUNT(*) FROM per_series p WHERE p.mpps_uid = m.sop_instance_uid AND p.stored = p.listed),
         (SELECT COALESCE(SUM(listed), 0)::bigint FROM per_series p WHERE p.mpps_uid = m.sop_instance_uid),
         (SELECT COALESCE(SUM(stored), 0)::bigint FROM per_series p WHERE p.mpps_uid = m.sop_instance_uid)
     FROM mpps m ORDER BY m.updated_at DESC, m.sop_instance_uid LIMIT ?1"),
);
static OPEN_SERIES: Stmt = stmt!(
    "SELECT m.sop_instance_uid, m.status, mi.series_instance_uid, mi.sop_instance_uid
     FROM mpps m JOIN mpps_instances mi ON mi.mpps_uid = m.sop_instance_uid
     LEFT JOIN series_work w ON w.series_instance_uid = mi.series_instance_uid
     WHERE m.status IN (?1, ?2) AND (w.state IS NULL OR w.state = ?3)
     ORDER BY m.updated_at, m.sop_instance_uid, mi.series_instance_uid, mi.sop_instance_uid"
);
static SKIP: Stmt =
    stmt!("UPDATE series_work SET state = ?2, last_at = ?3 WHERE series_instance_uid = ?1");

fn replace_instances(
    c: &mut Conn<'_>,
    mpps_uid: &str,
    instances: &[MppsInstance],
) -> Result<(), DbError> {
    c.exec(&DELETE_INSTANCES, &[&mpps_uid])?;
    for i in instances {
        c.exec(
            &INSERT_INSTANCE,
            &[
                &mpps_uid,
                &i.series_instance_uid,
                &i.sop_class_uid,
                &i.sop_instance_uid,
            ],
        )?;
    }
    Ok(())
}

impl Db {
    /// Records a new step (N-CREATE). Returns false, writing nothing, when a step with its
    /// UID exists already (the SCP answers 0x0111).
    pub fn create_mpps(&self, m: &MppsWrite<'_>) -> Result<bool, DbError> {
        let t = now();
        self.tx(|c| {
            let n = c.exec(
                &CREATE,
                &[
                    &m.sop_instance_uid,
                    &m.calling_ae,
                    &m.status,
                    &m.study_instance_uid,
                    &m.patient_id,
                    &m.accession_number,
                    &m.modality,
                    &m.pps_id,
                    &t,
                    &m.attributes,
                ],
            )?;
            if n == 1 {
                replace_instances(c, m.sop_instance_uid, m.instances)?;
            }
            Ok(n == 1)
        })
    }

    /// Replaces a step's status, summary columns, attributes and instance list (N-SET, after
    /// the SCP merged it). Returns false when no such step exists.
    pub fn update_mpps(&self, m: &MppsWrite<'_>) -> Result<bool, DbError> {
        let t = now();
        self.tx(|c| {
            let n = c.exec(
                &UPDATE,
                &[
                    &m.sop_instance_uid,
                    &m.status,
                    &m.study_instance_uid,
                    &m.patient_id,
                    &m.accession_number,
                    &m.modality,
                    &m.pps_id,
                    &t,
                    &m.attributes,
                ],
            )?;
            if n == 1 {
                replace_instances(c, m.sop_instance_uid, m.instances)?;
            }
            Ok(n == 1)
        })
    }

    /// One step's row.
    pub fn mpps(&self, sop_instance_uid: &str) -> Result<Option<MppsRow>, DbError> {
        self.run(|c| c.opt(&GET, &[&sop_instance_uid], mpps_row))
    }

    /// One step's stored data set (Explicit VR Little Endian), for an N-SET to merge into.
    pub fn mpps_attributes(&self, sop_instance_uid: &str) -> Result<Option<Vec<u8>>, DbError> {
        self.run(|c| c.opt(&ATTRIBUTES, &[&sop_instance_uid], |r| r.get(0)))
    }

    /// The instances a step lists, by series then SOP Instance UID.
    pub fn mpps_instances(&self, mpps_uid: &str) -> Result<Vec<MppsInstance>, DbError> {
        self.run(|c| {
            c.all(&INSTANCES, &[&mpps_uid], |r| {
                Ok(MppsInstance {
                    series_instance_uid: r.get(0)?,
                    sop_class_uid: r.get(1)?,
                    sop_instance_uid: r.get(2)?,
                })
            })
        })
    }

    /// The latest `limit` steps, newest first, each with how many of its series and
    /// instances are stored (`m3dnode jobs`).
    pub fn list_mpps(&self, limit: usize) -> Result<Vec<MppsSummary>, DbError> {
        self.run(|c| {
            c.all(&LIST, &[&(limit as i64)], |r| {
                Ok(MppsSummary {
                    step: mpps_row(r)?,
                    series_listed: r.get(8)?,
                    series_complete: r.get(9)?,
                    instances_listed: r.get(10)?,
                    instances_stored: r.get(11)?,
                })
            })
        })
    }

    /// Series listed by a COMPLETED or DISCONTINUED step that are not processed, skipped or
    /// unrouted yet (no `series_work` row, or `receiving`): what the tracker still waits for
    /// after a restart. Ordered by step update time, so a later step's list wins.
    pub fn open_mpps_series(&self) -> Result<Vec<OpenMppsSeries>, DbError> {
        let rows: Vec<(String, MppsStatus, String, String)> = self.run(|c| {
            c.all(
                &OPEN_SERIES,
                &[
                    &MppsStatus::Completed,
                    &MppsStatus::Discontinued,
                    &SeriesState::Receiving,
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
        })?;
        let mut out: Vec<OpenMppsSeries> = Vec::new();
        for (mpps_uid, status, series, sop) in rows {
            match out.last_mut() {
                Some(o) if o.mpps_uid == mpps_uid && o.series_instance_uid == series => {
                    o.sop_instance_uids.push(sop)
                }
                _ => out.push(OpenMppsSeries {
                    mpps_uid,
                    status,
                    series_instance_uid: series,
                    sop_instance_uids: vec![sop],
                }),
            }
        }
        Ok(out)
    }

    /// Marks a series skipped (its step was DISCONTINUED and its rule says skip): it is not
    /// processed, and its later instances are stored but not tracked.
    pub fn skip_series(&self, series_instance_uid: &str) -> Result<(), DbError> {
        self.run(|c| {
            c.exec(
                &SKIP,
                &[&series_instance_uid, &SeriesState::Skipped, &now()],
            )
            .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::NewSeriesWork;

    fn inst(series: &str, sop: &str) -> MppsInstance {
        MppsInstance {
            series_instance_uid: series.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: sop.into(),
        }
    }

    fn write<'a>(uid: &'a str, status: MppsStatus, instances: &'a [MppsInstance]) -> MppsWrite<'a> {
        MppsWrite {
            sop_instance_uid: uid,
            calling_ae: "SCANNER",
            status,
            study_instance_uid: Some("1.2.3"),
            patient_id: Some("PID"),
            accession_number: None,
            modality: Some("CT"),
            pps_id: Some("PPS1"),
            attributes: b"attrs",
            instances,
        }
    }

    #[test]
    fn a_step_is_created_once_updated_with_its_list_and_resumed_until_processed() {
        for (_, db, _dir) in crate::db::test_backends() {
            step_lifecycle(&db);
        }
    }

    fn step_lifecycle(db: &Db) {
        assert!(
            db.create_mpps(&write("9.1", MppsStatus::InProgress, &[]))
                .unwrap()
        );
        // A second N-CREATE with the same UID writes nothing.
        let mut again = write("9.1", MppsStatus::InProgress, &[]);
        again.calling_ae = "OTHER";
        assert!(!db.create_mpps(&again).unwrap());
        assert_eq!(db.mpps("9.1").unwrap().unwrap().calling_ae, "SCANNER");
        // IN PROGRESS steps are not resumed.
        assert!(db.open_mpps_series().unwrap().is_empty());

        let list = [inst("S1", "a"), inst("S1", "b"), inst("S2", "c")];
        let mut done = write("9.1", MppsStatus::Completed, &list);
        done.attributes = b"merged";
        assert!(db.update_mpps(&done).unwrap());
        assert!(
            !db.update_mpps(&write("9.2", MppsStatus::Completed, &list))
                .unwrap()
        );
        let row = db.mpps("9.1").unwrap().unwrap();
        assert_eq!(row.status, MppsStatus::Completed);
        assert_eq!(db.mpps_attributes("9.1").unwrap().unwrap(), b"merged");
        assert_eq!(db.mpps_instances("9.1").unwrap(), list);

        let open = db.open_mpps_series().unwrap();
        assert_eq!(open.len(), 2);
        assert_eq!(open[0].series_instance_uid, "S1");
        assert_eq!(open[0].sop_instance_uids, ["a", "b"]);
        assert_eq!(open[1].sop_instance_uids, ["c"]);

        // S2 processed, S1 skipped: nothing left to resume.
        for (s, rule) in [("S1", "r"), ("S2", "r")] {
            db.add_series_work(&NewSeriesWork {
                series_instance_uid: s,
                study_instance_uid: "1.2.3",
                calling_ae: "SCANNER",
                rule: Some(rule),
                expected: None,
            })
            .unwrap();
        }
        assert_eq!(
            db.open_mpps_series().unwrap().len(),
            2,
            "receiving still counts"
        );
        db.queue_job("S2", "r").unwrap();
        db.skip_series("S1").unwrap();
        assert!(db.open_mpps_series().unwrap().is_empty());
        assert_eq!(
            db.series_work("S1").unwrap().unwrap().state,
            SeriesState::Skipped
        );

        let summary = db.list_mpps(10).unwrap();
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].series_listed, 2);
        assert_eq!(summary[0].series_complete, 0);
        assert_eq!(summary[0].instances_listed, 3);
        assert_eq!(summary[0].instances_stored, 0);
    }
}
