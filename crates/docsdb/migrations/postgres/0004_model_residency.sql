-- Which models are loaded now, and by which service: the inference services write a row when
-- a model is in memory and delete it when it leaves, so the inventory and the host capacity
-- show what is loaded and how much memory is left, not only what is registered.

CREATE TABLE model_residency (
    model_row_id BIGINT PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    service      TEXT    NOT NULL,
    loaded_at_ms BIGINT    NOT NULL,
    -- The memory it takes while loaded (the registered footprint when the service knows no better).
    memory_bytes BIGINT
);

CREATE INDEX model_residency_service ON model_residency (service);

DROP VIEW v_model_inventory;
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
       h.memory_bytes - hf.footprint_bytes AS host_headroom_bytes,
       CAST(CASE WHEN r.model_row_id IS NULL THEN 0 ELSE 1 END AS BIGINT) AS loaded,
       r.service                AS loaded_by,
       r.loaded_at_ms           AS loaded_at_ms,
       CAST(COALESCE(hl.loaded_bytes, 0) AS BIGINT) AS host_loaded_bytes,
       h.memory_bytes - COALESCE(hl.loaded_bytes, 0) AS host_free_bytes
FROM models m
LEFT JOIN hosts h ON h.id = m.host_id
LEFT JOIN (SELECT host_id, CAST(SUM(memory_footprint_bytes) AS BIGINT) AS footprint_bytes
           FROM models WHERE host_id IS NOT NULL GROUP BY host_id) hf
       ON hf.host_id = m.host_id
LEFT JOIN model_residency r ON r.model_row_id = m.id
LEFT JOIN (SELECT lm.host_id,
                  CAST(SUM(COALESCE(lr.memory_bytes, lm.memory_footprint_bytes, 0)) AS BIGINT) AS loaded_bytes
           FROM model_residency lr JOIN models lm ON lm.id = lr.model_row_id
           WHERE lm.host_id IS NOT NULL GROUP BY lm.host_id) hl
       ON hl.host_id = m.host_id;

DROP VIEW v_host_capacity;
CREATE VIEW v_host_capacity AS
SELECT h.id AS host_id, h.name AS host, h.os AS os, h.arch AS arch, h.accelerator AS accelerator,
       h.memory_bytes AS memory_bytes,
       COUNT(m.id) AS models,
       CAST(COALESCE(SUM(m.memory_footprint_bytes), 0) AS BIGINT) AS models_footprint_bytes,
       h.memory_bytes - CAST(COALESCE(SUM(m.memory_footprint_bytes), 0) AS BIGINT) AS headroom_bytes,
       (SELECT COUNT(*) FROM services s WHERE s.host_id = h.id) AS services,
       CAST(COUNT(r.model_row_id) AS BIGINT) AS loaded_models,
       CAST(COALESCE(SUM(CASE WHEN r.model_row_id IS NULL THEN 0
                              ELSE COALESCE(r.memory_bytes, m.memory_footprint_bytes, 0) END), 0) AS BIGINT) AS loaded_bytes,
       h.memory_bytes - CAST(COALESCE(SUM(CASE WHEN r.model_row_id IS NULL THEN 0
                              ELSE COALESCE(r.memory_bytes, m.memory_footprint_bytes, 0) END), 0) AS BIGINT) AS free_bytes
FROM hosts h
LEFT JOIN models m ON m.host_id = h.id
LEFT JOIN model_residency r ON r.model_row_id = m.id
GROUP BY h.id, h.name, h.os, h.arch, h.accelerator, h.memory_bytes;
