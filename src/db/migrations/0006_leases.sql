-- Leases (issue 17, docs/issue-17-design.md §3): a running job and a claimed delivery belong
-- to one process (`lease_owner`) until `lease_until` (Unix seconds); a process that stops
-- renewing loses them to another. `series_work` keeps the routing rule's quiet time and the
-- instances counted when its last job was queued. `processes`: who uses the index.
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
ALTER TABLE outbox ADD COLUMN lease_until REAL;
ALTER TABLE series_work ADD COLUMN quiet_seconds REAL;
ALTER TABLE series_work ADD COLUMN counted INTEGER;
CREATE TABLE processes (
    owner TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    role TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL
);
