-- ml_pipeline 0.1.0: keep a column of a table (or a sink table keyed like it) equal to one
-- of our functions of each row, as rows come and change. A pipeline is declared once;
-- triggers queue the keys of the rows whose inputs changed; ml_pipeline.run drains the
-- queue in batches through batch mode, a transaction per batch, several workers at once.
\echo Use "CREATE EXTENSION ml_pipeline" to load this file. \quit

CREATE SCHEMA ml_pipeline;
CREATE SCHEMA ml_pipeline_internal;

-- PL/Python under a language name of our own, as in azure_ai (see its install script).
CREATE FUNCTION ml_pipeline_internal.plpython_handler() RETURNS language_handler
    LANGUAGE c AS '$libdir/plpython3', 'plpython3_call_handler';
CREATE FUNCTION ml_pipeline_internal.plpython_validator(oid) RETURNS void
    LANGUAGE c STRICT AS '$libdir/plpython3', 'plpython3_validator';
CREATE LANGUAGE ml_pipeline_plpython
    HANDLER ml_pipeline_internal.plpython_handler
    VALIDATOR ml_pipeline_internal.plpython_validator;

-- The declarations. The SQL of the triggers (capture_*) is made from the catalog by
-- ml_pipeline_internal.register, never taken from a caller: the trigger runs it as the
-- extension's owner.
CREATE TABLE ml_pipeline.pipelines (
    name text PRIMARY KEY,
    owner regrole NOT NULL,
    source regclass NOT NULL,
    key_columns text[] NOT NULL,       -- the source's primary key
    input_columns text[] NOT NULL,     -- the columns the expression reads
    expression text NOT NULL,
    search_path text NOT NULL,         -- the expression's, when it was declared
    target_column text NOT NULL,       -- a column of the source, or of the sink
    sink regclass,                     -- NULL: the target is a column of the source
    batch_size integer NOT NULL CHECK (batch_size BETWEEN 1 AND 100000),
    max_attempts integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    paused boolean NOT NULL DEFAULT false,
    backfill_after jsonb,              -- the last key the backfill queued; NULL: none yet
    backfill_done boolean NOT NULL DEFAULT false,
    capture_insert text NOT NULL,
    capture_update text NOT NULL,
    capture_delete text NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('ml_pipeline.pipelines', '');

-- Rows to (re)compute: one per key, whatever the changes since it was queued (version
-- counts them). A worker leases a batch; a row whose version moved on meanwhile is done
-- again with its newest value.
CREATE TABLE ml_pipeline.queue (
    pipeline text NOT NULL REFERENCES ml_pipeline.pipelines ON DELETE CASCADE,
    key jsonb NOT NULL,                -- the source's key, as a JSON array
    version bigint NOT NULL DEFAULT 1,
    queued timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    not_before timestamptz NOT NULL DEFAULT now(),
    leased_until timestamptz,
    last_error jsonb,
    PRIMARY KEY (pipeline, key)
);
CREATE INDEX ON ml_pipeline.queue (pipeline, not_before);
SELECT pg_catalog.pg_extension_config_dump('ml_pipeline.queue', '');

-- Rows that kept failing: their last error, until replayed.
CREATE TABLE ml_pipeline.dead_letters (
    pipeline text NOT NULL REFERENCES ml_pipeline.pipelines ON DELETE CASCADE,
    key jsonb NOT NULL,
    attempts integer NOT NULL,
    sqlstate text NOT NULL,
    message text NOT NULL,
    failed timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, key)
);
SELECT pg_catalog.pg_extension_config_dump('ml_pipeline.dead_letters', '');

-- Each committed batch, for the status view's rate and last error; an hour is kept.
CREATE TABLE ml_pipeline.batches (
    pipeline text NOT NULL REFERENCES ml_pipeline.pipelines ON DELETE CASCADE,
    finished timestamptz NOT NULL DEFAULT now(),
    done integer NOT NULL,
    failed integer NOT NULL,
    last_error jsonb
);
CREATE INDEX ON ml_pipeline.batches (pipeline, finished);

