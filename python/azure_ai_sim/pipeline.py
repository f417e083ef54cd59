"""ml_pipeline: keep a column of a table (or a sink table keyed like it) equal to one of our
functions of each row, as the Aurora docs advise ("materialize the result ... so that the
service isn't invoked more than once") but without a hand-written job.

- Change capture: statement triggers with transition tables queue the keys of rows whose
  input columns changed (one queue row per key, its version counting the changes), and
  drop those of deleted rows. An UPDATE of other columns queues nothing.
- Backfill: the existing rows without a result are computed in key order, a batch at a
  time, without queue rows: one worker at a time holds the declaration's row while its
  batch runs, and commits the results with the new position (a batch that fails or dies
  is done again). A row that fails goes to the queue, for its retries.
- Work: a batch of queued keys, taken with session advisory locks (a worker that dies
  lets go of them; none blocks a writer of the source), is computed in one query, so that
  batch mode sends it several requests at a time; the results are written and the keys
  dropped from the queue in one transaction, unless a newer change came meanwhile.
- Failures: a row whose call fails is retried later with backoff, its attempts counted;
  a permanent error, or too many attempts, puts it among the dead letters.

What runs a user's expression, or writes the user's tables, runs as the caller (create,
run, drop); what touches only the extension's tables runs as its owner, for the
pipeline's owner (a member of its role) or a superuser.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from azure_ai_sim import errors, pg

T = TypeVar("T")

IDLE_SECONDS = 0.1  # continuous mode: how often an empty queue is looked at again
LEASE_PAGES = 10  # a worker looks this many batches deep for keys no other worker holds
# SQLSTATEs worth another attempt: timeouts, throttling, the service's or the network's
# failures, and PostgreSQL's serialization failures and deadlocks.
TRANSIENT = re.compile(r"57014|53\w\w\w|58000|58030|40001|40P01")
MAX_BACKOFF_SECONDS = 300.0
# A run that is not continuous waits this long at most (or until its max_seconds) for a
# row's next attempt; later ones are left to the next run.
RETRY_WAIT_SECONDS = 60.0
NEW, OLD = "ml_pipeline_new", "ml_pipeline_old"  # the transition tables
# A switch: the shadow pipeline is named "<name> (next)", and fills "<target>__next" (or
# the table "<sink>__next"); the swap renames the old one "...__old" and drops it.
SHADOW, NEXT, OLD_SUFFIX = " (next)", "__next", "__old"
SCHEDULED_SECONDS = 55  # how long a scheduled worker runs at most: a minute's job
PROGRESS_SECONDS = 2.0  # how often an interactive run says how far it got
CLAIM_PREFIX = "ml_pipeline.run: "  # how claim's own errors begin
CTE = "ml_pipeline_batch"

# The keys this session holds the advisory locks of, by pipeline: run lets go of them
# whatever way it ends (session locks outlive a rolled-back transaction).
_held: dict[str, set[str]] = {}


def _error(message: str, sqlstate: str = "22023") -> errors.Error:
    return errors.Error(f"ml_pipeline: {message}", sqlstate=sqlstate)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _one(query: str, *args: Any, types: tuple[str, ...] = ()) -> dict | None:
    rows = pg.execute(query, types, args)
    return rows[0] if rows else None


# --- declaring -------------------------------------------------------------------------


@pg.sql_function("ml_pipeline.create")
def create(
    name: str | None, source: str | None, expression: str | None, target: str | None,
    sink: str | None, batch_size: int | None, max_attempts: int | None,
) -> None:  # fmt: skip
    """As the caller, in the caller's search_path (which the expression keeps): checks the
    expression over the source, adds the target column (or makes the sink), has the
    extension's owner store the declaration, and makes the source's triggers."""
    for argument, value in (("name", name), ("source", source), ("expression", expression),
                            ("target", target)):  # fmt: skip
        if not value:
            raise _error(f"{argument} must not be NULL or empty")
    assert name and source and expression and target
    table = _one("SELECT $1::regclass::oid AS oid, $1::regclass::text AS name", source,
                 types=("text",))  # fmt: skip
    assert table is not None
    _declare(name, table, expression, target, sink, batch_size or 1000, max_attempts or 5)


def _declare(
    name: str, table: dict, expression: str, target: str, sink: str | None, batch_size: int,
    max_attempts: int,
) -> None:  # fmt: skip
    keys = _key_columns(table["oid"])
    inputs, kind = _inputs(table["name"], expression)
    if target in inputs and sink is None:
        raise _error(f'target "{target}" is an input of the expression')
    sink_oid = None
    if sink is None:
        _add_column(table["name"], target, kind)
    else:
        sink_oid = _sink(sink, table["oid"], keys, target, kind)
    pg.execute(
        "SELECT ml_pipeline_internal.register($1, $2::regclass, $3, $4,"
        " current_setting('search_path'), $5, $6::regclass, $7, $8)",
        ("text", "oid", "text[]", "text", "text", "oid", "integer", "integer"),
        (name, table["oid"], inputs, expression, target, sink_oid, batch_size, max_attempts),
    )  # fmt: skip
    _triggers(name, table["name"])


def _triggers(name: str, source: str, drop: bool = False) -> None:
    """The source's statement triggers that queue a pipeline's work (or their removal)."""
    for operation, transitions in (
        ("INSERT", f"NEW TABLE AS {NEW}"),
        ("UPDATE", f"OLD TABLE AS {OLD} NEW TABLE AS {NEW}"),
        ("DELETE", f"OLD TABLE AS {OLD}"),
    ):
        trigger = _quote(f"ml_pipeline {name} {operation.lower()}"[:63])
        if drop:
            _run(f"DROP TRIGGER IF EXISTS {trigger} ON {source}")
            continue
        _run(
            f"CREATE TRIGGER {trigger} AFTER {operation} ON {source} REFERENCING"
            f" {transitions} FOR EACH STATEMENT EXECUTE FUNCTION"
            f" ml_pipeline_internal.capture({_literal(name)})"
        )


def _run(statement: str) -> None:
    """A statement made here once (DDL): not worth a saved plan."""
    import plpy

    plpy.execute(statement)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _key_columns(table: int) -> list[str]:
    row = _one(
        "SELECT array_agg(a.attname::text ORDER BY k.n) AS keys FROM pg_index i,"
        " unnest(i.indkey) WITH ORDINALITY k(attnum, n)"
        " JOIN pg_attribute a ON a.attrelid = $1 AND a.attnum = k.attnum"
        " WHERE i.indrelid = $1 AND i.indisprimary",
        table, types=("oid",),
    )  # fmt: skip
    if row is None or not row["keys"]:
        raise _error("the source needs a primary key, which names its rows in the queue")
    return row["keys"]


def _inputs(table: str, expression: str) -> tuple[list[str], str]:
    """The columns of the source that the expression reads, and its result's type: from a
    temporary view of it, checked with the caller's rights."""
    import plpy

    view = "pg_temp.ml_pipeline_expression"
    try:
        with plpy.subtransaction():
            plpy.execute(f"CREATE TEMP VIEW ml_pipeline_expression AS SELECT ({expression})"
                         f" AS value FROM {table}")  # fmt: skip
    except plpy.SPIError as failure:
        raise _error(f"the expression does not work over {table}: {failure}") from None
    try:
        columns = pg.execute(
            "SELECT DISTINCT a.attname::text AS name FROM pg_rewrite r"
            " JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid"
            " JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
            " WHERE r.ev_class = $1::regclass AND d.refobjid = $2::regclass"
            " AND d.refobjsubid > 0 ORDER BY 1",
            ("text", "text"), (view, table),
        )  # fmt: skip
        kind = _column_kind(view, "value")
    finally:
        plpy.execute(f"DROP VIEW {view}")
    if not columns:
        raise _error("the expression reads no column of the source")
    assert kind is not None
    return [column["name"] for column in columns], kind


