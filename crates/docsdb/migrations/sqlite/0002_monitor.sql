-- What the system monitor needs, SQLite dialect. Keep in step with ../postgres/0002_monitor.sql.
--
-- Probing: per-service interval and failure threshold (NULL: the monitor's settings).
-- Retention: raw rows older than the retention age are folded into hourly rollups and deleted;
-- the monitor keeps at least a day of raw rows, so every window up to 24 h is computed from raw
-- rows and only the 7-day uptime and the hourly history read the rollups.

ALTER TABLE services ADD COLUMN probe_interval_ms INTEGER
    CHECK (probe_interval_ms IS NULL OR probe_interval_ms >= 1000);
ALTER TABLE services ADD COLUMN fail_threshold INTEGER
    CHECK (fail_threshold IS NULL OR fail_threshold >= 1);

-- The monitor writes its settings here at start, so that every reader of the views (the
-- monitor, `homelab status`) applies the same rules.
CREATE TABLE monitor_settings (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO monitor_settings (name, value) VALUES ('fail_threshold', 3), ('probe_interval_ms', 15000);

CREATE TABLE health_rollups (
    service_id     INTEGER NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    hour_ms        INTEGER NOT NULL,
    checks         INTEGER NOT NULL,
    failures       INTEGER NOT NULL,
    latency_p50_ms REAL,
    latency_p95_ms REAL,
    latency_max_ms REAL,
    PRIMARY KEY (service_id, hour_ms)
);

CREATE TABLE request_rollups (
    handle            TEXT    NOT NULL,
    hour_ms           INTEGER NOT NULL,
    requests          INTEGER NOT NULL,
    errors            INTEGER NOT NULL,
    latency_p50_ms    REAL,
    latency_p95_ms    REAL,
    ttft_p50_ms       REAL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    generation_ms     REAL    NOT NULL,
    PRIMARY KEY (handle, hour_ms)
);

-- Which requests count as errors, for the handle views.
CREATE INDEX request_log_errors ON request_log (started_at_ms) WHERE status >= 400 OR error_type IS NOT NULL;

DROP VIEW v_service_status;
-- Status now: `up` (last probe answered), `degraded` (failing, fewer than the threshold in a
-- row), `down` (the threshold or more in a row), `unknown` (never probed, or the last probe is
-- older than three intervals: nobody is watching), or the lifecycle (`planned`, `retired`).
-- `since_ms`: when the current run of successes or failures began.
CREATE VIEW v_service_status AS
WITH cfg AS (
    SELECT COALESCE((SELECT value FROM monitor_settings WHERE name = 'fail_threshold'), 3)       AS k,
           COALESCE((SELECT value FROM monitor_settings WHERE name = 'probe_interval_ms'), 15000) AS interval_ms,
           CAST(unixepoch('subsec') * 1000 AS INTEGER)                                            AS now_ms
), b AS (
    SELECT s.id, s.name, s.layer, h.name AS host, s.kind, s.lifecycle, s.base_url, s.health_path,
           COALESCE(s.fail_threshold, cfg.k)              AS k,
           COALESCE(s.probe_interval_ms, cfg.interval_ms) AS interval_ms,
           cfg.now_ms                                     AS now_ms,
           (SELECT MAX(hc.checked_at_ms) FROM health_checks hc WHERE hc.service_id = s.id AND hc.ok = 1) AS last_ok_at,
           (SELECT MAX(hc.checked_at_ms) FROM health_checks hc WHERE hc.service_id = s.id AND hc.ok = 0) AS last_fail_at,
           (SELECT hc.id FROM health_checks hc WHERE hc.service_id = s.id
            ORDER BY hc.checked_at_ms DESC, hc.id DESC LIMIT 1)                                      AS last_id
    FROM services s
    CROSS JOIN cfg
    LEFT JOIN hosts h ON h.id = s.host_id
), c AS (
    SELECT b.*, lc.checked_at_ms, lc.ok, lc.status_code, lc.latency_ms, lc.error,
           (SELECT COUNT(*) FROM health_checks hc
            WHERE hc.service_id = b.id AND hc.checked_at_ms > COALESCE(b.last_ok_at, -1)) AS fails_in_row,
           (SELECT MIN(hc.checked_at_ms) FROM health_checks hc
            WHERE hc.service_id = b.id
              AND hc.checked_at_ms > COALESCE(CASE WHEN lc.ok THEN b.last_fail_at ELSE b.last_ok_at END, -1)) AS run_since
    FROM b
    LEFT JOIN health_checks lc ON lc.id = b.last_id
)
SELECT c.id                AS service_id,
       c.name              AS service,
       c.layer             AS layer,
       c.host              AS host,
       c.kind              AS kind,
       c.lifecycle         AS lifecycle,
       c.base_url          AS base_url,
       c.health_path       AS health_path,
       c.checked_at_ms     AS last_checked_at_ms,
       c.ok                AS last_ok,
       c.status_code       AS last_status_code,
       c.latency_ms        AS last_latency_ms,
       c.error             AS last_error,
       CASE
           WHEN c.lifecycle <> 'active' THEN c.lifecycle
           WHEN c.last_id IS NULL THEN 'unknown'
           WHEN c.checked_at_ms < c.now_ms - MAX(3 * c.interval_ms, 60000) THEN 'unknown'
           WHEN c.ok THEN 'up'
           WHEN c.fails_in_row >= c.k THEN 'down'
           ELSE 'degraded'
       END                 AS status,
       c.run_since         AS since_ms,
       c.fails_in_row      AS failures_in_row,
       c.k                 AS fail_threshold,
       c.interval_ms       AS probe_interval_ms,
       CASE WHEN c.last_id IS NOT NULL
                 AND c.checked_at_ms < c.now_ms - MAX(3 * c.interval_ms, 60000) THEN 1 ELSE 0 END AS stale
FROM c;

DROP VIEW v_service_uptime;
CREATE VIEW v_service_uptime AS
WITH n AS (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now_ms),
facts AS (
    SELECT hc.service_id, hc.checked_at_ms AS at_ms, 1 AS checks, 1 - hc.ok AS failures
    FROM health_checks hc, n WHERE hc.checked_at_ms >= n.now_ms - 604800000
    UNION ALL
    SELECT r.service_id, r.hour_ms, r.checks, r.failures
    FROM health_rollups r, n WHERE r.hour_ms >= n.now_ms - 604800000
), w AS (
    SELECT f.service_id,
           CAST(SUM(f.checks) FILTER (WHERE f.at_ms >= n.now_ms - 3600000) AS INTEGER)              AS checks_1h,
           CAST(SUM(f.checks - f.failures) FILTER (WHERE f.at_ms >= n.now_ms - 3600000) AS INTEGER) AS ok_1h,
           CAST(SUM(f.checks) FILTER (WHERE f.at_ms >= n.now_ms - 86400000) AS INTEGER)             AS checks_24h,
           CAST(SUM(f.checks - f.failures) FILTER (WHERE f.at_ms >= n.now_ms - 86400000) AS INTEGER) AS ok_24h,
           CAST(SUM(f.checks) AS INTEGER)                                                           AS checks_7d,
           CAST(SUM(f.checks - f.failures) AS INTEGER)                                              AS ok_7d
    FROM facts f, n
    GROUP BY f.service_id
)
SELECT s.id   AS service_id,
       s.name AS service,
       COALESCE(w.checks_1h, 0)  AS checks_1h,
       COALESCE(w.ok_1h, 0)      AS ok_1h,
       COALESCE(w.checks_24h, 0) AS checks_24h,
       COALESCE(w.ok_24h, 0)     AS ok_24h,
       COALESCE(w.checks_7d, 0)  AS checks_7d,
       COALESCE(w.ok_7d, 0)      AS ok_7d,
       CAST(w.ok_1h AS REAL) / NULLIF(w.checks_1h, 0)   AS uptime_1h,
       CAST(w.ok_24h AS REAL) / NULLIF(w.checks_24h, 0) AS uptime_24h,
       CAST(w.ok_7d AS REAL) / NULLIF(w.checks_7d, 0)   AS uptime_7d
FROM services s
LEFT JOIN w ON w.service_id = s.id;

-- Probes per service and hour over the last 7 days (raw rows and rollups): the uptime bars
-- and latency sparklines of the dashboard.
CREATE VIEW v_service_hourly AS
WITH n AS (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now_ms)
SELECT x.service_id AS service_id, s.name AS service, x.hour_ms AS hour_ms,
       x.checks AS checks, x.failures AS failures, x.latency_ms AS latency_ms
FROM (
    SELECT hc.service_id AS service_id, (hc.checked_at_ms / 3600000) * 3600000 AS hour_ms,
           COUNT(*) AS checks, SUM(1 - hc.ok) AS failures, AVG(hc.latency_ms) AS latency_ms
    FROM health_checks hc, n WHERE hc.checked_at_ms >= n.now_ms - 604800000
    GROUP BY hc.service_id, (hc.checked_at_ms / 3600000) * 3600000
    UNION ALL
    SELECT r.service_id, r.hour_ms, r.checks, r.failures, r.latency_p50_ms
    FROM health_rollups r, n WHERE r.hour_ms >= n.now_ms - 604800000
) x
JOIN services s ON s.id = x.service_id;

-- Latency of successful probes over the last 24 hours (nearest-rank percentiles).
CREATE VIEW v_service_latency AS
WITH n AS (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now_ms),
w AS (
    SELECT hc.service_id, hc.latency_ms,
           ROW_NUMBER() OVER (PARTITION BY hc.service_id ORDER BY hc.latency_ms) AS rn,
           COUNT(*) OVER (PARTITION BY hc.service_id)                            AS cnt
    FROM health_checks hc, n
    WHERE hc.ok = 1 AND hc.latency_ms IS NOT NULL AND hc.checked_at_ms >= n.now_ms - 86400000
)
SELECT s.id AS service_id, s.name AS service,
       COUNT(w.latency_ms)                                      AS samples_24h,
       MIN(w.latency_ms) FILTER (WHERE w.rn * 100 >= w.cnt * 50) AS latency_p50_ms,
       MIN(w.latency_ms) FILTER (WHERE w.rn * 100 >= w.cnt * 95) AS latency_p95_ms,
       MAX(w.latency_ms)                                        AS latency_max_ms
FROM services s
LEFT JOIN w ON w.service_id = s.id
GROUP BY s.id, s.name;

DROP VIEW v_handle_stats;
-- Traffic per handle over the last hour and day. Tokens/s is generated tokens over the time
-- spent generating them (latency minus time to first token).
CREATE VIEW v_handle_stats AS
WITH n AS (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now_ms),
r AS (
    SELECT rl.handle, rl.started_at_ms, rl.latency_ms, rl.ttft_ms, rl.prompt_tokens, rl.completion_tokens,
           CASE WHEN rl.status >= 400 OR rl.error_type IS NOT NULL THEN 1 ELSE 0 END AS err,
           CASE WHEN rl.started_at_ms >= n.now_ms - 3600000 THEN 1 ELSE 0 END      AS recent,
           ROW_NUMBER() OVER (PARTITION BY rl.handle ORDER BY rl.latency_ms)       AS rn_day,
           COUNT(*) OVER (PARTITION BY rl.handle)                                  AS cnt_day
    FROM request_log rl, n
    WHERE rl.handle IS NOT NULL AND rl.started_at_ms >= n.now_ms - 86400000
), g AS (
    SELECT r.handle,
           SUM(r.recent)                                                   AS requests_1h,
           SUM(r.err * r.recent)                                           AS errors_1h,
           AVG(r.latency_ms) FILTER (WHERE r.recent = 1)                   AS avg_latency_ms_1h,
           AVG(r.ttft_ms) FILTER (WHERE r.recent = 1)                      AS avg_ttft_ms_1h,
           COUNT(*)                                                        AS requests_24h,
           SUM(r.err)                                                      AS errors_24h,
           AVG(r.latency_ms)                                               AS avg_latency_ms_24h,
           MIN(r.latency_ms) FILTER (WHERE r.rn_day * 100 >= r.cnt_day * 50) AS p50_latency_ms_24h,
           MIN(r.latency_ms) FILTER (WHERE r.rn_day * 100 >= r.cnt_day * 95) AS p95_latency_ms_24h,
           AVG(r.ttft_ms)                                                  AS avg_ttft_ms_24h,
           SUM(r.prompt_tokens)                                            AS prompt_tokens_24h,
           SUM(r.completion_tokens)                                        AS completion_tokens_24h,
           SUM(r.completion_tokens) FILTER (WHERE r.completion_tokens > 0)
               / NULLIF(SUM(r.latency_ms - COALESCE(r.ttft_ms, 0)) FILTER (WHERE r.completion_tokens > 0) / 1000.0, 0)
                                                                           AS tokens_per_s_24h,
           MAX(r.started_at_ms)                                            AS last_request_at_ms
    FROM r
    GROUP BY r.handle
)
SELECT hd.id       AS handle_id,
       hd.name     AS handle,
       hd.strategy AS strategy,
       (SELECT COUNT(*) FROM handle_targets t WHERE t.handle_id = hd.id) AS targets,
       COALESCE(g.requests_1h, 0)  AS requests_1h,
       COALESCE(g.errors_1h, 0)    AS errors_1h,
       CAST(g.errors_1h AS REAL) / NULLIF(g.requests_1h, 0) AS error_rate_1h,
       g.avg_latency_ms_1h         AS avg_latency_ms_1h,
       g.avg_ttft_ms_1h            AS avg_ttft_ms_1h,
       COALESCE(g.requests_24h, 0) AS requests_24h,
       COALESCE(g.errors_24h, 0)   AS errors_24h,
       CAST(g.errors_24h AS REAL) / NULLIF(g.requests_24h, 0) AS error_rate_24h,
       g.avg_latency_ms_24h        AS avg_latency_ms_24h,
       g.p50_latency_ms_24h        AS p50_latency_ms_24h,
       g.p95_latency_ms_24h        AS p95_latency_ms_24h,
       g.avg_ttft_ms_24h           AS avg_ttft_ms_24h,
       CAST(COALESCE(g.prompt_tokens_24h, 0) AS INTEGER)     AS prompt_tokens_24h,
       CAST(COALESCE(g.completion_tokens_24h, 0) AS INTEGER) AS completion_tokens_24h,
       g.tokens_per_s_24h          AS tokens_per_s_24h,
       g.last_request_at_ms        AS last_request_at_ms
FROM handles hd
LEFT JOIN g ON g.handle = hd.name;

-- Each host's memory against the models placed on it.
CREATE VIEW v_host_capacity AS
SELECT h.id AS host_id, h.name AS host, h.os AS os, h.arch AS arch, h.accelerator AS accelerator,
       h.memory_bytes AS memory_bytes,
       COUNT(m.id) AS models,
       CAST(COALESCE(SUM(m.memory_footprint_bytes), 0) AS INTEGER) AS models_footprint_bytes,
       h.memory_bytes - CAST(COALESCE(SUM(m.memory_footprint_bytes), 0) AS INTEGER) AS headroom_bytes,
       (SELECT COUNT(*) FROM services s WHERE s.host_id = h.id) AS services
FROM hosts h
LEFT JOIN models m ON m.host_id = h.id
GROUP BY h.id, h.name, h.os, h.arch, h.accelerator, h.memory_bytes;
