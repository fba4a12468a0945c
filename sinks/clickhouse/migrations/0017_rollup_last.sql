-- The rollups give each bucket's latest level beside its sum and peak: a `last` meter (seats at the
-- period's end) is read from `last` (the value of the bucket's latest window, the highest partial of
-- a window split over source partitions), an adding meter from `quantity`, a `max` meter from `peak`.
-- A month's latest level is the `last` of its latest day.
DROP VIEW IF EXISTS usage_hourly;

CREATE VIEW IF NOT EXISTS usage_hourly AS
SELECT
    customer_id,
    meter,
    toStartOfHour(window_start)         AS hour,
    sum(value)                          AS quantity,
    max(value)                          AS peak,
    argMax(value, (window_start, value)) AS last,
    sum(event_count)                    AS events,
    countIf(revision > 0)               AS corrected_windows
FROM usage_windows FINAL
GROUP BY customer_id, meter, hour
SETTINGS do_not_merge_across_partitions_select_final = 1;

DROP VIEW IF EXISTS usage_daily;

CREATE VIEW IF NOT EXISTS usage_daily AS
SELECT
    customer_id,
    meter,
    toDate(window_start)                AS day,
    sum(value)                          AS quantity,
    max(value)                          AS peak,
    argMax(value, (window_start, value)) AS last,
    sum(event_count)                    AS events,
    countIf(revision > 0)               AS corrected_windows
FROM usage_windows FINAL
GROUP BY customer_id, meter, day
SETTINGS do_not_merge_across_partitions_select_final = 1;