def _column_kind(table: str, column: str) -> str | None:
    """The type of a column (with its modifier, as vector(384)), or None if there is none."""
    row = _one(
        "SELECT format_type(atttypid, atttypmod) AS kind FROM pg_attribute"
        " WHERE attrelid = $1::regclass AND attname = $2 AND attnum > 0 AND NOT attisdropped",
        table, column, types=("text", "text"),
    )  # fmt: skip
    return row["kind"] if row else None


def _add_column(table: str, column: str, kind: str) -> None:
    if _column_kind(table, column) is None:
        _run(f"ALTER TABLE {table} ADD COLUMN {_quote(column)} {kind}")


def _sink(sink: str, source: int, keys: list[str], target: str, kind: str) -> int:
    """The sink table (made, if missing, with the source's key and the target)."""
    if _one("SELECT to_regclass($1) AS oid", sink, types=("text",))["oid"] is None:  # type: ignore[index]
        name = _one("SELECT $1::regclass::text AS name", source, types=("oid",))["name"]  # type: ignore[index]
        kinds = _key_kinds(name, keys)
        definition = ", ".join(
            f"{_quote(key)} {kind}" for key, kind in zip(keys, kinds, strict=True)
        )
        key_list = ", ".join(map(_quote, keys))
        _run(
            f"CREATE TABLE {sink} ({definition}, {_quote(target)} {kind},"
            f" PRIMARY KEY ({key_list}))"
        )
    return _one("SELECT $1::regclass::oid AS oid", sink, types=("text",))["oid"]  # type: ignore[index]


@pg.sql_function("ml_pipeline.create")
def register(
    name: str, source: str, inputs: list[str], expression: str, search_path: str,
    target: str, sink: str | None, batch_size: int, max_attempts: int,
) -> None:  # fmt: skip
    """As the extension's owner: stores the declaration, with its triggers' SQL made here
    from the catalog, for the owner of the source (and of the sink)."""
    caller = _caller()
    for table in filter(None, (source, sink)):
        owner = _one(
            "SELECT pg_has_role($1, relowner, 'MEMBER') AS owns FROM pg_class"
            " WHERE oid = $2::regclass",
            caller, table, types=("oid", "text"),
        )  # fmt: skip
        if not owner or not owner["owns"]:
            raise _error(f"only the owner of {table} may declare a pipeline over it", "42501")
    keys = _key_columns(_one("SELECT $1::regclass::oid AS oid", source, types=("text",))["oid"])  # type: ignore[index]
    known = {
        row["name"]
        for row in pg.execute(
            "SELECT attname::text AS name FROM pg_attribute WHERE attrelid = $1::regclass"
            " AND attnum > 0 AND NOT attisdropped",
            ("text",), (source,),
        )
    }  # fmt: skip
    if not set(inputs) <= known:
        raise _error(f"{source} has no column {', '.join(sorted(set(inputs) - known))}")
    insert, update, delete = _capture(keys, inputs, sink)
    try:
        pg.execute(
            "INSERT INTO ml_pipeline.pipelines (name, owner, source, key_columns,"
            " input_columns, expression, search_path, target_column, sink, batch_size,"
            " max_attempts, capture_insert, capture_update, capture_delete)"
            " VALUES ($1, $2::oid::regrole, $3::regclass, $4, $5, $6, $7, $8, $9::regclass,"
            " $10, $11, $12, $13, $14)",
            ("text", "oid", "text", "text[]", "text[]", "text", "text", "text", "text",
             "integer", "integer", "text", "text", "text"),
            (name, caller, source, keys, inputs, expression, search_path, target, sink,
             batch_size, max_attempts, insert, update, delete),
        )  # fmt: skip
    except Exception as failure:
        if getattr(failure, "sqlstate", None) == "23505":
            raise _error(f'a pipeline "{name}" exists already', "42710") from None
        raise


def _key(keys: list[str], alias: str) -> str:
    """A row's key as the queue holds it: a JSON array of its key columns."""
    return "jsonb_build_array(" + ", ".join(f"{alias}.{_quote(k)}" for k in keys) + ")"


def _capture(keys: list[str], inputs: list[str], sink: str | None) -> tuple[str, str, str]:
    """The SQL of the source's triggers: queue the keys of new rows and of rows whose
    inputs changed (a changed key is a deleted row and a new one); drop deleted rows'
    work, dead letters and sink rows."""
    queue = (
        "INSERT INTO ml_pipeline.queue AS q (pipeline, key) SELECT $1, key FROM changed"
        " ON CONFLICT (pipeline, key) DO UPDATE SET version = q.version + 1,"
        " queued = now(), attempts = 0, not_before = now(), last_error = NULL"
    )
    revive = (
        "revived AS (DELETE FROM ml_pipeline.dead_letters d WHERE d.pipeline = $1"
        " AND d.key IN (SELECT key FROM changed))"
    )
    insert = f"WITH changed AS (SELECT {_key(keys, 'n')} AS key FROM {NEW} n), {revive} {queue}"
    same_key = " AND ".join(f"o.{_quote(k)} = n.{_quote(k)}" for k in keys)
    old_inputs = "ROW(" + ", ".join(f"o.{_quote(c)}" for c in inputs) + ")"
    new_inputs = "ROW(" + ", ".join(f"n.{_quote(c)}" for c in inputs) + ")"
    update = (
        f"WITH changed AS (SELECT {_key(keys, 'n')} AS key FROM {NEW} n"
        f" LEFT JOIN {OLD} o ON {same_key}"
        f" WHERE o.{_quote(keys[0])} IS NULL OR {old_inputs} IS DISTINCT FROM {new_inputs}),"
        f" gone AS (SELECT {_key(keys, 'o')} AS key FROM {OLD} o"
        f" WHERE NOT EXISTS (SELECT FROM {NEW} n WHERE {same_key})),"
        f" {revive}, {_drop('gone', keys, sink)} {queue}"
    )
    delete = (
        f"WITH gone AS (SELECT {_key(keys, 'o')} AS key FROM {OLD} o),"
        f" {_drop('gone', keys, sink)} SELECT"
    )
    return insert, update, delete


