-- Storage Commitment transactions (PS3.4 Annex J) and Modality Performed Procedure Steps
-- (PS3.4 Annex F). A commitment request is written here before its N-ACTION-RSP is sent, so a
-- request that arrives just before a restart is still answered after it.
CREATE TABLE commitments (
    transaction_uid TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL,
    -- waiting | reporting | reported | undeliverable
    state TEXT NOT NULL,
    -- 1 (all committed) or 2 (failures exist) once decided
    event_type INTEGER,
    requested_at REAL NOT NULL,
    deadline_at REAL NOT NULL,
    reported_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE commitment_items (
    transaction_uid TEXT NOT NULL REFERENCES commitments(transaction_uid) ON DELETE CASCADE,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    -- NULL: committed, or still pending while the transaction waits
    failure_reason INTEGER,
    PRIMARY KEY (transaction_uid, sop_instance_uid)
);
CREATE INDEX commitments_open ON commitments(state) WHERE state IN ('waiting', 'reporting');

CREATE TABLE mpps (
    sop_instance_uid TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,
    -- IN PROGRESS | COMPLETED | DISCONTINUED
    status TEXT NOT NULL,
    study_instance_uid TEXT,
    patient_id TEXT,
    accession_number TEXT,
    modality TEXT,
    pps_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    -- the merged data set (Explicit VR Little Endian), for forwarding
    attributes BLOB NOT NULL
);
CREATE TABLE mpps_instances (
    mpps_uid TEXT NOT NULL REFERENCES mpps(sop_instance_uid) ON DELETE CASCADE,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    PRIMARY KEY (mpps_uid, sop_instance_uid)
);
CREATE INDEX mpps_instances_series ON mpps_instances(series_instance_uid);