-- Declares a pipeline: target (a column of source, added if missing; or of sink, a table
-- keyed like source, made if missing) = expression, over source's columns, for every row
-- now and from now on. Runs as the caller, who must own source, and in the caller's
-- search_path: the expression is checked with the caller's rights, and keeps the
-- search_path it was written for (what it calls is schema-qualified otherwise).
CREATE FUNCTION ml_pipeline.create(
    name text,
    source regclass,
    expression text,
    target text,
    sink text DEFAULT NULL,
    batch_size integer DEFAULT 1000,
    max_attempts integer DEFAULT 5
) RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.create(name, source, expression, target, sink, batch_size, max_attempts)
$$;

-- The steps below touch only the extension's tables, which they do as its owner, for
-- the pipeline's owner (a member of its role) or a superuser.
CREATE FUNCTION ml_pipeline.alter(
    name text,
    batch_size integer DEFAULT NULL,
    max_attempts integer DEFAULT NULL
) RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.alter(name, batch_size, max_attempts)
$$;

CREATE FUNCTION ml_pipeline.pause(name text) RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.set_paused(name, True)
$$;

CREATE FUNCTION ml_pipeline.resume(name text) RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.set_paused(name, False)
$$;

-- Queues the dead letters of a pipeline again (those of one key, or all); how many.
CREATE FUNCTION ml_pipeline.replay(name text, key jsonb DEFAULT NULL) RETURNS bigint
    LANGUAGE ml_pipeline_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    return pipeline.replay(name, key)
$$;

-- Drops the declaration, its triggers and its queue; the results stay. Runs as the
-- caller, who must own the source (its triggers go).
CREATE FUNCTION ml_pipeline.drop(name text) RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.drop(name)
$$;

-- Works the queues (of one pipeline, or of all that are not paused) until they are empty,
-- or for max_seconds, or (continuous) until cancelled, a transaction per batch. Runs as
-- the caller: the expression is computed, and the results written, with its rights.
CREATE PROCEDURE ml_pipeline.run(
    name text DEFAULT NULL,
    max_seconds double precision DEFAULT NULL,
    continuous boolean DEFAULT false
)
    LANGUAGE ml_pipeline_plpython
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.run(name, max_seconds, continuous)
$$;

-- Per pipeline of the caller's: the source's rows, those computed, queued and dead, the
-- age of the oldest queued change, rows per second over the last minute, the last error.
CREATE FUNCTION ml_pipeline_internal.status() RETURNS TABLE (
    name text, source regclass, target text, paused boolean, backfill_done boolean,
    total bigint, done bigint, pending bigint, failed bigint, oldest_pending interval,
    rows_per_second double precision, last_error jsonb
)
    LANGUAGE ml_pipeline_plpython STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    return pipeline.status()
$$;

CREATE VIEW ml_pipeline.status AS SELECT * FROM ml_pipeline_internal.status();

-- What create and drop ask of the extension's owner: the declaration (its triggers'
-- SQL made here, from the catalog), and its removal.
CREATE FUNCTION ml_pipeline_internal.register(
    name text, source regclass, input_columns text[], expression text, search_path text,
    target text, sink regclass, batch_size integer, max_attempts integer
) RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.register(name, source, input_columns, expression, search_path, target, sink,
                      batch_size, max_attempts)
$$;

CREATE FUNCTION ml_pipeline_internal.unregister(name text) RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.unregister(name)
$$;

-- What a worker asks of the extension's owner: the next keys to queue from the source
-- (the backfill), a lease on a batch of queued keys, and what became of them.
CREATE FUNCTION ml_pipeline_internal.claim(name text, work jsonb) RETURNS jsonb
    LANGUAGE ml_pipeline_plpython VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    return pipeline.claim(name, work)
$$;

