-- The rollups give each bucket's peak beside its sum: a `max` meter (peak seats) is read from
-- `peak` (the highest window value of the hour or day, every source partition), an adding meter
-- from `quantity`. A month's peak is the max of its days' peaks.
DROP VIEW IF EXISTS usage_hourly;

CREATE VIEW IF NOT EXISTS usage_hourly AS
SELECT
    customer_id,
    meter,
    toStartOfHour(window_start) AS hour,
    sum(value)                  AS quantity,
    max(value)                  AS peak,
    sum(event_count)            AS events,
    countIf(revision > 0)       AS corrected_windows
FROM usage_windows FINAL
GROUP BY customer_id, meter, hour
SETTINGS do_not_merge_across_partitions_select_final = 1;

DROP VIEW IF EXISTS usage_daily;

CREATE VIEW IF NOT EXISTS usage_daily AS
SELECT
    customer_id,
    meter,
    toDate(window_start)  AS day,
    sum(value)            AS quantity,
    max(value)            AS peak,
    sum(event_count)      AS events,
    countIf(revision > 0) AS corrected_windows
FROM usage_windows FINAL
GROUP BY customer_id, meter, day
SETTINGS do_not_merge_across_partitions_select_final = 1;