def _drop(gone: str, keys: list[str], sink: str | None) -> str:
    """CTEs that drop the queued work, the dead letters and the sink rows of keys gone."""
    ctes = [
        f"unqueued AS (DELETE FROM ml_pipeline.queue q WHERE q.pipeline = $1"
        f" AND q.key IN (SELECT key FROM {gone}))",
        f"forgotten AS (DELETE FROM ml_pipeline.dead_letters d WHERE d.pipeline = $1"
        f" AND d.key IN (SELECT key FROM {gone}))",
    ]
    if sink:
        ctes.append(
            f"unsunk AS (DELETE FROM {sink} s WHERE {_key(keys, 's')} IN (SELECT key FROM {gone}))"
        )
    return ", ".join(ctes)


def _caller() -> int:
    """The role that called our SECURITY DEFINER function (after SET ROLE)."""
    return pg.outer_user()


def _check_owner(name: str) -> dict:
    """The declaration, if the caller is (a member of) its owner, or a superuser."""
    row = _one(
        "SELECT p.*, pg_has_role($2, p.owner, 'MEMBER') AS owns"
        " FROM ml_pipeline.pipelines p WHERE p.name = $1",
        name, _caller(), types=("text", "oid"),
    )  # fmt: skip
    if row is None:
        raise _error(f'no pipeline "{name}"', "42704")
    if not row["owns"]:
        raise _error(f'pipeline "{name}" belongs to {row["owner"]}', "42501")
    return row


@pg.sql_function("ml_pipeline.alter")
def alter(
    name: str, batch_size: int | None, max_attempts: int | None, schedule: str | None
) -> None:
    """As the caller: the extension's owner stores the change; a schedule is a pg_cron
    job of the caller's, named "ml_pipeline <name>" ('' unschedules it)."""
    _claim(name, {"step": "alter", "batch_size": batch_size, "max_attempts": max_attempts,
                  "schedule": schedule})  # fmt: skip
    if schedule is not None:
        _schedule(name, schedule.strip())


def _altered(declaration: dict, work: dict) -> dict:
    pg.execute(
        "UPDATE ml_pipeline.pipelines SET batch_size = coalesce($2, batch_size),"
        " max_attempts = coalesce($3, max_attempts),"
        " schedule = CASE WHEN $4::text IS NULL THEN schedule ELSE nullif(btrim($4), '') END"
        " WHERE name = $1",
        ("text", "integer", "integer", "text"),
        (declaration["name"], work["batch_size"], work["max_attempts"], work["schedule"]),
    )  # fmt: skip
    return {}


def _schedule(name: str, schedule: str, required: bool = True) -> None:
    """Schedules (or, for '', unschedules) the pipeline's pg_cron job, which runs a worker
    for up to 55 seconds; pg_cron's functions are only in its own database (without
    them, and not required, nothing is done)."""
    job = f"ml_pipeline {name}"
    command = f"CALL ml_pipeline.run({_literal(name)}, max_seconds => {SCHEDULED_SECONDS})"
    cron = _one(
        "SELECT to_regprocedure('cron.schedule(text, text, text)') IS NOT NULL AS here,"
        " current_database() AS db,"
        " coalesce(current_setting('cron.database_name', true), 'postgres') AS home"
    )  # fmt: skip
    assert cron is not None
    if not cron["here"]:
        there = (
            f"SELECT cron.schedule_in_database({_literal(job)}, {_literal(schedule)},"
            f" {_literal(command)}, {_literal(cron['db'])})"
            if schedule else f"SELECT cron.unschedule({_literal(job)})"
        )  # fmt: skip
        where = f'pg_cron is not in this database but in "{cron["home"]}" (cron.database_name)'
        if not required:
            import plpy

            plpy.notice(f"ml_pipeline: {where}: its job may remain", hint=f"There, run: {there};")
            return
        raise errors.Error(f"ml_pipeline: {where}", sqlstate="55000", hint=f"There, run: {there};")
    if schedule:
        pg.execute("SELECT cron.schedule($1, $2, $3)", ("text", "text", "text"),
                   (job, schedule, command))  # fmt: skip
    else:
        pg.execute(
            "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = $1"
            " AND username = current_user AND database = current_database()",
            ("text",), (job,),
        )  # fmt: skip


@pg.sql_function("ml_pipeline.pause")
def set_paused(name: str, paused: bool) -> None:
    _check_owner(name)
    pg.execute("UPDATE ml_pipeline.pipelines SET paused = $2 WHERE $1 IN (name, shadow_of)",
               ("text", "boolean"), (name, paused))  # fmt: skip


@pg.sql_function("ml_pipeline.replay")
def replay(name: str, key: str | None) -> int:
    _check_owner(name)
    row = _one(
        "WITH replayed AS (DELETE FROM ml_pipeline.dead_letters d WHERE d.pipeline = $1"
        " AND ($2::jsonb IS NULL OR d.key = $2::jsonb) RETURNING d.key),"
        " queued AS (INSERT INTO ml_pipeline.queue AS q (pipeline, key)"
        " SELECT $1, key FROM replayed ON CONFLICT (pipeline, key) DO UPDATE"
        " SET attempts = 0, not_before = now() RETURNING 1)"
        " SELECT count(*) AS n FROM queued",
        name, key, types=("text", "text"),
    )  # fmt: skip
    return row["n"] if row else 0


@pg.sql_function("ml_pipeline.drop")
def drop(name: str) -> None:
    """As the caller: the source's triggers go; then the declaration and its queue."""
    row = _one("SELECT source::text AS source FROM ml_pipeline.pipelines WHERE name = $1",
               name, types=("text",))  # fmt: skip
    if row is None:
        raise _error(f'no pipeline "{name}"', "42704")
    described = _claim(name, {"step": "describe"})
    if described["shadow"]:
        _cancel_switch(name)
    if described["schedule"]:
        _schedule(name, "", required=False)
    # the triggers first: DROP TRIGGER waits for the writers whose capture may still queue
    _triggers(name, row["source"], drop=True)
    pg.execute("SELECT ml_pipeline_internal.unregister($1)", ("text",), (name,))


@pg.sql_function("ml_pipeline.drop")
def unregister(name: str) -> None:
    _check_owner(name)
    pg.execute("DELETE FROM ml_pipeline.pipelines WHERE name = $1", ("text",), (name,))


# --- switching to another model -----------------------------------------------------------


@pg.sql_function("ml_pipeline.switch")
def switch(name: str | None, expression: str | None, auto_swap: bool | None) -> None:
    """As the caller, in the caller's search_path: a shadow pipeline, "<name> (next)",
    computes the new expression into a shadow column (<target>__next) or sink table
    (<sink>__next), queued and worked like any pipeline, while queries read the old
    results. Once it has every row, a worker swaps it in (unless auto_swap is false)."""
    for argument, value in (("name", name), ("expression", expression)):
        if not value:
            raise _error(f"{argument} must not be NULL or empty")
    assert name and expression
    main = _claim(name, {"step": "describe"})
    if main["shadow_of"]:
        raise _error(f'"{name}" is the shadow of "{main["shadow_of"]}": switch that one')
    if main["shadow"]:
        raise _error(f'"{name}" is switching already: swap or cancel_switch first', "55000")
    table = _one("SELECT $1::regclass::oid AS oid, $1::regclass::text AS name", main["source"],
                 types=("text",))  # fmt: skip
    assert table is not None
    target, sink = main["target_column"], None
    if main["sink"]:
        sink = _beside(main["sink"], NEXT)
        exists = _one("SELECT to_regclass($1) IS NOT NULL AS it", sink, types=("text",))
        if exists["it"] and _one(f"SELECT EXISTS (SELECT FROM {sink}) AS filled")["filled"]:  # type: ignore[index]
            raise _error(f"{sink} exists and has rows: the shadow table must be new or empty")
    else:
        target += NEXT
        if _column_kind(table["name"], target) is not None:
            raise _error(f'{table["name"]} has a column "{target}" already: drop it first')
    _declare(name + SHADOW, table, expression, target, sink, main["batch_size"],
             main["max_attempts"])  # fmt: skip
    _claim(name, {"step": "shadow", "auto_swap": auto_swap is not False})


