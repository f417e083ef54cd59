"""Errors that reach SQL as a PostgreSQL ERROR with a SQLSTATE.

Modules raise these without knowing about plpy; pg.sql_function turns them into
plpy errors at the boundary, so the same code runs in unit tests.
"""

from __future__ import annotations

import re

# How an error's DETAIL gives the wait its service asked for (Retry-After), or until a
# budget renews; ml_pipeline's workers wait that long before the row's next attempt.
RETRY_AFTER = "retry after:"
_RETRY_AFTER_SECONDS = re.compile(re.escape(RETRY_AFTER) + r" (\d+(?:\.\d+)?) s")


def retry_after_seconds(detail: str | None) -> float | None:
    """The wait an error's DETAIL asks for, if it gives one."""
    found = _RETRY_AFTER_SECONDS.search(detail or "")
    return float(found.group(1)) if found else None


class Error(Exception):
    sqlstate = "XX000"
    # throw_on_error => false turns a failed call into NULL and a WARNING; errors of
    # the caller's own making (bad arguments, missing settings) and interrupts still raise.
    failed_call = False

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        sqlstate: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint
        if sqlstate:
            self.sqlstate = sqlstate


class InvalidParameter(Error):
    sqlstate = "22023"  # invalid_parameter_value


class NullValueNotAllowed(Error):
    sqlstate = "22004"  # null_value_not_allowed


class PermissionDenied(Error):
    sqlstate = "42501"  # insufficient_privilege


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


class SettingMissing(Error):
    sqlstate = "55000"  # object_not_in_prerequisite_state


class Interrupted(Error):
    """PostgreSQL's own cancel, statement timeout or shutdown, with its SQLSTATE."""


class BudgetSpent(Error):
    """A budget of ml_pipeline.budgets refused a call before it left: a failed call, for
    throw_on_error, as a throttled one would be."""

    sqlstate = "53400"  # configuration_limit_exceeded
    failed_call = True


class CallFailed(Error):
    """A call to a service that did not succeed: the status decides the SQLSTATE."""

    failed_call = True

    def __init__(self, message: str, *, request_id: str | None = None, **kwargs: str | None):
        super().__init__(message, **kwargs)
        self.request_id = request_id  # the service's, for its support staff


# Not class 08: connection pools take that for a broken database connection.
class ConnectFailed(CallFailed):
    sqlstate = "58030"  # io_error


class TLSFailed(CallFailed):
    """The TLS handshake failed, an untrusted certificate most often: retrying cannot help."""

    sqlstate = "58030"  # io_error


class ConnectionLost(CallFailed):
    sqlstate = "58030"  # io_error


class MalformedResponse(CallFailed):
    """The bytes that came back are not HTTP."""

    sqlstate = "58000"  # system_error


class TimedOut(CallFailed):
    sqlstate = "57014"  # query_canceled, as statement_timeout


class ResponseTooLarge(CallFailed):
    sqlstate = "54000"  # program_limit_exceeded


class InvalidResponse(CallFailed):
    sqlstate = "22032"  # invalid_json_text


class InputRefused(CallFailed):
    """An input the service would refuse (too long, empty), refused before sending: like
    the service's own 400, with throw_on_error false it is NULL and a WARNING."""

    sqlstate = "22023"  # invalid_parameter_value, as a 400


# The SQLSTATE of an HTTP error status; others fall back to the status class.
HTTP_SQLSTATES = {
    400: "22023",  # invalid_parameter_value: the service rejected the input
    401: "28000",  # invalid_authorization_specification
    403: "42501",  # insufficient_privilege
    404: "42704",  # undefined_object: no such endpoint or deployment
    408: "57014",  # query_canceled: the service gave up waiting
    413: "54000",  # program_limit_exceeded
    424: "38000",  # external_routine_exception: the model raised
    429: "53400",  # configuration_limit_exceeded: throttled
}


def http_sqlstate(status: int) -> str:
    if status in HTTP_SQLSTATES:
        return HTTP_SQLSTATES[status]
    return "22000" if status < 500 else "58000"  # data_exception | system_error
