-- A target's limit on tool definitions: requests whose `tools` JSON is larger than
-- `max_tools_bytes` are sent without them (`drop`) or passed to the next target (`refuse`).
-- Keep in step with ../sqlite/0007_target_tools.sql.

ALTER TABLE handle_targets ADD COLUMN max_tools_bytes BIGINT CHECK (max_tools_bytes IS NULL OR max_tools_bytes >= 0);
ALTER TABLE handle_targets ADD COLUMN over_tools TEXT NOT NULL DEFAULT 'drop' CHECK (over_tools IN ('drop', 'refuse'));
