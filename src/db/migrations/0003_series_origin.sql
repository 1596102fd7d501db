-- Migration 3: where and when each series of the query index came from, for the status
-- page's list of recent series (newest first, with the calling AE title) without grouping
-- every instance row. New series get both on the store's write path (the first instance's
-- association and time); the series already indexed take them from their instances here.

ALTER TABLE series ADD COLUMN calling_ae TEXT;
ALTER TABLE series ADD COLUMN received_at REAL;

UPDATE series SET
    received_at = (SELECT MIN(i.received_at) FROM instances i
                   WHERE i.series_instance_uid = series.series_uid),
    calling_ae = (SELECT i.calling_ae FROM instances i
                  WHERE i.series_instance_uid = series.series_uid
                  ORDER BY i.received_at, i.rowid LIMIT 1);

CREATE INDEX series_received ON series(received_at);
