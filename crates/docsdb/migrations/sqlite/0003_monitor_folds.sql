-- The monitor's views on a large DB, SQLite dialect. Keep in step with ../postgres/0003_monitor_folds.sql.
--
-- Each complete hour of health checks and request-log rows is folded into the hourly rollups
-- as soon as it ends, and the raw rows stay until the retention age. `monitor_folds` records
-- how far that went: every raw row with `at < folded_until_ms AND id <= folded_max_id` is
-- counted in the rollups, every other raw row is not (rows written late for an hour already
-- folded have a higher id and are folded on the next pass). A window of the views is then the
-- rollups of its whole folded hours plus the raw rows of its partial first hour and of
-- everything not yet folded: a handful of hours of raw rows instead of a week.
--
-- Rows written late (`id > folded_max_id`) are found through the primary key: `+column`
-- keeps SQLite from walking a day of the time index for them instead; `GROUP BY +column`
-- keeps it from walking a whole (service, time) index in order instead of an hour of the
-- time index.
--
-- Percentiles merge across hours through per-hour latency histograms: log-spaced buckets
-- (boundaries at powers of 1.02, so a bucket's value is within 1 % of every sample in it).
-- Raw rows take part in a percentile with their exact value, so where a window holds only raw
-- rows its percentiles are exact.

CREATE TABLE monitor_folds (
    source          TEXT    PRIMARY KEY CHECK (source IN ('health_checks', 'request_log')),
    folded_until_ms INTEGER NOT NULL,
    folded_max_id   INTEGER NOT NULL
);
INSERT INTO monitor_folds (source, folded_until_ms, folded_max_id)
VALUES ('health_checks', 0, 0), ('request_log', 0, 0);

DROP VIEW v_service_uptime;
DROP VIEW v_service_hourly;
DROP VIEW v_service_latency;
DROP VIEW v_handle_stats;
DROP VIEW v_recent_errors;

-- Successful probes with a latency: their sum and count, so hourly means merge.
ALTER TABLE health_rollups DROP COLUMN latency_p50_ms;
ALTER TABLE health_rollups DROP COLUMN latency_p95_ms;
ALTER TABLE health_rollups DROP COLUMN latency_max_ms;
ALTER TABLE health_rollups ADD COLUMN latency_sum_ms REAL NOT NULL DEFAULT 0;
ALTER TABLE health_rollups ADD COLUMN latency_samples INTEGER NOT NULL DEFAULT 0;

ALTER TABLE request_rollups DROP COLUMN latency_p50_ms;
ALTER TABLE request_rollups DROP COLUMN latency_p95_ms;
ALTER TABLE request_rollups DROP COLUMN ttft_p50_ms;
ALTER TABLE request_rollups ADD COLUMN latency_sum_ms REAL NOT NULL DEFAULT 0;
ALTER TABLE request_rollups ADD COLUMN ttft_sum_ms REAL NOT NULL DEFAULT 0;
ALTER TABLE request_rollups ADD COLUMN ttft_samples INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_rollups ADD COLUMN last_at_ms INTEGER;

-- `latency_ms`: the bucket's value, 2·1.02^bucket / 2.02 (a latency of 0 has bucket -1000000 and value 0).
CREATE TABLE health_latency_buckets (
    service_id INTEGER NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    hour_ms    INTEGER NOT NULL,
    bucket     INTEGER NOT NULL,
    latency_ms REAL    NOT NULL,
    samples    INTEGER NOT NULL,
    PRIMARY KEY (service_id, hour_ms, bucket)
);

CREATE TABLE request_latency_buckets (
    handle     TEXT    NOT NULL,
    hour_ms    INTEGER NOT NULL,
    bucket     INTEGER NOT NULL,
    latency_ms REAL    NOT NULL,
    samples    INTEGER NOT NULL,
    PRIMARY KEY (handle, hour_ms, bucket)
);
CREATE INDEX request_latency_buckets_hour ON request_latency_buckets (hour_ms);
CREATE INDEX health_latency_buckets_hour ON health_latency_buckets (hour_ms);
CREATE INDEX health_rollups_hour ON health_rollups (hour_ms);
CREATE INDEX request_rollups_hour ON request_rollups (hour_ms);
-- Failed probes, for the recent errors (v_recent_errors is made again below to filter on
-- `ok = 0`, the partial index's own term, which SQLite needs to use it).
CREATE INDEX health_checks_failures ON health_checks (checked_at_ms) WHERE ok = 0;

-- Uptime over the last hour (raw rows), day and week (rollups and raw rows, as above).
CREATE VIEW v_service_uptime AS
WITH w AS (
    SELECT x.now_ms, x.wm, x.max_id,
           x.now_ms - 3600000   AS s1h,
           x.now_ms - 86400000  AS s24, ((x.now_ms - 86400000 + 3599999) / 3600000) * 3600000  AS e24,
           x.now_ms - 604800000 AS s7,  ((x.now_ms - 604800000 + 3599999) / 3600000) * 3600000 AS e7
    FROM (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now_ms,
                 COALESCE((SELECT folded_until_ms FROM monitor_folds WHERE source = 'health_checks'), 0) AS wm,
                 COALESCE((SELECT folded_max_id FROM monitor_folds WHERE source = 'health_checks'), 0)   AS max_id) x
), u1 AS (
    SELECT hc.service_id, COUNT(*) AS checks, SUM(hc.ok) AS ok
    FROM health_checks hc, w WHERE hc.checked_at_ms >= w.s1h
    GROUP BY +hc.service_id
), f24 AS (
    SELECT hc.service_id, 1 AS checks, hc.ok AS ok FROM health_checks hc, w
    WHERE hc.checked_at_ms >= MAX(w.s24, w.wm)
    UNION ALL
    SELECT hc.service_id, 1, hc.ok FROM health_checks hc, w
    WHERE hc.checked_at_ms >= w.s24 AND hc.checked_at_ms < MIN(w.e24, w.wm)
    UNION ALL
    SELECT hc.service_id, 1, hc.ok FROM health_checks hc, w
    WHERE hc.id > w.max_id AND +hc.checked_at_ms >= w.e24 AND +hc.checked_at_ms < w.wm
    UNION ALL
    SELECT r.service_id, r.checks, r.checks - r.failures FROM health_rollups r, w
    WHERE r.hour_ms >= w.e24 AND r.hour_ms < w.wm
), u24 AS (
    SELECT service_id, SUM(checks) AS checks, SUM(ok) AS ok FROM f24 GROUP BY service_id
), f7 AS (
    SELECT hc.service_id, 1 AS checks, hc.ok AS ok FROM health_checks hc, w
    WHERE hc.checked_at_ms >= MAX(w.s7, w.wm)
    UNION ALL
    SELECT hc.service_id, 1, hc.ok FROM health_checks hc, w
    WHERE hc.checked_at_ms >= w.s7 AND hc.checked_at_ms < MIN(w.e7, w.wm)
    UNION ALL
    SELECT hc.service_id, 1, hc.ok FROM health_checks hc, w
    WHERE hc.id > w.max_id AND +hc.checked_at_ms >= w.e7 AND +hc.checked_at_ms < w.wm
    UNION ALL
    SELECT r.service_id, r.checks, r.checks - r.failures FROM health_rollups r, w
    WHERE r.hour_ms >= w.e7 AND r.hour_ms < w.wm
), u7 AS (
    SELECT service_id, SUM(checks) AS checks, SUM(ok) AS ok FROM f7 GROUP BY service_id
)
SELECT s.id   AS service_id,
       s.name AS service,
       CAST(COALESCE(u1.checks, 0) AS INTEGER)  AS checks_1h,
       CAST(COALESCE(u1.ok, 0) AS INTEGER)      AS ok_1h,
       CAST(COALESCE(u24.checks, 0) AS INTEGER) AS checks_24h,
       CAST(COALESCE(u24.ok, 0) AS INTEGER)     AS ok_24h,
       CAST(COALESCE(u7.checks, 0) AS INTEGER)  AS checks_7d,
       CAST(COALESCE(u7.ok, 0) AS INTEGER)      AS ok_7d,
       CAST(u1.ok AS REAL) / NULLIF(u1.checks, 0)   AS uptime_1h,
       CAST(u24.ok AS REAL) / NULLIF(u24.checks, 0) AS uptime_24h,
       CAST(u7.ok AS REAL) / NULLIF(u7.checks, 0)   AS uptime_7d
FROM services s
LEFT JOIN u1 ON u1.service_id = s.id
LEFT JOIN u24 ON u24.service_id = s.id
LEFT JOIN u7 ON u7.service_id = s.id;

-- Probes per service and hour over the last 7 days: the uptime bars and latency sparklines
-- of the dashboard. `latency_ms` is the mean latency of the hour's successful probes.
CREATE VIEW v_service_hourly AS
WITH w AS (
    SELECT x.wm, x.max_id, ((x.now_ms - 604800000) / 3600000) * 3600000 AS s7
    FROM (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now_ms,
                 COALESCE((SELECT folded_until_ms FROM monitor_folds WHERE source = 'health_checks'), 0) AS wm,
                 COALESCE((SELECT folded_max_id FROM monitor_folds WHERE source = 'health_checks'), 0)   AS max_id) x
), raw AS (
    SELECT hc.service_id, hc.checked_at_ms, hc.ok, hc.latency_ms FROM health_checks hc, w
    WHERE hc.checked_at_ms >= MAX(w.s7, w.wm)
    UNION ALL
    SELECT hc.service_id, hc.checked_at_ms, hc.ok, hc.latency_ms FROM health_checks hc, w
    WHERE hc.id > w.max_id AND +hc.checked_at_ms >= w.s7 AND +hc.checked_at_ms < w.wm
), x AS (
    SELECT raw.service_id, (raw.checked_at_ms / 3600000) * 3600000 AS hour_ms,
           COUNT(*) AS checks, SUM(1 - raw.ok) AS failures,
           SUM(CASE WHEN raw.ok = 1 THEN raw.latency_ms END) AS latency_sum_ms,
           COUNT(CASE WHEN raw.ok = 1 THEN raw.latency_ms END) AS latency_samples
    FROM raw
    GROUP BY raw.service_id, (raw.checked_at_ms / 3600000) * 3600000
    UNION ALL
    SELECT r.service_id, r.hour_ms, r.checks, r.failures, r.latency_sum_ms, r.latency_samples
    FROM health_rollups r, w WHERE r.hour_ms >= w.s7 AND r.hour_ms < w.wm
)
SELECT x.service_id AS service_id, s.name AS service, x.hour_ms AS hour_ms,
       CAST(SUM(x.checks) AS INTEGER) AS checks, CAST(SUM(x.failures) AS INTEGER) AS failures,
       SUM(x.latency_sum_ms) / NULLIF(SUM(x.latency_samples), 0) AS latency_ms
FROM x
JOIN services s ON s.id = x.service_id
GROUP BY x.service_id, s.name, x.hour_ms;

-- Latency of successful probes over the last 24 hours (nearest-rank percentiles; exact over
-- raw rows, within 1 % over folded hours).
CREATE VIEW v_service_latency AS
WITH w AS (
    SELECT x.wm, x.max_id,
           x.now_ms - 86400000 AS s24, ((x.now_ms - 86400000 + 3599999) / 3600000) * 3600000 AS e24
    FROM (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now_ms,
                 COALESCE((SELECT folded_until_ms FROM monitor_folds WHERE source = 'health_checks'), 0) AS wm,
                 COALESCE((SELECT folded_max_id FROM monitor_folds WHERE source = 'health_checks'), 0)   AS max_id) x
), v AS (
    SELECT hc.service_id, hc.latency_ms AS latency_ms, 1 AS n FROM health_checks hc, w
    WHERE hc.checked_at_ms >= MAX(w.s24, w.wm) AND hc.ok = 1 AND hc.latency_ms IS NOT NULL
    UNION ALL
    SELECT hc.service_id, hc.latency_ms, 1 FROM health_checks hc, w
    WHERE hc.checked_at_ms >= w.s24 AND hc.checked_at_ms < MIN(w.e24, w.wm) AND hc.ok = 1 AND hc.latency_ms IS NOT NULL
    UNION ALL
    SELECT hc.service_id, hc.latency_ms, 1 FROM health_checks hc, w
    WHERE hc.id > w.max_id AND +hc.checked_at_ms >= w.e24 AND +hc.checked_at_ms < w.wm
      AND hc.ok = 1 AND hc.latency_ms IS NOT NULL
    UNION ALL
    SELECT b.service_id, b.latency_ms, SUM(b.samples) FROM health_latency_buckets b, w
    WHERE b.hour_ms >= w.e24 AND b.hour_ms < w.wm
    GROUP BY b.service_id, b.bucket, b.latency_ms
), r AS (
    SELECT v.service_id, v.latency_ms, v.n,
           SUM(v.n) OVER (PARTITION BY v.service_id ORDER BY v.latency_ms ROWS UNBOUNDED PRECEDING) AS cum,
           SUM(v.n) OVER (PARTITION BY v.service_id) AS total
    FROM v
)
SELECT s.id AS service_id, s.name AS service,
       CAST(COALESCE(SUM(r.n), 0) AS INTEGER)                    AS samples_24h,
       MIN(r.latency_ms) FILTER (WHERE r.cum * 100 >= r.total * 50) AS latency_p50_ms,
       MIN(r.latency_ms) FILTER (WHERE r.cum * 100 >= r.total * 95) AS latency_p95_ms,
       MAX(r.latency_ms)                                         AS latency_max_ms
FROM services s
LEFT JOIN r ON r.service_id = s.id
GROUP BY s.id, s.name;

-- Traffic per handle over the last hour (raw rows) and day (rollups and raw rows, as above).
-- Tokens/s is generated tokens over the time spent generating them (latency minus time to
-- first token) in requests that generated any.
CREATE VIEW v_handle_stats AS
WITH w AS (
    SELECT x.now_ms, x.wm, x.max_id,
           x.now_ms - 3600000  AS s1h,
           x.now_ms - 86400000 AS s24, ((x.now_ms - 86400000 + 3599999) / 3600000) * 3600000 AS e24
    FROM (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now_ms,
                 COALESCE((SELECT folded_until_ms FROM monitor_folds WHERE source = 'request_log'), 0) AS wm,
                 COALESCE((SELECT folded_max_id FROM monitor_folds WHERE source = 'request_log'), 0)   AS max_id) x
), h1 AS (
    SELECT rl.handle,
           COUNT(*) AS requests,
           SUM(CASE WHEN rl.status >= 400 OR rl.error_type IS NOT NULL THEN 1 ELSE 0 END) AS errors,
           AVG(rl.latency_ms) AS avg_latency_ms,
           AVG(rl.ttft_ms)    AS avg_ttft_ms
    FROM request_log rl, w
    WHERE rl.started_at_ms >= w.s1h AND rl.handle IS NOT NULL
    GROUP BY +rl.handle
), raw AS (
    SELECT rl.handle, rl.started_at_ms, rl.status, rl.error_type, rl.latency_ms, rl.ttft_ms, rl.prompt_tokens, rl.completion_tokens
    FROM request_log rl, w
    WHERE rl.started_at_ms >= MAX(w.s24, w.wm) AND rl.handle IS NOT NULL
    UNION ALL
    SELECT rl.handle, rl.started_at_ms, rl.status, rl.error_type, rl.latency_ms, rl.ttft_ms, rl.prompt_tokens, rl.completion_tokens
    FROM request_log rl, w
    WHERE rl.started_at_ms >= w.s24 AND rl.started_at_ms < MIN(w.e24, w.wm) AND rl.handle IS NOT NULL
    UNION ALL
    SELECT rl.handle, rl.started_at_ms, rl.status, rl.error_type, rl.latency_ms, rl.ttft_ms, rl.prompt_tokens, rl.completion_tokens
    FROM request_log rl, w
    WHERE rl.id > w.max_id AND +rl.started_at_ms >= w.e24 AND +rl.started_at_ms < w.wm
      AND rl.handle IS NOT NULL
), d AS (
    SELECT raw.handle, COUNT(*) AS requests,
           SUM(CASE WHEN raw.status >= 400 OR raw.error_type IS NOT NULL THEN 1 ELSE 0 END) AS errors,
           SUM(raw.latency_ms) AS latency_sum_ms,
           COALESCE(SUM(raw.ttft_ms), 0) AS ttft_sum_ms, COUNT(raw.ttft_ms) AS ttft_samples,
           COALESCE(SUM(raw.prompt_tokens), 0) AS prompt_tokens,
           COALESCE(SUM(raw.completion_tokens), 0) AS completion_tokens,
           COALESCE(SUM(MAX(raw.latency_ms - COALESCE(raw.ttft_ms, 0), 0))
                    FILTER (WHERE raw.completion_tokens > 0), 0) AS generation_ms,
           MAX(raw.started_at_ms) AS last_at_ms
    FROM raw GROUP BY raw.handle
    UNION ALL
    SELECT r.handle, r.requests, r.errors, r.latency_sum_ms, r.ttft_sum_ms, r.ttft_samples,
           r.prompt_tokens, r.completion_tokens, r.generation_ms, r.last_at_ms
    FROM request_rollups r, w WHERE r.hour_ms >= w.e24 AND r.hour_ms < w.wm
), h24 AS (
    SELECT d.handle, SUM(d.requests) AS requests, SUM(d.errors) AS errors,
           SUM(d.latency_sum_ms) / NULLIF(SUM(d.requests), 0) AS avg_latency_ms,
           SUM(d.ttft_sum_ms) / NULLIF(SUM(d.ttft_samples), 0) AS avg_ttft_ms,
           SUM(d.prompt_tokens) AS prompt_tokens, SUM(d.completion_tokens) AS completion_tokens,
           SUM(d.completion_tokens) / NULLIF(SUM(d.generation_ms) / 1000.0, 0) AS tokens_per_s,
           MAX(d.last_at_ms) AS last_at_ms
    FROM d GROUP BY d.handle
), v AS (
    SELECT raw.handle, raw.latency_ms, 1 AS n FROM raw
    UNION ALL
    SELECT b.handle, b.latency_ms, SUM(b.samples) FROM request_latency_buckets b, w
    WHERE b.hour_ms >= w.e24 AND b.hour_ms < w.wm
    GROUP BY b.handle, b.bucket, b.latency_ms
), pr AS (
    SELECT v.handle, v.latency_ms,
           SUM(v.n) OVER (PARTITION BY v.handle ORDER BY v.latency_ms ROWS UNBOUNDED PRECEDING) AS cum,
           SUM(v.n) OVER (PARTITION BY v.handle) AS total
    FROM v
), p AS (
    SELECT pr.handle,
           MIN(pr.latency_ms) FILTER (WHERE pr.cum * 100 >= pr.total * 50) AS p50,
           MIN(pr.latency_ms) FILTER (WHERE pr.cum * 100 >= pr.total * 95) AS p95
    FROM pr GROUP BY pr.handle
)
SELECT hd.id       AS handle_id,
       hd.name     AS handle,
       hd.strategy AS strategy,
       (SELECT COUNT(*) FROM handle_targets t WHERE t.handle_id = hd.id) AS targets,
       CAST(COALESCE(h1.requests, 0) AS INTEGER)  AS requests_1h,
       CAST(COALESCE(h1.errors, 0) AS INTEGER)    AS errors_1h,
       CAST(h1.errors AS REAL) / NULLIF(h1.requests, 0) AS error_rate_1h,
       h1.avg_latency_ms           AS avg_latency_ms_1h,
       h1.avg_ttft_ms              AS avg_ttft_ms_1h,
       CAST(COALESCE(h24.requests, 0) AS INTEGER) AS requests_24h,
       CAST(COALESCE(h24.errors, 0) AS INTEGER)   AS errors_24h,
       CAST(h24.errors AS REAL) / NULLIF(h24.requests, 0) AS error_rate_24h,
       h24.avg_latency_ms          AS avg_latency_ms_24h,
       p.p50                       AS p50_latency_ms_24h,
       p.p95                       AS p95_latency_ms_24h,
       h24.avg_ttft_ms             AS avg_ttft_ms_24h,
       CAST(COALESCE(h24.prompt_tokens, 0) AS INTEGER)     AS prompt_tokens_24h,
       CAST(COALESCE(h24.completion_tokens, 0) AS INTEGER) AS completion_tokens_24h,
       h24.tokens_per_s            AS tokens_per_s_24h,
       h24.last_at_ms              AS last_request_at_ms
FROM handles hd
LEFT JOIN h1 ON h1.handle = hd.name
LEFT JOIN h24 ON h24.handle = hd.name
LEFT JOIN p ON p.handle = hd.name;

CREATE VIEW v_recent_errors AS
SELECT 'request'         AS source,
       r.started_at_ms   AS at_ms,
       r.handle          AS subject,
       r.target          AS target,
       r.status          AS status,
       r.error_type      AS error,
       r.request_id      AS request_id
FROM request_log r
WHERE (r.status >= 400 OR r.error_type IS NOT NULL)
  AND r.started_at_ms >= CAST(unixepoch('subsec') * 1000 AS INTEGER) - 86400000
UNION ALL
SELECT 'health'          AS source,
       hc.checked_at_ms  AS at_ms,
       s.name            AS subject,
       s.base_url        AS target,
       hc.status_code    AS status,
       hc.error          AS error,
       NULL              AS request_id
FROM health_checks hc
JOIN services s ON s.id = hc.service_id
WHERE hc.ok = 0
  AND hc.checked_at_ms >= CAST(unixepoch('subsec') * 1000 AS INTEGER) - 86400000;
