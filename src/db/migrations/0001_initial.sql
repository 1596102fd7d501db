-- Migration 1: the schema of the releases before schema versioning (user_version 0), written
-- so that it also completes a storage made by any of them (hence IF NOT EXISTS). The jobs'
-- `attempts` column, added in place by later ones of those releases, is added by the Rust
-- side of this migration when missing (ALTER TABLE has no IF NOT EXISTS).

CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid    TEXT PRIMARY KEY,
    sop_class_uid       TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    modality            TEXT,
    instance_number     INTEGER,
    transfer_syntax     TEXT NOT NULL,
    path                TEXT NOT NULL,
    size                INTEGER NOT NULL,
    calling_ae          TEXT NOT NULL,
    received_at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_instance_uid);
-- Nothing looks instances up by study, and every index is one more b-tree to update per
-- received instance; the index made by early releases is dropped.
DROP INDEX IF EXISTS instances_study;

-- Series the node has seen, for completion tracking and routing (renamed series_work by 2).
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    calling_ae          TEXT NOT NULL,
    rule                TEXT,
    state               TEXT NOT NULL,
    expected            INTEGER,
    result_series_uid   TEXT,
    result_version      INTEGER NOT NULL DEFAULT 0,
    first_at            REAL NOT NULL,
    last_at             REAL NOT NULL
);

-- Reconstruction jobs: queued -> running -> done | failed.
CREATE TABLE IF NOT EXISTS jobs (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    series_instance_uid     TEXT NOT NULL,
    rule                    TEXT NOT NULL,
    state                   TEXT NOT NULL,
    version                 INTEGER NOT NULL,
    result_series_uid       TEXT NOT NULL,
    result_sop_instance_uid TEXT NOT NULL,
    created_at              REAL NOT NULL,
    started_at              REAL,
    finished_at             REAL,
    error                   TEXT,
    summary                 TEXT,
    attempts                INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);

-- One delivery per (result instance, destination): pending -> sent | failed.
CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER,
    sop_instance_uid TEXT NOT NULL,
    path             TEXT NOT NULL,
    destination      TEXT NOT NULL,
    address          TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    deadline_at      REAL NOT NULL,
    last_error       TEXT,
    created_at       REAL NOT NULL,
    sent_at          REAL,
    UNIQUE (sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, next_attempt_at);

-- Unconfirmed delivery attempts (route::outbox): from the moment a row's last fragment may
-- have reached the destination until its answer is recorded.
CREATE TABLE IF NOT EXISTS outbox_unconfirmed (
    outbox_id   INTEGER PRIMARY KEY,
    attempts    INTEGER NOT NULL,
    started_at  REAL NOT NULL
);
