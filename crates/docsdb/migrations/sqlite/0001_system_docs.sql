-- The system-docs DB, SQLite dialect. Keep in step with ../postgres/0001_system_docs.sql:
-- the `dialects_define_the_same_schema` test compares tables, columns and views.
-- Times are Unix epoch milliseconds (`*_at_ms`), the same number in both dialects.
-- Flags are INTEGER 0/1 here and BOOLEAN in Postgres (sqlx's Any driver reads SQLite values by
-- their storage class, and a declared BOOLEAN column cannot be read through it at all).

CREATE TABLE hosts (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    description   TEXT,
    address       TEXT,
    os            TEXT,
    arch          TEXT,
    accelerator   TEXT,
    memory_bytes  INTEGER CHECK (memory_bytes IS NULL OR memory_bytes >= 0),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE services (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    layer         TEXT    NOT NULL CHECK (layer IN ('interface', 'gateway', 'inference', 'tools', 'data', 'platform')),
    host_id       INTEGER REFERENCES hosts (id) ON DELETE SET NULL,
    kind          TEXT    NOT NULL DEFAULT 'internal' CHECK (kind IN ('internal', 'external')),
    base_url      TEXT,
    health_path   TEXT,
    unit          TEXT,
    lifecycle     TEXT    NOT NULL DEFAULT 'active' CHECK (lifecycle IN ('planned', 'active', 'retired')),
    description   TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE docs (
    id         INTEGER PRIMARY KEY,
    service_id INTEGER NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL,
    location   TEXT    NOT NULL,
    UNIQUE (service_id, kind, location)
);

CREATE TABLE endpoints (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    service_id    INTEGER REFERENCES services (id) ON DELETE SET NULL,
    base_url      TEXT    NOT NULL UNIQUE,
    api           TEXT    NOT NULL DEFAULT 'openai'
                  CHECK (api IN ('openai', 'ovms', 'mlx', 'llamacpp', 'searxng', 'home-assistant', 'mcp')),
    auth_env      TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE models (
    id                     INTEGER PRIMARY KEY,
    model_id               TEXT    NOT NULL,
    host_id                INTEGER REFERENCES hosts (id) ON DELETE SET NULL,
    family                 TEXT,
    format                 TEXT,
    quantization           TEXT,
    params                 INTEGER,
    context_length         INTEGER,
    size_on_disk_bytes     INTEGER CHECK (size_on_disk_bytes IS NULL OR size_on_disk_bytes >= 0),
    memory_footprint_bytes INTEGER CHECK (memory_footprint_bytes IS NULL OR memory_footprint_bytes >= 0),
    source_path            TEXT,
    cache_path             TEXT,
    created_at_ms          INTEGER NOT NULL,
    updated_at_ms          INTEGER NOT NULL
);
CREATE UNIQUE INDEX models_model_id_host ON models (model_id, COALESCE(host_id, 0));

CREATE TABLE handles (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    description   TEXT,
    strategy      TEXT    NOT NULL DEFAULT 'priority'
                  CHECK (strategy IN ('priority', 'weighted', 'least-busy', 'latency')),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE handle_targets (
    id                    INTEGER PRIMARY KEY,
    handle_id             INTEGER NOT NULL REFERENCES handles (id) ON DELETE CASCADE,
    position              INTEGER NOT NULL,
    endpoint_id           INTEGER NOT NULL REFERENCES endpoints (id) ON DELETE RESTRICT,
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
    UNIQUE (handle_id, position)
);
CREATE INDEX handle_targets_endpoint ON handle_targets (endpoint_id);

CREATE TABLE api_keys (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL,
    key_hash        TEXT    NOT NULL UNIQUE,
    key_prefix      TEXT    NOT NULL,
    allowed_handles TEXT,
    rpm             INTEGER CHECK (rpm IS NULL OR rpm > 0),
    tpm             INTEGER CHECK (tpm IS NULL OR tpm > 0),
    token_budget    INTEGER CHECK (token_budget IS NULL OR token_budget >= 0),
    created_at_ms   INTEGER NOT NULL,
    revoked_at_ms   INTEGER
);
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at_ms IS NULL;

CREATE TABLE health_checks (
    id            INTEGER PRIMARY KEY,
    service_id    INTEGER NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    checked_at_ms INTEGER NOT NULL,
    ok            INTEGER NOT NULL CHECK (ok IN (0, 1)),
    status_code   INTEGER,
    latency_ms    REAL,
    error         TEXT
);
CREATE INDEX health_checks_service_time ON health_checks (service_id, checked_at_ms);
CREATE INDEX health_checks_time ON health_checks (checked_at_ms);

CREATE TABLE request_log (
    id                INTEGER PRIMARY KEY,
    request_id        TEXT    NOT NULL,
    started_at_ms     INTEGER NOT NULL,
    key_name          TEXT,
    route             TEXT    NOT NULL,
    handle            TEXT,
    target            TEXT,
    upstream_model    TEXT,
    status            INTEGER NOT NULL,
    error_type        TEXT,
    attempts          INTEGER NOT NULL DEFAULT 1,
    latency_ms        REAL    NOT NULL,
    ttft_ms           REAL,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    streamed          INTEGER NOT NULL CHECK (streamed IN (0, 1))
);
CREATE INDEX request_log_time ON request_log (started_at_ms);
CREATE INDEX request_log_handle_time ON request_log (handle, started_at_ms);
CREATE INDEX request_log_key_time ON request_log (key_name, started_at_ms);

-- Views the monitor reads. "Now" is computed in SQL so every reader sees the same windows.

CREATE VIEW v_service_status AS
SELECT s.id                AS service_id,
       s.name              AS service,
       s.layer             AS layer,
       h.name              AS host,
       s.kind              AS kind,
       s.lifecycle         AS lifecycle,
       s.base_url          AS base_url,
       s.health_path       AS health_path,
       lc.checked_at_ms    AS last_checked_at_ms,
       lc.ok               AS last_ok,
       lc.status_code      AS last_status_code,
       lc.latency_ms       AS last_latency_ms,
       lc.error            AS last_error,
       CASE
           WHEN s.lifecycle <> 'active' THEN s.lifecycle
           WHEN lc.id IS NULL THEN 'unknown'
           WHEN lc.ok THEN 'up'
           ELSE 'down'
       END                 AS status
FROM services s
LEFT JOIN hosts h ON h.id = s.host_id
LEFT JOIN health_checks lc ON lc.id = (
    SELECT hc.id FROM health_checks hc
    WHERE hc.service_id = s.id
    ORDER BY hc.checked_at_ms DESC, hc.id DESC
    LIMIT 1);

CREATE VIEW v_service_uptime AS
SELECT s.id   AS service_id,
       s.name AS service,
       COUNT(hc.id) FILTER (WHERE hc.checked_at_ms >= n.now_ms - 3600000)              AS checks_1h,
       COUNT(hc.id) FILTER (WHERE hc.checked_at_ms >= n.now_ms - 3600000 AND hc.ok)    AS ok_1h,
       COUNT(hc.id) FILTER (WHERE hc.checked_at_ms >= n.now_ms - 86400000)             AS checks_24h,
       COUNT(hc.id) FILTER (WHERE hc.checked_at_ms >= n.now_ms - 86400000 AND hc.ok)   AS ok_24h,
       COUNT(hc.id)                                                                    AS checks_7d,
       COUNT(hc.id) FILTER (WHERE hc.ok)                                               AS ok_7d,
       CAST(COUNT(hc.id) FILTER (WHERE hc.checked_at_ms >= n.now_ms - 3600000 AND hc.ok) AS REAL)
           / NULLIF(COUNT(hc.id) FILTER (WHERE hc.checked_at_ms >= n.now_ms - 3600000), 0)  AS uptime_1h,
       CAST(COUNT(hc.id) FILTER (WHERE hc.checked_at_ms >= n.now_ms - 86400000 AND hc.ok) AS REAL)
           / NULLIF(COUNT(hc.id) FILTER (WHERE hc.checked_at_ms >= n.now_ms - 86400000), 0) AS uptime_24h,
       CAST(COUNT(hc.id) FILTER (WHERE hc.ok) AS REAL) / NULLIF(COUNT(hc.id), 0)          AS uptime_7d
FROM services s
CROSS JOIN (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now_ms) n
LEFT JOIN health_checks hc
       ON hc.service_id = s.id AND hc.checked_at_ms >= n.now_ms - 604800000
GROUP BY s.id, s.name;

CREATE VIEW v_handle_stats AS
SELECT hd.id   AS handle_id,
       hd.name AS handle,
       hd.strategy AS strategy,
       (SELECT COUNT(*) FROM handle_targets t WHERE t.handle_id = hd.id) AS targets,
       COUNT(r.id) FILTER (WHERE r.started_at_ms >= n.now_ms - 3600000)                  AS requests_1h,
       COUNT(r.id) FILTER (WHERE r.started_at_ms >= n.now_ms - 3600000
                             AND (r.status >= 400 OR r.error_type IS NOT NULL))         AS errors_1h,
       COUNT(r.id)                                                                       AS requests_24h,
       COUNT(r.id) FILTER (WHERE r.status >= 400 OR r.error_type IS NOT NULL)            AS errors_24h,
       CAST(COUNT(r.id) FILTER (WHERE r.status >= 400 OR r.error_type IS NOT NULL) AS REAL)
           / NULLIF(COUNT(r.id), 0)                                                      AS error_rate_24h,
       AVG(r.latency_ms)                                                                 AS avg_latency_ms_24h,
       AVG(r.ttft_ms)                                                                    AS avg_ttft_ms_24h,
       CAST(COALESCE(SUM(r.prompt_tokens), 0) AS INTEGER)                                AS prompt_tokens_24h,
       CAST(COALESCE(SUM(r.completion_tokens), 0) AS INTEGER)                            AS completion_tokens_24h,
       MAX(r.started_at_ms)                                                              AS last_request_at_ms
FROM handles hd
CROSS JOIN (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now_ms) n
LEFT JOIN request_log r
       ON r.handle = hd.name AND r.started_at_ms >= n.now_ms - 86400000
GROUP BY hd.id, hd.name, hd.strategy;

CREATE VIEW v_model_inventory AS
SELECT m.id                     AS id,
       m.model_id               AS model_id,
       h.name                   AS host,
       m.family                 AS family,
       m.format                 AS format,
       m.quantization           AS quantization,
       m.params                 AS params,
       m.context_length         AS context_length,
       m.size_on_disk_bytes     AS size_on_disk_bytes,
       m.memory_footprint_bytes AS memory_footprint_bytes,
       m.source_path            AS source_path,
       m.cache_path             AS cache_path,
       h.memory_bytes           AS host_memory_bytes,
       hf.footprint_bytes       AS host_models_footprint_bytes,
       h.memory_bytes - hf.footprint_bytes AS host_headroom_bytes
FROM models m
LEFT JOIN hosts h ON h.id = m.host_id
LEFT JOIN (SELECT host_id, CAST(SUM(memory_footprint_bytes) AS INTEGER) AS footprint_bytes
           FROM models WHERE host_id IS NOT NULL GROUP BY host_id) hf
       ON hf.host_id = m.host_id
ORDER BY m.memory_footprint_bytes DESC NULLS LAST, m.model_id;

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
WHERE NOT hc.ok
  AND hc.checked_at_ms >= CAST(unixepoch('subsec') * 1000 AS INTEGER) - 86400000;
