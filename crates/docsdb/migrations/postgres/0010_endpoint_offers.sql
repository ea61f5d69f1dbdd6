-- What each endpoint offers, and how many bytes each request moved.
--
-- `endpoints.api` may be `anthropic` (a server that speaks Anthropic Messages, which the
-- gateway passes `/v1/messages` to natively). `endpoints.offers` lists the APIs an endpoint
-- serves (a JSON array of chat, completions, embeddings, messages, transcriptions,
-- translations, speech, images, rerank); NULL means what its `api` flavour serves by default.
-- `request_log.request_bytes`/`response_bytes` are the body sizes the gateway passed on.
-- `api_keys.allowed_tools` limits a key on the gateway's MCP endpoint to some tool servers
-- (`web-fetch`) or tools (`web-fetch/fetch`), a JSON array; NULL: every tool.
-- Keep in step with ../sqlite/0010_endpoint_offers.sql.

ALTER TABLE endpoints DROP CONSTRAINT endpoints_api_check;
ALTER TABLE endpoints ADD CONSTRAINT endpoints_api_check
    CHECK (api IN ('openai', 'ovms', 'mlx', 'llamacpp', 'searxng', 'home-assistant', 'mcp', 'anthropic'));
ALTER TABLE endpoints ADD COLUMN offers TEXT;

ALTER TABLE request_log ADD COLUMN request_bytes BIGINT;
ALTER TABLE request_log ADD COLUMN response_bytes BIGINT;

ALTER TABLE api_keys ADD COLUMN allowed_tools TEXT;
