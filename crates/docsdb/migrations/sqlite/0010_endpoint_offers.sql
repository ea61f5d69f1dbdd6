-- What each endpoint offers, and how many bytes each request moved.
--
-- `endpoints.api` may be `anthropic` (a server that speaks Anthropic Messages, which the
-- gateway passes `/v1/messages` to natively). `endpoints.offers` lists the APIs an endpoint
-- serves (a JSON array of chat, completions, embeddings, messages, transcriptions,
-- translations, speech, images, rerank); NULL means what its `api` flavour serves by default.
-- `request_log.request_bytes`/`response_bytes` are the body sizes the gateway passed on.
-- `api_keys.allowed_tools` limits a key on the gateway's MCP endpoint to some tool servers
-- (`web-fetch`) or tools (`web-fetch/fetch`), a JSON array; NULL: every tool.
--
-- SQLite cannot change a CHECK constraint in place, and a migration runs inside a
-- transaction (where foreign keys cannot be switched off), so `endpoints` is rebuilt
-- together with `handle_targets`, the one table that references it: the new targets table
-- points at the new endpoints table, the old pair is dropped, and the renames leave the
-- references under the old names. A rename checks every view, so `v_handle_stats` (which
-- counts a handle's targets) is dropped first and made again, as 0005 defined it.
-- Keep in step with ../postgres/0010_endpoint_offers.sql.

DROP VIEW v_handle_stats;

CREATE TABLE endpoints_new (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    service_id    INTEGER REFERENCES services (id) ON DELETE SET NULL,
    base_url      TEXT    NOT NULL UNIQUE,
    api           TEXT    NOT NULL DEFAULT 'openai'
                  CHECK (api IN ('openai', 'ovms', 'mlx', 'llamacpp', 'searxng', 'home-assistant', 'mcp', 'anthropic')),
    auth_env      TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    offers        TEXT
);
INSERT INTO endpoints_new (id, name, service_id, base_url, api, auth_env, created_at_ms, updated_at_ms)
SELECT id, name, service_id, base_url, api, auth_env, created_at_ms, updated_at_ms FROM endpoints;

CREATE TABLE handle_targets_new (
    id                    INTEGER PRIMARY KEY,
    handle_id             INTEGER NOT NULL REFERENCES handles (id) ON DELETE CASCADE,
    position              INTEGER NOT NULL,
    endpoint_id           INTEGER NOT NULL REFERENCES endpoints_new (id) ON DELETE RESTRICT,
    upstream_model        TEXT    NOT NULL,
    priority              INTEGER NOT NULL DEFAULT 0,
    weight                INTEGER NOT NULL DEFAULT 1 CHECK (weight >= 0),
    timeout_ms            INTEGER CHECK (timeout_ms IS NULL OR timeout_ms > 0),
    connect_timeout_ms    INTEGER CHECK (connect_timeout_ms IS NULL OR connect_timeout_ms > 0),
    first_byte_timeout_ms INTEGER CHECK (first_byte_timeout_ms IS NULL OR first_byte_timeout_ms > 0),
    idle_timeout_ms       INTEGER CHECK (idle_timeout_ms IS NULL OR idle_timeout_ms > 0),
    rpm                   INTEGER CHECK (rpm IS NULL OR rpm > 0),
    tpm                   INTEGER CHECK (tpm IS NULL OR tpm > 0),
    params                TEXT,
    max_tools_bytes       INTEGER CHECK (max_tools_bytes IS NULL OR max_tools_bytes >= 0),
    over_tools            TEXT    NOT NULL DEFAULT 'drop' CHECK (over_tools IN ('drop', 'refuse')),
    UNIQUE (handle_id, position)
);
INSERT INTO handle_targets_new
SELECT id, handle_id, position, endpoint_id, upstream_model, priority, weight, timeout_ms,
       connect_timeout_ms, first_byte_timeout_ms, idle_timeout_ms, rpm, tpm, params,
       max_tools_bytes, over_tools
FROM handle_targets;

DROP TABLE handle_targets;
DROP TABLE endpoints;
ALTER TABLE handle_targets_new RENAME TO handle_targets;
ALTER TABLE endpoints_new RENAME TO endpoints;
CREATE INDEX handle_targets_endpoint ON handle_targets (endpoint_id);

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

ALTER TABLE request_log ADD COLUMN request_bytes INTEGER;
ALTER TABLE request_log ADD COLUMN response_bytes INTEGER;

ALTER TABLE api_keys ADD COLUMN allowed_tools TEXT;