def _beside(table: str, suffix: str) -> str:
    """The qualified name of a table beside this one, its name with a suffix."""
    row = _one(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname || $2) AS name,"
        " length(c.relname || $2) AS length FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::regclass",
        table, suffix, types=("text", "text"),
    )  # fmt: skip
    assert row is not None
    if row["length"] > 63:
        raise _error(f"the name of {table} is too long for a table named beside it")
    return row["name"]


@pg.sql_function("ml_pipeline.swap")
def swap(name: str) -> None:
    _swap(name)


def _swap(name: str) -> None:
    """As the caller, in one transaction, once the shadow has every row: the shadow
    column (or table) takes the target's name and the old one is dropped, and the
    pipeline takes the shadow's expression. The source (and sinks) are locked for it,
    waiting a second at most for the statements that use them."""
    import plpy

    main = _claim(name, {"step": "describe"})
    if not main["shadow"]:
        raise _error(f'"{name}" is not switching', "55000")
    shadow = _claim(main["shadow"], {"step": "describe"})
    # a second at most for each lock (the SET LOCAL ends with the transaction, or with
    # ml_pipeline.swap, which has a SET clause); a wait past it is 55P03: another round
    _run("SELECT pg_catalog.set_config('lock_timeout', '1s', true)")
    for table in filter(None, (main["source"], main["sink"], shadow["sink"])):
        try:
            _run(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        except plpy.SPIError as failure:
            if failure.sqlstate != "55P03":
                raise
            raise _error(f"{table} stayed in use for a second: try the swap again", "55P03") \
                from None  # fmt: skip
    _claim(name, {"step": "swap"})  # checks that the shadow is complete
    _triggers(main["shadow"], main["source"], drop=True)
    if main["sink"]:
        old = _beside(main["sink"], OLD_SUFFIX)
        relname = _relation_name(main["sink"])
        _run(f"ALTER TABLE {main['sink']} RENAME TO {_quote(relname + OLD_SUFFIX)}")
        _run(f"ALTER TABLE {shadow['sink']} RENAME TO {_quote(relname)}")
        _run(f"DROP TABLE {old}")
        return
    source, target = main["source"], main["target_column"]
    _run(f"ALTER TABLE {source} RENAME {_quote(target)} TO {_quote(target + OLD_SUFFIX)}")
    _run(f"ALTER TABLE {source} RENAME {_quote(target + NEXT)} TO {_quote(target)}")
    _run(f"ALTER TABLE {source} DROP COLUMN {_quote(target + OLD_SUFFIX)}")


@pg.sql_function("ml_pipeline.cancel_switch")
def cancel_switch(name: str) -> None:
    _cancel_switch(name)


def _cancel_switch(name: str) -> None:
    """As the caller: the shadow pipeline, its triggers (first, as drop does) and its
    column (or table) go."""
    main = _claim(name, {"step": "describe"})
    if main["shadow"]:
        _triggers(main["shadow"], main["source"], drop=True)
    shadow = _claim(name, {"step": "unshadow"})
    if shadow["sink"]:
        _run(f"DROP TABLE {shadow['sink']}")
    else:
        _run(f"ALTER TABLE {shadow['source']} DROP COLUMN {_quote(shadow['target_column'])}")


def _swap_when_complete(name: str) -> bool:
    """A worker's swap of a switch whose shadow found nothing left to do; whether it
    swapped. A lock it did not get within a second, or rows still pending (others'
    work), wait for the next round; another failure (a view that reads the old column,
    say) turns the automatic swap off, with a WARNING and the shadow's last error."""
    import plpy

    try:
        with plpy.subtransaction():
            _swap(name)
        return True
    except (plpy.SPIError, errors.Error) as failure:
        if failure.sqlstate in ("55P03", "55000"):
            return False
        failed = _failure(failure)
        _claim(name, {"step": "swap failed", **failed})
        plpy.warning(f"ml_pipeline: the swap of \"{name}\" failed, and waits for"
                     f" ml_pipeline.swap: {failed['message']}")  # fmt: skip
        return False


# --- working ---------------------------------------------------------------------------


@pg.sql_function("ml_pipeline.run")
def run(name: str | None, max_seconds: float | None, continuous: bool | None) -> None:
    """Works the queues until they are empty (or max_seconds, or forever if continuous),
    committing after every step."""
    if max_seconds is not None and max_seconds < 0:
        raise _error("max_seconds must not be negative")
    end = None if max_seconds is None else time.monotonic() + max_seconds
    try:
        _work(name, end, bool(continuous))
    finally:
        for each, keys in list(_held.items()):
            _unlock(each, list(keys))


def _work(name: str | None, end: float | None, continuous: bool) -> None:
    import plpy

    progress = _Progress()
    try:
        while end is None or time.monotonic() < end:
            listing = _claim(name, {"step": "names"})
            worked = False
            for each in listing["names"]:
                computed = _unless_gone(_step, each)
                if computed is not None:
                    worked = True
                    progress.add(each, computed)
                elif each in listing["swaps"]:  # a shadow with nothing left to do
                    worked |= _swap_when_complete(listing["swaps"][each])
                plpy.commit()
            if not worked:
                limit = RETRY_WAIT_SECONDS if end is None else end - time.monotonic()
                wait = IDLE_SECONDS if continuous else _next_attempt(listing["names"])
                if wait is None or (not continuous and wait > limit):
                    return
                pg.sleep(min(wait, limit))
    finally:
        progress.tell()


def _next_attempt(names: list[str]) -> float | None:
    """Seconds until the first retry that these pipelines' queues wait for, if any."""
    answers = [_unless_gone(_claim, name, {"step": "next attempt"}) for name in names]
    waits = [answer["seconds"] for answer in answers if answer and answer["seconds"] is not None]
    return min(waits, default=None)


class _Progress:
    """NOTICEs of how far a run got, per pipeline: every PROGRESS_SECONDS, and when it
    ends, for whoever watches an interactive backfill."""

    def __init__(self) -> None:
        self.started = self.told = time.monotonic()
        self.computed: dict[str, int] = {}

    def add(self, name: str, computed: int) -> None:
        self.computed[name] = self.computed.get(name, 0) + computed
        if time.monotonic() - self.told >= PROGRESS_SECONDS:
            self.tell()

    def tell(self) -> None:
        import plpy

        self.told = time.monotonic()
        seconds = max(self.told - self.started, 1e-3)
        for name, computed in self.computed.items():
            try:
                left = _claim(name, {"step": "progress"})
            except (errors.Error, plpy.SPIError):  # dropped meanwhile, or the run failed
                continue
            share = 100.0 * computed / max(computed + left["left"], 1)
            plpy.notice(
                f'ml_pipeline: "{name}": {computed:,} rows computed ({share:.0f}%),'
                f" {left['left']:,} {'or so ' if left['estimated'] else ''}to go,"
                f" {computed / seconds:,.0f} rows/s"
            )


def _unless_gone(step: Callable[..., T], *args: Any) -> T | None:
    """A step of a pipeline, or None if the pipeline went since the round began (dropped,
    or a shadow swapped in by another worker)."""
    try:
        return step(*args)
    except errors.Error as gone:
        if gone.sqlstate != "42704":
            raise
        return None


def _step(name: str) -> int | None:
    """One batch of a pipeline, of the backfill or of queued keys: computed, and written
    in the same transaction. How many rows were computed; None when there was nothing
    to do."""
    lease = _claim(name, {"step": "lease"})
    if lease.get("paused"):
        return None
    keys: list[str] = lease["keys"]
    backfill = lease.get("backfill")
    if not keys and backfill is None:
        return None
    declaration = lease["pipeline"]
    versions = dict(zip(keys, lease["versions"], strict=True))
    results, failures, gone = _compute(declaration, keys) if keys else ({}, {}, [])
    _write(declaration, results, failures, gone, versions, backfill)
    return len(results)


def _claim(name: str | None, work: dict) -> dict:
    """A step of the extension's owner; its refusals are the caller's own errors."""
    import plpy

    try:
        row = _one("SELECT ml_pipeline_internal.claim($1, $2) AS answer", name,
                   json.dumps(work), types=("text", "jsonb"))  # fmt: skip
    except plpy.SPIError as refused:
        message = str(refused)
        if not message.startswith(CLAIM_PREFIX):
            raise
        raise errors.Error(message.removeprefix(CLAIM_PREFIX), sqlstate=refused.sqlstate) \
            from None  # fmt: skip
    assert row is not None
    return json.loads(row["answer"])


def _compute(
    declaration: dict, keys: list[str]
) -> tuple[dict[str, str | None], dict[str, dict], list[str]]:
    """The expression over the rows of these keys, as the caller: a query per run of rows
    up to a failing one (batch mode stops at the first row that fails and gives the rows
    before it), the failing row's key being the next of the rows that exist. Also the
    keys whose rows are gone."""
    import plpy

    source, key_columns = declaration["source"], declaration["key_columns"]
    alias, kinds = _quote(declaration["relation"]), declaration["key_kinds"]
    typed = ", ".join(
        f"(k ->> {i})::{kind}" for i, kind in enumerate(kinds)
    )  # the queue's JSON keys as the source's key types
    columns = ", ".join(f"s.{_quote(k)}" for k in key_columns)
    rows = (
        f"SELECT s.* FROM {source} s WHERE ({columns}) IN"
        f" (SELECT {typed} FROM unnest($1::jsonb[]) k) ORDER BY {columns}"
    )
    compute = (
        f"WITH {CTE} AS MATERIALIZED ({rows}) SELECT {_key(key_columns, alias)}::text AS key,"
        f" ({declaration['expression']})::text AS value FROM {CTE} AS {alias}"
    )
    plan = plpy.prepare(compute, ["jsonb[]"])
    results: dict[str, str | None] = {}
    failures: dict[str, dict] = {}
    left = keys
    while left:
        done: list[tuple[str, str | None]] = []
        try:
            with plpy.subtransaction():  # the expression in the search_path it was made in
                pg.execute("SELECT set_config('search_path', $1, true)", ("text",),
                           (declaration["search_path"],))  # fmt: skip
                for row in plpy.cursor(plan, [left]):
                    done.append((row["key"], row["value"]))
            left = []
        except plpy.SPIError as failure:
            existing = [  # in the order the rows were computed in
                row["key"] for row in pg.execute(
                    f"SELECT {_key(key_columns, 's')}::text AS key FROM ({rows}) s",
                    ("jsonb[]",), (left,),
                )
            ]  # fmt: skip
            if len(existing) > len(done):
                failures[existing[len(done)]] = _failure(failure)
            left = existing[len(done) + 1 :]
        results.update(done)
    gone = [key for key in keys if key not in results and key not in failures]
    return results, failures, gone


def _failure(error: Any) -> dict:
    """What the queue keeps of a row's error (a plpy.SPIError): its SQLSTATE, message, and
    the wait that its DETAIL asks for (the service's Retry-After, or a budget's renewal)."""
    spidata = getattr(error, "spidata", None)  # (sqlerrcode, detail, hint, ...)
    detail = spidata[1] if isinstance(spidata, tuple) and len(spidata) > 1 else None
    return {
        "sqlstate": error.sqlstate or "XX000", "message": str(error),
        "retry_after": errors.retry_after_seconds(detail),
    }  # fmt: skip


def _relation_name(source: str) -> str:
    row = _one("SELECT relname::text AS name FROM pg_class WHERE oid = $1::regclass", source,
               types=("text",))  # fmt: skip
    assert row is not None
    return row["name"]


def _key_kinds(source: str, keys: list[str]) -> list[str]:
    return [_column_kind(source, key) or "" for key in keys]


def _write(
    declaration: dict, results: dict[str, str | None], failures: dict[str, dict],
    gone: list[str], versions: dict, backfill: dict | None,
) -> None:  # fmt: skip
    """In one transaction: the keys still current leave the queue (or the backfill moves
    on; the extension's owner), and their results go to the target (the caller);
    failures are counted."""
    import plpy

    finished = [*results, *gone]
    done = _claim(declaration["name"], {
        "step": "done", "keys": finished, "versions": [versions[key] for key in finished],
        "backfill": backfill,
    })["current"]  # fmt: skip
    present = [key for key in done if key in results]
    if present:
        values = [results[key] for key in present]
        try:
            with plpy.subtransaction():
                _store(declaration, present, values)
        except plpy.SPIError as failure:  # a result the target does not take, say
            for key in present:
                failures[key] = _failure(failure)
    if failures:
        _claim(declaration["name"], {
            "step": "failed",
            "failures": [
                {**failure, "key": key, "version": versions[key],
                 "transient": bool(TRANSIENT.fullmatch(failure["sqlstate"]))}
                for key, failure in failures.items()
            ],
        })  # fmt: skip


def _store(declaration: dict, keys: list[str], values: list[str | None]) -> None:
    """The results, as the target column's type, into the source's rows or the sink."""
    source, key_columns = declaration["source"], declaration["key_columns"]
    table = declaration["sink"] or source
    target = _quote(declaration["target_column"])
    kind = declaration["target_kind"]
    typed = [f"(r.key ->> {i})::{kind}" for i, kind in enumerate(declaration["key_kinds"])]
    results = "unnest($1::jsonb[], $2::text[]) r(key, value)"
    matches = " AND ".join(
        f"s.{_quote(k)} = {value}" for k, value in zip(key_columns, typed, strict=True)
    )
    if declaration["sink"]:
        # Only for source rows still there, locked until we commit: a DELETE that came
        # first leaves no sink row behind; one that comes later waits, then its trigger
        # deletes the sink row.
        names = ", ".join(map(_quote, key_columns))
        pg.execute(
            f"WITH live AS (SELECT {', '.join(f's.{_quote(k)}' for k in key_columns)},"
            f" r.value FROM {results} JOIN {source} s ON {matches} FOR KEY SHARE OF s)"
            f" INSERT INTO {table} ({names}, {target}) SELECT {names}, value::{kind} FROM live"
            f" ON CONFLICT ({names}) DO UPDATE SET {target} = excluded.{target}",
            ("jsonb[]", "text[]"), (keys, values),
        )  # fmt: skip
        return
    pg.execute(
        f"UPDATE {table} s SET {target} = r.value::{kind} FROM {results} WHERE {matches}",
        ("jsonb[]", "text[]"), (keys, values),
    )  # fmt: skip


@pg.sql_function("ml_pipeline.run")
def claim(name: str | None, work_text: str) -> str:
    """As the extension's owner, for the pipeline's owner: a worker's step on the queue
    (or the names of the caller's pipelines that are not paused)."""
    work = json.loads(work_text)
    step = work["step"]
    if step == "names":
        if name is not None:
            _check_owner(name)
        rows = pg.execute(
            "SELECT name, shadow_of, auto_swap FROM ml_pipeline.pipelines WHERE NOT paused"
            " AND pg_has_role($1, owner, 'MEMBER')"
            " AND ($2::text IS NULL OR $2 IN (name, shadow_of)) ORDER BY name",
            ("oid", "text"), (_caller(), name),
        )  # fmt: skip
        return json.dumps({
            "names": [row["name"] for row in rows],
            "swaps": {row["name"]: row["shadow_of"] for row in rows if row["auto_swap"]},
        })  # fmt: skip
    declaration = _check_owner(name)
    if step in OWNER_STEPS:
        return json.dumps(OWNER_STEPS[step](declaration, work))
    if step == "lease":
        return json.dumps(_lease(declaration))
    if step == "done":
        return json.dumps({
            "current": _done(declaration, work["keys"], work["versions"], work["backfill"])
        })  # fmt: skip
    if step == "failed":
        _failed(declaration, work["failures"])
        return "{}"
    raise _error(f"unknown step {step!r}")


def _progress(declaration: dict, work: dict) -> dict:
    """The rows left: those queued, and until the backfill is done, an estimate of those
    it has yet to queue (the planner's row count less the rows it went through)."""
    row = _one(
        "SELECT (SELECT count(*) FROM ml_pipeline.queue WHERE pipeline = $1) AS queued,"
        " (SELECT reltuples::bigint FROM pg_class WHERE oid = $2::regclass) AS rows",
        declaration["name"], declaration["source"], types=("text", "text"),
    )  # fmt: skip
    assert row is not None
    unqueued = 0 if declaration["backfill_done"] else max(
        row["rows"] - declaration["backfill_seen"], 0
    )  # fmt: skip
    return {"left": row["queued"] + unqueued, "estimated": not declaration["backfill_done"]}


def _next_attempt_of(declaration: dict, work: dict) -> dict:
    """Seconds until the first queued key that waits for a retry is due; None when none
    waits (any other queued key is due, and held by another worker)."""
    row = _one(
        "SELECT extract(epoch FROM min(not_before) - clock_timestamp())::float8 AS seconds"
        " FROM ml_pipeline.queue WHERE pipeline = $1 AND not_before > clock_timestamp()",
        declaration["name"], types=("text",),
    )  # fmt: skip
    assert row is not None  # an aggregate's one row
    return {"seconds": row["seconds"]}


DESCRIBED = (
    "name", "source", "target_column", "sink", "batch_size", "max_attempts", "shadow_of",
    "schedule",
)  # fmt: skip


def _describe(declaration: dict, work: dict) -> dict:
    """The declaration, and the name of its shadow if it is switching."""
    shadow = _one("SELECT name FROM ml_pipeline.pipelines WHERE shadow_of = $1",
                  declaration["name"], types=("text",))  # fmt: skip
    described = {k: declaration[k] for k in DESCRIBED}
    return {**described, "shadow": shadow["name"] if shadow else None}  # fmt: skip


def _shadow(declaration: dict, work: dict) -> dict:
    """Makes the pipeline just declared as "<name> (next)" the shadow of this one."""
    _check_owner(declaration["name"] + SHADOW)
    pg.execute(
        "UPDATE ml_pipeline.pipelines SET shadow_of = $1, auto_swap = $2 WHERE name = $3",
        ("text", "boolean", "text"),
        (declaration["name"], work["auto_swap"], declaration["name"] + SHADOW),
    )  # fmt: skip
    return {}


def _swapped(declaration: dict, work: dict) -> dict:
    """If the shadow has every row: the pipeline takes its expression, inputs, capture
    and sink; the old queue and dead letters go (the shadow computed those rows); the
    shadow's declaration goes."""
    name = declaration["name"]
    left = _one(
        "SELECT s.name, s.backfill_done,"
        " (SELECT count(*) FROM ml_pipeline.queue q WHERE q.pipeline = s.name) AS queued,"
        " (SELECT count(*) FROM ml_pipeline.dead_letters d WHERE d.pipeline = s.name) AS dead"
        " FROM ml_pipeline.pipelines s WHERE s.shadow_of = $1",
        name, types=("text",),
    )  # fmt: skip
    if left is None:
        raise _error(f'"{name}" is not switching', "55000")
    if not left["backfill_done"] or left["queued"] or left["dead"]:
        raise _error(
            f'the shadow of "{name}" is not complete: {left["queued"]} rows queued,'
            f" {left['dead']} dead letters"
            + ("" if left["backfill_done"] else ", its backfill not done"),
            "55000",
        )  # fmt: skip
    inputs = _one(
        "SELECT input_columns FROM ml_pipeline.pipelines WHERE shadow_of = $1",
        name,
        types=("text",),
    )["input_columns"]  # type: ignore[index]
    # the sink, once swapped, has the old one's name
    capture = _capture(declaration["key_columns"], inputs, declaration["sink"])
    pg.execute(
        "WITH shadow AS (DELETE FROM ml_pipeline.pipelines WHERE shadow_of = $1 RETURNING *)"
        " UPDATE ml_pipeline.pipelines p SET input_columns = s.input_columns,"
        " expression = s.expression, search_path = s.search_path,"
        " sink = coalesce(s.sink, p.sink), capture_insert = $2, capture_update = $3,"
        " capture_delete = $4, backfill_done = true FROM shadow s WHERE p.name = $1",
        ("text", "text", "text", "text"), (name, *capture),
    )  # fmt: skip
    for table in ("queue", "dead_letters"):
        pg.execute(f"DELETE FROM ml_pipeline.{table} WHERE pipeline = $1", ("text",), (name,))
    return {}


def _unshadowed(declaration: dict, work: dict) -> dict:
    """Drops the shadow's declaration (and its queue); what the caller then drops."""
    shadow = _one(
        "DELETE FROM ml_pipeline.pipelines WHERE shadow_of = $1"
        " RETURNING name, source::text AS source, sink::text AS sink, target_column",
        declaration["name"], types=("text",),
    )  # fmt: skip
    if shadow is None:
        raise _error(f'"{declaration["name"]}" is not switching', "55000")
    return shadow


def _swap_failed(declaration: dict, work: dict) -> dict:
    """An automatic swap that failed for good: it waits for ml_pipeline.swap, and the
    shadow's status shows why."""
    pg.execute(
        "WITH off AS (UPDATE ml_pipeline.pipelines SET auto_swap = false WHERE shadow_of = $1"
        " RETURNING name) INSERT INTO ml_pipeline.batches (pipeline, done, failed, last_error)"
        " SELECT name, 0, 0, $2::jsonb FROM off",
        ("text", "text"),
        (declaration["name"], json.dumps({"sqlstate": work["sqlstate"],
                                          "message": work["message"]})),
    )  # fmt: skip
    return {}


OWNER_STEPS = {
    "describe": _describe, "alter": _altered, "progress": _progress, "shadow": _shadow,
    "swap": _swapped, "unshadow": _unshadowed, "swap failed": _swap_failed,
    "next attempt": _next_attempt_of,
}  # fmt: skip


def _lease(declaration: dict) -> dict:
    """A batch of the backfill, if it is not done and no other worker has it; otherwise a
    batch of due queued keys. Each key is locked for this session (pg_try_advisory_lock:
    others skip it; a dead worker lets go)."""
    name = declaration["name"]
    if declaration["paused"]:
        return {"paused": True, "keys": []}
    backfill = None if declaration["backfill_done"] else _backfill(declaration)
    if backfill is not None:
        taken, version = backfill["keys"], dict.fromkeys(backfill["keys"], 0)
        return _leased(declaration, taken, version, backfill)
    size = declaration["batch_size"]
    taken: list[str] = []
    version: dict[str, int] = {}
    for page in range(LEASE_PAGES):  # past the keys that other workers hold
        candidates = pg.execute(
            "SELECT key::text AS key, version FROM ml_pipeline.queue WHERE pipeline = $1"
            " AND not_before <= clock_timestamp() ORDER BY not_before, queued, key"
            " LIMIT $2 OFFSET $3",
            ("text", "integer", "integer"), (name, size, page * size),
        )  # fmt: skip
        version.update((c["key"], c["version"]) for c in candidates)
        locked = pg.execute(
            "SELECT key FROM unnest($2::text[]) WITH ORDINALITY c(key, n)"
            " WHERE pg_try_advisory_lock(hashtext($1), hashtext(key)) ORDER BY n",
            ("text", "text[]"), (name, [c["key"] for c in candidates]),
        )  # fmt: skip
        taken += [row["key"] for row in locked]
        if len(taken) >= size or len(candidates) < size:
            break
    _unlock(name, taken[size:])
    return _leased(declaration, taken[:size], version, None)


def _leased(declaration: dict, taken: list[str], version: dict, backfill: dict | None) -> dict:
    _held.setdefault(declaration["name"], set()).update(taken)
    if not taken and backfill is None:
        return {"keys": []}
    source, table = declaration["source"], declaration["sink"] or declaration["source"]
    pipeline = {
        k: declaration[k]
        for k in (
            "name",
            "source",
            "key_columns",
            "expression",
            "search_path",
            "target_column",
            "sink",
        )
    }
    return {
        "keys": taken, "versions": [version[key] for key in taken], "backfill": backfill,
        "pipeline": {  # and what the worker would otherwise look up in the catalog per batch
            **pipeline, "relation": _relation_name(source),
            "key_kinds": _key_kinds(source, declaration["key_columns"]),
            "target_kind": _column_kind(table, declaration["target_column"]),
        },
    }  # fmt: skip


def _unlock(name: str, keys: list[str]) -> None:
    _held.get(name, set()).difference_update(keys)
    if keys:
        pg.execute(
            "SELECT pg_advisory_unlock(hashtext($1), hashtext(key)) FROM unnest($2::text[]) key",
            ("text", "text[]"), (name, keys),
        )  # fmt: skip


def _backfill(declaration: dict) -> dict | None:
    """The next batch of the backfill: of the next batch_size rows of the source in key
    order, those without a result and not queued (a change queued them: the queue does
    them). One worker at a time holds the declaration's row until its batch commits,
    with the new position: a batch that fails or dies is done again. None when another
    worker has the backfill."""
    name = declaration["name"]
    mine = pg.execute(
        "SELECT backfill_after::text AS after FROM ml_pipeline.pipelines"
        " WHERE name = $1 AND NOT backfill_done FOR NO KEY UPDATE SKIP LOCKED",
        ("text",), (name,),
    )  # fmt: skip
    if not mine:
        return None
    source, keys = declaration["source"], declaration["key_columns"]
    kinds = _key_kinds(source, keys)
    columns = ", ".join(f"s.{_quote(k)}" for k in keys)
    after = ", ".join(f"($2::jsonb ->> {i})::{kind}" for i, kind in enumerate(kinds))
    # a range of the primary key's index from the last position (no OR: an index scan)
    start = f"WHERE ({columns}) > ({after})" if mine[0]["after"] else "WHERE $2::jsonb IS NULL"
    if declaration["sink"]:
        pending = (
            f"NOT EXISTS (SELECT FROM {declaration['sink']} d WHERE "
            + " AND ".join(f"d.{_quote(k)} = s.{_quote(k)}" for k in keys)
            + ")"
        )
    else:
        pending = f"s.{_quote(declaration['target_column'])} IS NULL"
    rows = pg.execute(
        f"WITH next AS (SELECT {_key(keys, 's')} AS key, {pending} AS pending FROM {source} s"
        f" {start} ORDER BY {columns} LIMIT $3)"
        " SELECT n.key::text AS key, n.pending AND NOT EXISTS (SELECT FROM ml_pipeline.queue q"
        " WHERE q.pipeline = $1 AND q.key = n.key) AS wanted FROM next n",
        ("text", "text", "integer"), (name, mine[0]["after"], declaration["batch_size"]),
    )  # fmt: skip
    wanted = [row["key"] for row in rows if row["wanted"]]
    locked = [row["key"] for row in pg.execute(
        "SELECT key FROM unnest($2::text[]) WITH ORDINALITY c(key, n)"
        " WHERE pg_try_advisory_lock(hashtext($1), hashtext(key)) ORDER BY n",
        ("text", "text[]"), (name, wanted),
    )]  # fmt: skip
    if len(locked) < len(wanted):  # held by another worker, just now: the queue does them
        pg.execute(
            "INSERT INTO ml_pipeline.queue (pipeline, key) SELECT $1, key::jsonb"
            " FROM unnest($2::text[]) key ON CONFLICT (pipeline, key) DO NOTHING",
            ("text", "text[]"), (name, sorted(set(wanted) - set(locked))),
        )  # fmt: skip
    return {
        "keys": locked, "seen": len(rows),
        "to": rows[-1]["key"] if rows else None,
        "done": len(rows) < declaration["batch_size"],
    }  # fmt: skip


def _done(
    declaration: dict, keys: list[str], versions: list[int], backfill: dict | None
) -> list[str]:
    """The keys whose results are current: of a queued batch, those whose version is still
    the one computed, which leave the queue (those changed meanwhile stay, for another
    round); of a batch of the backfill, those a change has not queued meanwhile, and the
    backfill moves on. All are unlocked."""
    name = declaration["name"]
    if backfill is None:
        rows = pg.execute(
            "WITH done AS (DELETE FROM ml_pipeline.queue q"
            " USING unnest($2::text[], $3::bigint[]) d(key, version) WHERE q.pipeline = $1"
            " AND q.key = d.key::jsonb AND q.version = d.version RETURNING q.key::text AS key)"
            " SELECT key FROM done",
            ("text", "text[]", "bigint[]"), (name, keys, versions),
        )  # fmt: skip
    else:
        rows = pg.execute(
            "SELECT d.key FROM unnest($2::text[]) d(key) WHERE NOT EXISTS (SELECT FROM"
            " ml_pipeline.queue q WHERE q.pipeline = $1 AND q.key = d.key::jsonb)",
            ("text", "text[]"), (name, keys),
        )  # fmt: skip
        pg.execute(
            "UPDATE ml_pipeline.pipelines SET backfill_after = coalesce($2::jsonb,"
            " backfill_after), backfill_done = $3, backfill_seen = backfill_seen + $4"
            " WHERE name = $1",
            ("text", "text", "boolean", "bigint"),
            (name, backfill["to"], backfill["done"], backfill["seen"]),
        )  # fmt: skip
    _unlock(name, keys)
    pg.execute(
        "INSERT INTO ml_pipeline.batches (pipeline, done, failed) VALUES ($1, $2, 0)",
        ("text", "integer"), (name, len(rows)),
    )  # fmt: skip
    pg.execute(
        "DELETE FROM ml_pipeline.batches WHERE pipeline = $1"
        " AND finished < now() - interval '1 hour'",
        ("text",), (name,),
    )  # fmt: skip
    return [row["key"] for row in rows]


def _failed(declaration: dict, failures: list[dict]) -> None:
    """A failed row: retried after a backoff, unless its error is permanent or its attempts
    are spent: then a dead letter."""
    name = declaration["name"]
    for failure in failures:
        if failure["version"] == 0:  # of the backfill: into the queue, unless a change is
            queued = _one(
                "INSERT INTO ml_pipeline.queue (pipeline, key) VALUES ($1, $2::jsonb)"
                " ON CONFLICT (pipeline, key) DO NOTHING RETURNING version",
                name, failure["key"], types=("text", "text"),
            )  # fmt: skip
            failure["version"] = queued["version"] if queued else -1
        row = _one(
            "UPDATE ml_pipeline.queue SET attempts = attempts + 1, last_error = $4::jsonb"
            " WHERE pipeline = $1 AND key = $2::jsonb AND version = $3 RETURNING attempts",
            name, failure["key"], failure["version"],
            json.dumps({"sqlstate": failure["sqlstate"], "message": failure["message"]}),
            types=("text", "text", "bigint", "text"),
        )  # fmt: skip
        if row is None:
            continue  # changed meanwhile: its new value gets fresh attempts
        if failure["transient"] and row["attempts"] < declaration["max_attempts"]:
            delay = min(2.0 ** row["attempts"], MAX_BACKOFF_SECONDS) * random.uniform(0.5, 1.5)
            delay = max(delay, failure.get("retry_after") or 0.0)
            pg.execute(
                "UPDATE ml_pipeline.queue"
                " SET not_before = clock_timestamp() + make_interval(secs => $3)"
                " WHERE pipeline = $1 AND key = $2::jsonb",
                ("text", "text", "float8"), (name, failure["key"], delay),
            )  # fmt: skip
        else:
            pg.execute(
                "WITH gone AS (DELETE FROM ml_pipeline.queue WHERE pipeline = $1"
                " AND key = $2::jsonb RETURNING pipeline, key, attempts)"
                " INSERT INTO ml_pipeline.dead_letters (pipeline, key, attempts, sqlstate,"
                " message) SELECT pipeline, key, attempts, $3, $4 FROM gone"
                " ON CONFLICT (pipeline, key) DO UPDATE SET attempts = excluded.attempts,"
                " sqlstate = excluded.sqlstate, message = excluded.message, failed = now()",
                ("text", "text", "text", "text"),
                (name, failure["key"], failure["sqlstate"], failure["message"]),
            )  # fmt: skip
    last = failures[-1]
    pg.execute(
        "INSERT INTO ml_pipeline.batches (pipeline, done, failed, last_error)"
        " VALUES ($1, 0, $2, $3::jsonb)",
        ("text", "integer", "text"),
        (name, len(failures), json.dumps({"sqlstate": last["sqlstate"],
                                          "message": last["message"]})),
    )  # fmt: skip
    _unlock(name, [failure["key"] for failure in failures])


# --- watching ---------------------------------------------------------------------------


@pg.sql_function("ml_pipeline.status")
def status() -> list[dict]:
    rows = []
    for p in pg.execute(
        "SELECT * FROM ml_pipeline.pipelines WHERE pg_has_role($1, owner, 'MEMBER')"
        " ORDER BY name",
        ("oid",), (_caller(),),
    ):  # fmt: skip
        source, target = p["source"], _quote(p["target_column"])
        if p["sink"]:
            with_result = _one(f"SELECT count(*) AS n FROM {p['sink']}")["n"]  # type: ignore[index]
        else:
            with_result = _one(f"SELECT count({target}) AS n FROM {source}")["n"]  # type: ignore[index]
        counts = _one(
            f"SELECT (SELECT count(*) FROM {source}) AS total,"
            " (SELECT count(*) FROM ml_pipeline.queue WHERE pipeline = $1) AS queued,"
            " (SELECT count(*) FROM ml_pipeline.dead_letters WHERE pipeline = $1) AS failed,"
            " (SELECT now() - min(queued) FROM ml_pipeline.queue WHERE pipeline = $1)"
            " AS oldest,"
            " (SELECT sum(done) / 60.0 FROM ml_pipeline.batches WHERE pipeline = $1"
            "  AND finished > now() - interval '1 minute') AS rate,"
            " (SELECT last_error FROM ml_pipeline.batches WHERE pipeline = $1"
            "  AND last_error IS NOT NULL ORDER BY finished DESC LIMIT 1) AS last_error",
            p["name"], types=("text",),
        )  # fmt: skip
        assert counts is not None
        # rows without a result that the backfill has yet to queue
        unqueued = 0 if p["backfill_done"] else max(
            counts["total"] - with_result - counts["queued"] - counts["failed"], 0
        )  # fmt: skip
        pending = counts["queued"] + unqueued
        rows.append({
            "name": p["name"], "source": source, "target": p["target_column"],
            "paused": p["paused"], "backfill_done": p["backfill_done"],
            "total": counts["total"],
            "done": max(counts["total"] - pending - counts["failed"], 0),  # current results
            "pending": pending,
            "failed": counts["failed"], "oldest_pending": counts["oldest"],
            "rows_per_second": float(counts["rate"] or 0), "last_error": counts["last_error"],
            **{k: p[k] for k in ("expression", "sink", "batch_size", "max_attempts", "schedule",
                                 "shadow_of")},
        })  # fmt: skip
    return rows
