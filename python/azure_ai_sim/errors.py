"""Errors that reach SQL as a PostgreSQL ERROR with a SQLSTATE.

Modules raise these without knowing about plpy; pg.sql_function turns them into
plpy errors at the boundary, so the same code runs in unit tests.
"""

from __future__ import annotations


class Error(Exception):
    sqlstate = "XX000"

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint


class InvalidParameter(Error):
    sqlstate = "22023"  # invalid_parameter_value


class NullValueNotAllowed(Error):
    sqlstate = "22004"  # null_value_not_allowed


class ParallelMode(Error):
    sqlstate = "25000"  # invalid_transaction_state, as PostgreSQL's own parallel-mode errors

    def __init__(self) -> None:
        super().__init__(
            "cannot run inside a parallel query: it needs SQL, which PL/Python cannot run there",
            hint="Declare the function that calls it PARALLEL UNSAFE, "
            "or turn off parallel query for this statement.",
        )


class VersionMismatch(Error):
    sqlstate = "0A000"  # feature_not_supported
