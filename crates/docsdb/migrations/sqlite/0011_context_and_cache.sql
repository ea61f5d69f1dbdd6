-- Context windows, the response cache, and where a request's token counts came from.
--
-- `handle_targets.context_length`: the target's context window in tokens, where the models
-- registry does not say (or says more than the backend serves). `handles.context_fallback`:
-- the handle a request goes to when its prompt fits none of this handle's targets.
-- `handles.cache_ttl_ms`: deterministic answers of this handle are kept this long (NULL: not
-- cached). `request_log.usage_source`: `backend` (its `usage`) or `gateway` (counted here,
-- when the backend sent none); `request_log.cache_hit`: answered from the response cache
-- (such rows do not count against a key's token budget).
-- Keep in step with ../postgres/0011_context_and_cache.sql.

ALTER TABLE handle_targets ADD COLUMN context_length INTEGER CHECK (context_length IS NULL OR context_length > 0);
ALTER TABLE handles ADD COLUMN context_fallback TEXT;
ALTER TABLE handles ADD COLUMN cache_ttl_ms INTEGER CHECK (cache_ttl_ms IS NULL OR cache_ttl_ms > 0);
ALTER TABLE request_log ADD COLUMN usage_source TEXT CHECK (usage_source IS NULL OR usage_source IN ('backend', 'gateway'));
ALTER TABLE request_log ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0;
