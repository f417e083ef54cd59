"""The one module that talks to the PostgreSQL backend we run inside.

SQL goes through plpy (SPI). Backend state that SPI cannot safely ask about is read with
ctypes from the postgres executable itself, which exports its symbols for extensions.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

from azure_ai_sim import errors

F = TypeVar("F", bound=Callable[..., Any])

_plans: dict[str, Any] = {}
_error_classes: dict[str, type] = {}
_is_in_parallel_mode: Callable[[], bool] | None = None


def in_parallel_mode() -> bool:
    """True inside a parallel worker, and in a leader while it runs a parallel plan.

    PL/Python wraps every plpy.execute in a subtransaction, which PostgreSQL forbids in
    parallel mode; the resulting ERROR escapes through Python's frames and has crashed the
    server. So this must be known without SPI.
    """
    global _is_in_parallel_mode
    if _is_in_parallel_mode is None:
        postgres = ctypes.CDLL(None)
        postgres.IsInParallelMode.restype = ctypes.c_bool
        postgres.IsInParallelMode.argtypes = []
        _is_in_parallel_mode = postgres.IsInParallelMode
    return _is_in_parallel_mode()


def execute(query: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> list[dict]:
    """Runs a query through a plan prepared once per backend; refuses in parallel mode."""
    if in_parallel_mode():
        raise errors.ParallelMode()
    import plpy

    plan = _plans.get(query)
    if plan is None:
        plan = _plans[query] = plpy.prepare(query, list(types))
    return list(plpy.execute(plan, list(args)))


def sql_error(error: errors.Error, source: str) -> Exception:
    """The plpy exception PL/Python reports as our SQL error: "<source>: <message>".

    PL/Python prefixes every message with the exception's class name, so the class is
    named after the function or extension that failed.
    """
    import plpy

    cls = _error_classes.get(source)
    if cls is None:
        cls = _error_classes[source] = type(source, (plpy.Error,), {"__module__": "builtins"})
    exception = cls(error.message)
    exception.sqlstate = error.sqlstate
    exception.detail = error.detail
    exception.hint = error.hint
    return exception


def sql_function(name: str) -> Callable[[F], F]:
    """Marks an entry point called from a PL/Python body; our errors become SQL errors."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def entry_point(*args: Any) -> Any:
            try:
                return function(*args)
            except errors.Error as error:
                raise sql_error(error, name) from None

        return entry_point  # type: ignore[return-value]

    return decorate
