"""The usage ledger and budgets: every attempt of every remote call is counted (requests,
rows, bytes, tokens, per UTC day, service and endpoint) in the server's shared memory
(extension/usage.c), whatever becomes of the caller's transaction, since the call was
made and paid for. ml_pipeline.usage shows it.

A budget (a row of ml_pipeline.budgets, read once per statement) caps what a service, or
one endpoint of it, may take per day; an attempt past it is refused before it leaves,
with an error that says which budget and when it renews. The check and the count are one
step under the ledger's lock, so concurrent sessions cannot overdraw a request budget;
rows and tokens are known only as requests return, so requests in flight may pass those.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from azure_ai_sim import errors, pg

BUDGETS = (
    "SELECT service, endpoint, requests_per_day, rows_per_day, tokens_per_day"
    " FROM ml_pipeline.budgets"
)
OWN_BUDGETS = (
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e"
    " ON e.oid = d.refobjid WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass"
    " AND d.objid = pg_catalog.to_regclass('ml_pipeline.budgets')"
    " AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass"
    " AND d.deptype = 'e' AND e.extname = 'ml_pipeline') AS present"
)
CAPS = ("requests", "rows", "tokens")
ENDPOINT_BYTES = 255  # extension/usage.c keeps this much of an endpoint's name
SECONDS_PER_DAY = 86_400
TOKEN_HEADERS = ("x-amzn-bedrock-input-token-count", "x-amzn-bedrock-output-token-count")
# An OpenAI-style "usage" object, as Azure OpenAI and Bedrock's Messages API return it
USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')


def _load_budgets() -> dict[tuple[str, str], tuple[int, int, int]]:
    """The budgets of this database, by (service, endpoint); none without ml_pipeline.
    Only the extension's own table is read: a relation of that name made by anyone
    else (a view calling their function, say) would run as every caller."""
    found = pg.execute(OWN_BUDGETS)
    if not found[0]["present"]:
        return {}
    return {
        (row["service"], row["endpoint"]): tuple(  # type: ignore[misc]
            -1 if row[f"{cap}_per_day"] is None else row[f"{cap}_per_day"] for cap in CAPS
        )
        for row in pg.execute(BUDGETS)
    }


_budgets = pg.PerStatement(_load_budgets)


def endpoint_label(endpoint: str) -> str:
    """The endpoint as the ledger keeps it: at most ENDPOINT_BYTES of UTF-8, whole
    characters only."""
    return endpoint.encode()[:ENDPOINT_BYTES].decode(errors="ignore")


def begin(service: str, endpoint: str, rows: int, bytes_sent: int) -> errors.Error | None:
    """Counts an attempt, or the error that refuses it (a budget is spent)."""
    budgets = _budgets.get()
    whole = budgets.get((service, "*"), (-1, -1, -1))
    one = budgets.get((service, endpoint), (-1, -1, -1))
    answer = pg.usage_begin(service, endpoint, rows, bytes_sent, (*whole, *one))
    if answer == 0:
        return None
    if answer == pg.USAGE_OFF:
        if whole != (-1, -1, -1) or one != (-1, -1, -1):
            return errors.SettingMissing(
                f"the budget of {service} cannot be kept: the usage ledger is off",
                hint="Add azure_ai_sim to shared_preload_libraries and restart the server.",
            )
        return None
    caps, scope = (whole, f"{service} (all endpoints)") if answer <= 3 else (one, endpoint)
    which = (answer - 1) % 3
    renews = SECONDS_PER_DAY - time.time() % SECONDS_PER_DAY
    return errors.BudgetSpent(
        f"the budget of {scope}, {caps[which]} {CAPS[which]} per day, is spent",
        detail=f"{errors.RETRY_AFTER} {renews:.0f} s (the ledger's day ends at 00:00 UTC).",
        hint="Raise it in ml_pipeline.budgets, or wait for the next day.",
    )


def end(service: str, endpoint: str, status: int | None, headers: dict[str, str],
        body: bytes) -> None:  # fmt: skip
    """What an attempt brought back: a status (None: no answer), and its tokens."""
    tokens_in, tokens_out = tokens(headers, body)
    failed = status is None or not 200 <= status < 300
    pg.usage_end(service, endpoint, failed, len(body), tokens_in, tokens_out)


def tokens(headers: dict[str, str], body: bytes) -> tuple[int, int]:
    """The input and output tokens a response reports: Bedrock's headers, or a JSON
    "usage" object (prompt/completion or input/output tokens)."""
    counts = [_integer(headers.get(name)) for name in TOKEN_HEADERS]
    if any(counts):
        return counts[0], counts[1]
    found = USAGE_OBJECT.search(body) if b'"usage"' in body else None
    if found is None:
        return 0, 0
    try:
        usage: Any = json.loads(found.group(1))
    except ValueError:
        return 0, 0
    if not isinstance(usage, dict):
        return 0, 0
    given = _integer(usage.get("prompt_tokens", usage.get("input_tokens")))
    made = _integer(usage.get("completion_tokens", usage.get("output_tokens")))
    if not given and not made:
        given = _integer(usage.get("total_tokens"))
    return given, made


def _integer(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0