-- The trigger of every pipeline's source: statement-level, with transition tables, so
-- that a COPY of a million rows queues them in one statement.
CREATE FUNCTION ml_pipeline_internal.capture() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pipeline ml_pipeline.pipelines;
BEGIN
    SELECT * INTO pipeline FROM ml_pipeline.pipelines p WHERE p.name = TG_ARGV[0];
    IF NOT FOUND OR pipeline.source <> TG_RELID THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        EXECUTE pipeline.capture_insert USING pipeline.name;
    ELSIF TG_OP = 'UPDATE' THEN
        EXECUTE pipeline.capture_update USING pipeline.name;
    ELSE
        EXECUTE pipeline.capture_delete USING pipeline.name;
    END IF;
    RETURN NULL;
END
$$;

-- Privileges: anyone may declare pipelines over the tables they own, and work and watch
-- their own; the extension's tables are reached only through its functions.
GRANT USAGE ON SCHEMA ml_pipeline, ml_pipeline_internal TO PUBLIC;
GRANT SELECT ON ml_pipeline.status TO PUBLIC;

COMMENT ON SCHEMA ml_pipeline IS 'Pipelines that keep ML results current (ml_pipeline)';
COMMENT ON SCHEMA ml_pipeline_internal IS 'Internal helpers of ml_pipeline; not for direct use';
COMMENT ON FUNCTION ml_pipeline_internal.plpython_handler() IS
    'Call handler of the language ml_pipeline_plpython (PL/Python 3)';
COMMENT ON FUNCTION ml_pipeline_internal.plpython_validator(oid) IS
    'Validator of the language ml_pipeline_plpython (PL/Python 3)';
COMMENT ON LANGUAGE ml_pipeline_plpython IS
    'PL/Python 3 for the functions of ml_pipeline; untrusted: only superusers write in it';
COMMENT ON TABLE ml_pipeline.pipelines IS
    'Declared pipelines: target = expression over the source''s rows';
COMMENT ON TABLE ml_pipeline.queue IS 'Keys of source rows whose results are to be computed';
COMMENT ON TABLE ml_pipeline.dead_letters IS
    'Rows whose computation kept failing, with the last error; ml_pipeline.replay queues them';
COMMENT ON TABLE ml_pipeline.batches IS 'Batches committed in the last hour, per pipeline';
COMMENT ON FUNCTION ml_pipeline.create(text, regclass, text, text, text, integer, integer) IS
    'Declares a pipeline: target = expression of each row of source, now and from now on';
COMMENT ON FUNCTION ml_pipeline.alter(text, integer, integer) IS
    'Changes the batch size or the attempts of a pipeline';
COMMENT ON FUNCTION ml_pipeline.pause(text) IS 'Stops the workers from taking the pipeline''s rows';
COMMENT ON FUNCTION ml_pipeline.resume(text) IS 'Lets the workers take the pipeline''s rows again';
COMMENT ON FUNCTION ml_pipeline.drop(text) IS
    'Drops a pipeline, its triggers and its queue; its results stay';
COMMENT ON FUNCTION ml_pipeline.replay(text, jsonb) IS
    'Queues dead letters again (of one key, or all); returns how many';
COMMENT ON PROCEDURE ml_pipeline.run(text, double precision, boolean) IS
    'Works the queues in batches, a transaction each, until empty, max_seconds, or cancelled';
COMMENT ON FUNCTION ml_pipeline_internal.status() IS 'The rows of the view ml_pipeline.status';
COMMENT ON VIEW ml_pipeline.status IS
    'Per pipeline: rows, done, pending, failed, oldest pending change, rows/s, last error';
COMMENT ON FUNCTION ml_pipeline_internal.register(
    text, regclass, text[], text, text, text, regclass, integer, integer
)
IS 'Stores a declaration and makes its triggers'' SQL, for the source''s owner';
COMMENT ON FUNCTION ml_pipeline_internal.unregister(text) IS
    'Removes a declaration, for its owner';
COMMENT ON FUNCTION ml_pipeline_internal.claim(text, jsonb) IS
    'A worker''s step on the queue: backfill, lease a batch, or record its outcome';
COMMENT ON FUNCTION ml_pipeline_internal.capture() IS
    'The statement trigger that queues the keys of changed rows';
