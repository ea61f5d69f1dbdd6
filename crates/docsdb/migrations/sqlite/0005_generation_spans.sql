-- A handle's tokens per second comes from a measured generation span, or is not shown.
-- Before, the span was guessed as latency minus time to first token, which for a plain
-- (non-streamed) answer is about zero: one short answer made the rate absurd.

ALTER TABLE request_log ADD COLUMN generation_ms REAL;
ALTER TABLE request_rollups ADD COLUMN generation_tokens INTEGER NOT NULL DEFAULT 0;
-- Folded spans were the old guess: dropped, so old hours show no rate rather than a wrong one.
UPDATE request_rollups SET generation_ms = 0;

DROP VIEW v_handle_stats;
-- Traffic per handle over the last hour (raw rows) and day (rollups and raw rows).
-- Tokens/s is tokens over measured generation time: the spans the gateway logged
-- (`generation_ms`, from the backend's own `timings` or a stream's first and last
-- chunk) in requests that generated at least two tokens. Requests without a span
-- (plain answers without timings, streams the client cut) add nothing to it.
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
    SELECT rl.handle, rl.started_at_ms, rl.status, rl.error_type, rl.latency_ms, rl.ttft_ms, rl.prompt_tokens, rl.completion_tokens, rl.generation_ms
    FROM request_log rl, w
    WHERE rl.started_at_ms >= MAX(w.s24, w.wm) AND rl.handle IS NOT NULL
    UNION ALL
    SELECT rl.handle, rl.started_at_ms, rl.status, rl.error_type, rl.latency_ms, rl.ttft_ms, rl.prompt_tokens, rl.completion_tokens, rl.generation_ms
    FROM request_log rl, w
    WHERE rl.started_at_ms >= w.s24 AND rl.started_at_ms < MIN(w.e24, w.wm) AND rl.handle IS NOT NULL
    UNION ALL
    SELECT rl.handle, rl.started_at_ms, rl.status, rl.error_type, rl.latency_ms, rl.ttft_ms, rl.prompt_tokens, rl.completion_tokens, rl.generation_ms
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
           COALESCE(SUM(raw.generation_ms)
                    FILTER (WHERE raw.generation_ms > 0 AND raw.completion_tokens > 1), 0) AS generation_ms,
           COALESCE(SUM(raw.completion_tokens)
                    FILTER (WHERE raw.generation_ms > 0 AND raw.completion_tokens > 1), 0) AS generation_tokens,
           MAX(raw.started_at_ms) AS last_at_ms
    FROM raw GROUP BY raw.handle
    UNION ALL
    SELECT r.handle, r.requests, r.errors, r.latency_sum_ms, r.ttft_sum_ms, r.ttft_samples,
           r.prompt_tokens, r.completion_tokens, r.generation_ms, r.generation_tokens, r.last_at_ms
    FROM request_rollups r, w WHERE r.hour_ms >= w.e24 AND r.hour_ms < w.wm
), h24 AS (
    SELECT d.handle, SUM(d.requests) AS requests, SUM(d.errors) AS errors,
           SUM(d.latency_sum_ms) / NULLIF(SUM(d.requests), 0) AS avg_latency_ms,
           SUM(d.ttft_sum_ms) / NULLIF(SUM(d.ttft_samples), 0) AS avg_ttft_ms,
           SUM(d.prompt_tokens) AS prompt_tokens, SUM(d.completion_tokens) AS completion_tokens,
           SUM(d.generation_tokens) / NULLIF(SUM(d.generation_ms) / 1000.0, 0) AS tokens_per_s,
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
