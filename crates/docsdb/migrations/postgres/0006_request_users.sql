-- Who a request was for, as the client that sent it says: Open WebUI forwards its user
-- (X-OpenWebUI-User-Id, -Name, -Email, -Role) and chat (X-OpenWebUI-Chat-Id) with
-- ENABLE_FORWARD_USER_INFO_HEADERS=True. Keep in step with ../sqlite/0006_request_users.sql.

ALTER TABLE request_log ADD COLUMN user_id TEXT;
ALTER TABLE request_log ADD COLUMN user_name TEXT;
ALTER TABLE request_log ADD COLUMN user_email TEXT;
ALTER TABLE request_log ADD COLUMN user_role TEXT;
ALTER TABLE request_log ADD COLUMN chat_id TEXT;

-- Traffic per handle and caller over the last 24 hours, from the raw rows (the monitor keeps
-- them at least 25 hours): one row per (handle, virtual key, user id); a user's name, email
-- and role are the latest the rows carry. Requests without a key or a user have both NULL.
CREATE VIEW v_handle_users AS
SELECT rl.handle,
       rl.key_name,
       rl.user_id,
       MAX(rl.user_name)  AS user_name,
       MAX(rl.user_email) AS user_email,
       MAX(rl.user_role)  AS user_role,
       COUNT(*) AS requests_24h,
       SUM(CASE WHEN rl.status >= 400 OR rl.error_type IS NOT NULL THEN 1 ELSE 0 END) AS errors_24h,
       COUNT(DISTINCT rl.chat_id) AS chats_24h,
       CAST(COALESCE(SUM(rl.prompt_tokens), 0) AS BIGINT)     AS prompt_tokens_24h,
       CAST(COALESCE(SUM(rl.completion_tokens), 0) AS BIGINT) AS completion_tokens_24h,
       AVG(rl.latency_ms) AS avg_latency_ms_24h,
       MAX(rl.started_at_ms) AS last_request_at_ms
FROM request_log rl
WHERE rl.started_at_ms >= CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) - 86400000
  AND rl.handle IS NOT NULL
GROUP BY rl.handle, rl.key_name, rl.user_id;
