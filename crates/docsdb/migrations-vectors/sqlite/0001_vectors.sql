-- The vector store (layer-data/vector-db): collections, their payload indexes and points.
-- A database of its own (not the system-docs DB): RAG data grows with use and is backed up
-- on its own schedule.
CREATE TABLE vector_collections (
    name          TEXT    PRIMARY KEY,
    dim           INTEGER NOT NULL,
    distance      TEXT    NOT NULL,
    config        TEXT    NOT NULL,   -- the settings the collection was created with (JSON)
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE vector_payload_indexes (
    collection TEXT NOT NULL REFERENCES vector_collections (name) ON DELETE CASCADE,
    field      TEXT NOT NULL,
    schema     TEXT NOT NULL,         -- the field schema as given (JSON)
    PRIMARY KEY (collection, field)
);

CREATE TABLE vector_points (
    collection    TEXT    NOT NULL REFERENCES vector_collections (name) ON DELETE CASCADE,
    id            TEXT    NOT NULL,   -- a UUID (hyphenated, lower case) or an unsigned integer
    vector        BLOB    NOT NULL,   -- little-endian f32, normalised
    payload       TEXT    NOT NULL,   -- JSON object
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
);
