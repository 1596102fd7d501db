-- Migration 2: the query index. Its rows are back-filled from the
-- stored files by the Rust side of this migration, in batches that advance `backfill`; the
-- migration ends (user_version 2) when the last batch is in.

ALTER TABLE series RENAME TO series_work;

CREATE TABLE patients (
    pk          INTEGER PRIMARY KEY,
    patient_id  TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    name        TEXT,
    birth_date  TEXT,
    sex         TEXT,
    charset     TEXT,
    UNIQUE (patient_id, issuer)
);
CREATE INDEX patients_name ON patients(name);

CREATE TABLE studies (
    study_uid    TEXT PRIMARY KEY,
    patient_pk   INTEGER NOT NULL REFERENCES patients(pk),
    study_date   TEXT,
    study_time   TEXT,
    accession    TEXT,
    study_id     TEXT,
    description  TEXT,
    referring    TEXT,
    charset      TEXT
);
CREATE INDEX studies_patient ON studies(patient_pk);
CREATE INDEX studies_date ON studies(study_date);
CREATE INDEX studies_accession ON studies(accession);

CREATE TABLE series (
    series_uid    TEXT PRIMARY KEY,
    study_uid     TEXT NOT NULL,
    modality      TEXT,
    series_number INTEGER,
    description   TEXT,
    body_part     TEXT,
    frame_of_reference_uid TEXT,
    series_date   TEXT,
    series_time   TEXT,
    charset       TEXT
);
CREATE INDEX series_study ON series(study_uid);

ALTER TABLE instances ADD COLUMN document_title TEXT;
ALTER TABLE instances ADD COLUMN mime_type TEXT;

-- Progress of the back-fill: instances rows up to this rowid are done.
CREATE TABLE backfill (last_rowid INTEGER NOT NULL);
INSERT INTO backfill VALUES (0);
