-- ml_pipeline 0.1.3: switching a pipeline to another model or endpoint without downtime.
\echo Use "ALTER EXTENSION ml_pipeline UPDATE TO '0.1.3'" to load this file. \quit

-- A switch is a shadow pipeline, "<name> (next)", worked like any other, that fills a
-- shadow column (<target>__next) or sink table (<sink>__next); it goes with its pipeline.
ALTER TABLE ml_pipeline.pipelines
    ADD COLUMN shadow_of text REFERENCES ml_pipeline.pipelines ON DELETE CASCADE,
    ADD COLUMN auto_swap boolean NOT NULL DEFAULT false;

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
