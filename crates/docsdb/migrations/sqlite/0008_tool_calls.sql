-- Tool calls: one row per MCP tool call made for a client — by an agent run (tiny-agents) or
-- through the gateway's tool endpoint — linked to the request log by request_id. Raw rows are
-- kept for the monitor's retention, like the request log's. Keep in step with
-- ../postgres/0008_tool_calls.sql.

CREATE TABLE tool_calls (
    id            INTEGER PRIMARY KEY,
    request_id    TEXT    NOT NULL,
    started_at_ms INTEGER NOT NULL,
    -- Who called: `agent:NAME` for an agent run, the route for the gateway.
    caller        TEXT    NOT NULL,
    key_name      TEXT,
    -- The MCP server that owns the tool (the name it gives itself, else its URL or command);
    -- NULL when no server has a tool of that name.
    server        TEXT,
    tool          TEXT    NOT NULL,
    duration_ms   REAL    NOT NULL,
    ok            INTEGER NOT NULL CHECK (ok IN (0, 1)),
    error         TEXT
);
CREATE INDEX tool_calls_time ON tool_calls (started_at_ms);
CREATE INDEX tool_calls_request ON tool_calls (request_id);

-- Calls per tool over the last 24 hours.
CREATE VIEW v_tool_stats AS
SELECT tc.server,
       tc.tool,
       COUNT(*) AS calls_24h,
       SUM(CASE WHEN tc.ok = 0 THEN 1 ELSE 0 END) AS errors_24h,
       COUNT(DISTINCT tc.caller) AS callers_24h,
       AVG(tc.duration_ms) AS avg_duration_ms_24h,
       MAX(tc.duration_ms) AS max_duration_ms_24h,
       MAX(tc.started_at_ms) AS last_call_at_ms
FROM tool_calls tc
WHERE tc.started_at_ms >= CAST(unixepoch('subsec') * 1000 AS INTEGER) - 86400000
GROUP BY tc.server, tc.tool;

-- Failed tool calls join the recent errors.
DROP VIEW v_recent_errors;
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
  AND hc.checked_at_ms >= CAST(unixepoch('subsec') * 1000 AS INTEGER) - 86400000
UNION ALL
SELECT 'tool'            AS source,
       tc.started_at_ms  AS at_ms,
       tc.tool           AS subject,
       tc.server         AS target,
       NULL              AS status,
       tc.error          AS error,
       tc.request_id     AS request_id
FROM tool_calls tc
WHERE tc.ok = 0
  AND tc.started_at_ms >= CAST(unixepoch('subsec') * 1000 AS INTEGER) - 86400000;
