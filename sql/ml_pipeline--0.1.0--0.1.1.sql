-- ml_pipeline 0.1.1: a pipeline goes when its source (or its sink) is dropped, instead of
-- failing every worker and the status view from then on.
\echo Use "ALTER EXTENSION ml_pipeline UPDATE TO '0.1.1'" to load this file. \quit

CREATE FUNCTION ml_pipeline_internal.forget_dropped() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass('ml_pipeline.pipelines') IS NULL THEN
        RETURN;  -- DROP EXTENSION ml_pipeline itself
    END IF;
    DELETE FROM ml_pipeline.pipelines p
    USING pg_event_trigger_dropped_objects() d
    WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0
      AND d.objid IN (p.source::oid, p.sink::oid);
END
$$;

CREATE EVENT TRIGGER ml_pipeline_forget_dropped ON sql_drop
    EXECUTE FUNCTION ml_pipeline_internal.forget_dropped();

COMMENT ON FUNCTION ml_pipeline_internal.forget_dropped() IS
    'Drops the pipelines of a dropped table (their source or sink), with their queues';
COMMENT ON EVENT TRIGGER ml_pipeline_forget_dropped IS
    'Drops the pipelines of a dropped table (ml_pipeline)';
