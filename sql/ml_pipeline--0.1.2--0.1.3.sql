-- ml_pipeline 0.1.3: switching a pipeline to another model or endpoint without downtime;
-- a schedule in the declaration; the status view shows what each pipeline is declared as.
\echo Use "ALTER EXTENSION ml_pipeline UPDATE TO '0.1.3'" to load this file. \quit

-- A switch is a shadow pipeline, "<name> (next)", worked like any other, that fills a
-- shadow column (<target>__next) or sink table (<sink>__next); it goes with its pipeline.
ALTER TABLE ml_pipeline.pipelines
    ADD COLUMN shadow_of text REFERENCES ml_pipeline.pipelines ON DELETE CASCADE,
    ADD COLUMN auto_swap boolean NOT NULL DEFAULT false,
    ADD COLUMN schedule text,                        -- of its pg_cron job; NULL: none
    ADD COLUMN backfill_seen bigint NOT NULL DEFAULT 0;  -- rows the backfill went through

-- The queue loses its foreign key, whose check per row took a quarter of a backfill's
-- time; a pipeline's queue goes with it through this trigger instead.
ALTER TABLE ml_pipeline.queue DROP CONSTRAINT queue_pipeline_fkey;
CREATE FUNCTION ml_pipeline_internal.forget_queues() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM ml_pipeline.queue q USING ml_pipeline_gone g WHERE q.pipeline = g.name;
    RETURN NULL;
END
$$;
CREATE TRIGGER forget_queues AFTER DELETE ON ml_pipeline.pipelines
    REFERENCING OLD TABLE AS ml_pipeline_gone
    FOR EACH STATEMENT EXECUTE FUNCTION ml_pipeline_internal.forget_queues();

-- alter also sets the schedule: a pg_cron job of the caller's (so it runs as the caller).
DROP FUNCTION ml_pipeline.alter(text, integer, integer);
CREATE FUNCTION ml_pipeline.alter(
    name text,
    batch_size integer DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    schedule text DEFAULT NULL
) RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.alter(name, batch_size, max_attempts, schedule)
$$;

-- The status view, with each pipeline's declaration.
DROP VIEW ml_pipeline.status;
DROP FUNCTION ml_pipeline_internal.status();
CREATE FUNCTION ml_pipeline_internal.status() RETURNS TABLE (
    name text, source regclass, target text, paused boolean, backfill_done boolean,
    total bigint, done bigint, pending bigint, failed bigint, oldest_pending interval,
    rows_per_second double precision, last_error jsonb, expression text, sink regclass,
    batch_size integer, max_attempts integer, schedule text, shadow_of text
)
    LANGUAGE ml_pipeline_plpython STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    return pipeline.status()
$$;
CREATE VIEW ml_pipeline.status AS SELECT * FROM ml_pipeline_internal.status();
GRANT SELECT ON ml_pipeline.status TO PUBLIC;

-- Starts a switch to another expression (another model, another endpoint). Runs as the
-- caller, in the caller's search_path, as create does.
CREATE FUNCTION ml_pipeline.switch(name text, expression text, auto_swap boolean DEFAULT true)
RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.switch(name, expression, auto_swap)
$$;

-- Swaps a complete shadow in, in one transaction (the worker does it when auto_swap);
-- runs as the caller, who owns the tables it renames.
CREATE FUNCTION ml_pipeline.swap(name text) RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.swap(name)
$$;

-- Drops the shadow of a switch, before its swap: the pipeline goes on as it was.
CREATE FUNCTION ml_pipeline.cancel_switch(name text) RETURNS void
    LANGUAGE ml_pipeline_plpython VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
    #BOOT
    from azure_ai_sim import pipeline
    pipeline.cancel_switch(name)
$$;

COMMENT ON FUNCTION ml_pipeline.switch(text, text, boolean) IS
    'Fills a shadow column or table with a new expression, then swaps it in atomically';
COMMENT ON FUNCTION ml_pipeline.swap(text) IS
    'Swaps the complete shadow of a switch in, in one transaction';
COMMENT ON FUNCTION ml_pipeline.cancel_switch(text) IS
    'Drops the shadow of a switch before its swap; the old results stay';
COMMENT ON FUNCTION ml_pipeline.alter(text, integer, integer, text) IS
    'Changes the batch size, the attempts or the pg_cron schedule ('''' for none) of a pipeline';
COMMENT ON FUNCTION ml_pipeline_internal.status() IS 'The rows of the view ml_pipeline.status';
COMMENT ON VIEW ml_pipeline.status IS
    'Per pipeline: rows, done, pending, failed, oldest pending change, rows/s, last error, declaration';
COMMENT ON FUNCTION ml_pipeline_internal.forget_queues() IS
    'Drops the queues of deleted pipelines (the queue has no foreign key, for speed)';
COMMENT ON TRIGGER forget_queues ON ml_pipeline.pipelines IS
    'Drops the queues of deleted pipelines';
