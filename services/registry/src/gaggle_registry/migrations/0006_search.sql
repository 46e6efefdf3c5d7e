-- Free-text search (`q`) on controller id and name without an extension: a GIN index over the
-- distinct lower-case three-character pieces of both. A term of three characters or more can
-- only occur in a row that holds every piece of the term, so the index narrows the rows down
-- and ILIKE confirms them (what pg_trgm does, which not every PostgreSQL build ships).
CREATE FUNCTION text_grams(value text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE COST 1000 AS $$
    SELECT ARRAY(
        SELECT DISTINCT substr(v, i, 3)
        FROM (SELECT lower(value) AS v) AS lowered, generate_series(1, length(v) - 2) AS i
    )
$$;

CREATE FUNCTION device_grams(controller_id text, name text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE COST 2000 AS $$
    SELECT registry.text_grams(controller_id) || coalesce(registry.text_grams(name), '{}'::text[])
$$;

CREATE INDEX devices_search ON devices USING gin (device_grams(controller_id, name));
