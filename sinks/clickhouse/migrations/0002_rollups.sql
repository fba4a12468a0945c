-- Analysts' rollups over the final rows: one row per customer, meter and hour (or day, UTC).
CREATE VIEW IF NOT EXISTS usage_hourly AS
SELECT
    customer_id,
    meter,
    toStartOfHour(window_start) AS hour,
    sum(value)                  AS quantity,
    sum(event_count)            AS events,
    countIf(revision > 0)       AS corrected_windows
FROM usage_windows FINAL
GROUP BY customer_id, meter, hour;

CREATE VIEW IF NOT EXISTS usage_daily AS
SELECT
    customer_id,
    meter,
    toDate(window_start)  AS day,
    sum(value)            AS quantity,
    sum(event_count)      AS events,
    countIf(revision > 0) AS corrected_windows
FROM usage_windows FINAL
GROUP BY customer_id, meter, day;
