-- Stored responses of the gateway's Responses API (`store: true`), so that a later request
-- can continue one with `previous_response_id`. Bounded: rows past their `expires_at_ms` and
-- beyond the gateway's count limit are deleted as new ones are written. A response is read
-- back only with the key that stored it. Keep in step with ../sqlite/0009_responses.sql.

CREATE TABLE responses (
    id             TEXT    PRIMARY KEY,
    created_at_ms  BIGINT  NOT NULL,
    expires_at_ms  BIGINT  NOT NULL,
    key_name       TEXT,
    model          TEXT    NOT NULL,
    -- The conversation's items (input, then this response's output), JSON.
    items          TEXT    NOT NULL,
    -- The response object, JSON.
    response       TEXT    NOT NULL
);
CREATE INDEX responses_created ON responses (created_at_ms);
CREATE INDEX responses_expires ON responses (expires_at_ms);
