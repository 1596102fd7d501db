//! The Modality Performed Procedure Step SCP (PS3.4 Annex F): N-CREATE and N-SET of the MPPS
//! SOP Class, kept in the index (`mpps`, `mpps_instances`), and the series-complete signal
//! they carry to the series tracker ([`MppsEvent`]).

use crate::db::MppsStatus;

/// A step reached a final status: what the series tracker needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MppsEvent {
    /// The step's SOP Instance UID.
    pub sop_instance_uid: String,
    /// COMPLETED or DISCONTINUED.
    pub status: MppsStatus,
    /// Its Performed Series Sequence: each series with the SOP Instance UIDs listed for it
    /// (Referenced Image Sequence and Referenced Non-Image Composite SOP Instance Sequence).
    pub series: Vec<PerformedSeries>,
}

/// One Performed Series Sequence item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerformedSeries {
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// The instances listed for it (may be empty).
    pub sop_instance_uids: Vec<String>,
}
