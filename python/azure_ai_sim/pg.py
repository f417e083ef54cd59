"""The one module that talks to the PostgreSQL backend we run inside.

SQL goes through plpy (SPI). Backend state that SPI cannot safely ask about is read with
ctypes from the postgres executable itself, which exports its symbols for extensions, and
from our native library where it needs PostgreSQL's headers (extension/backend.c).
"""

from __future__ import annotations

import codecs
import ctypes
import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from azure_ai_sim import errors, redaction

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_plans: dict[str, Any] = {}
_error_classes: dict[str, type] = {}
_backend: _Backend | None = None

# How long the backend's thread waits for I/O before it looks for a cancel again.
WAIT_SLICE_SECONDS = 0.02


class _Backend:
    """Functions and variables of the postgres executable, which exports its symbols.

    Each has the same name, signature and type in PostgreSQL 15, 16 and 17 (checked in
    their headers: access/xact.h, miscadmin.h, utils/timestamp.h, utils/guc.h). Nothing
    here depends on an enum value or a struct layout: those are read in C (backend.c).
    """

    def __init__(self) -> None:
        postgres = ctypes.CDLL(None)
        self.is_in_parallel_mode = postgres.IsInParallelMode
        self.is_in_parallel_mode.restype = ctypes.c_bool
        self.is_in_parallel_mode.argtypes = []
        # volatile sig_atomic_t: an int on every platform PostgreSQL runs on
        self.interrupt_pending = ctypes.c_int.in_dll(postgres, "InterruptPending")
        self.statement_start = postgres.GetCurrentStatementStartTimestamp
        self.statement_start.restype = ctypes.c_int64  # TimestampTz: microseconds
        self.statement_start.argtypes = []
        self.outer_user = postgres.GetOuterUserId
        self.outer_user.restype = ctypes.c_uint32  # Oid
        self.outer_user.argtypes = []
        self.subtransaction = postgres.GetCurrentSubTransactionId
        self.subtransaction.restype = ctypes.c_uint32  # SubTransactionId
        self.subtransaction.argtypes = []
        self.get_config_option = postgres.GetConfigOption
        self.get_config_option.restype = ctypes.c_char_p
        self.get_config_option.argtypes = [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]
        # Our library, by path: loading it again only finds the copy that
        # shared_preload_libraries or a call of one of its SQL functions loaded, and
        # loading it first is harmless (PostgreSQL runs _PG_init when it loads it too).
        # pkglib_path is char[MAXPGPATH], what $libdir stands for.
        libdir = ctypes.c_char_p(ctypes.addressof(ctypes.c_char.in_dll(postgres, "pkglib_path")))
        native = ctypes.CDLL(os.path.join(os.fsdecode(libdir.value), "azure_ai_sim.so"))
        self.statement_timeout_left = native.azure_ai_sim_statement_timeout_left
        self.statement_timeout_left.restype = ctypes.c_int64  # microseconds, -1: none
        self.statement_timeout_left.argtypes = []
        # Optional as well: a server started before 0.2.0 has an older library preloaded,
        # and loading the new file by the same path finds that one.
        self.caller_reads_server_files: Any = getattr(
            native, "azure_ai_sim_caller_reads_server_files", None
        )
        if self.caller_reads_server_files is not None:
            self.caller_reads_server_files.restype = ctypes.c_bool
            self.caller_reads_server_files.argtypes = []
        # extension/error_report.c: its hooks, installed here unless shared_preload_libraries
        # did (loading the library through ctypes runs no _PG_init), and the message of an
        # error of ours, in the server's encoding, whose traceback its hook then drops.
        # Optional: a server started before this release runs an older library, whose
        # errors just keep their traceback.
        self.our_error: Any = getattr(native, "azure_ai_sim_our_error", None)
        if self.our_error is not None:
            self.our_error.restype = None
            self.our_error.argtypes = [ctypes.c_char_p]
            native.azure_ai_sim_error_report_init.restype = None
            native.azure_ai_sim_error_report_init.argtypes = []
            native.azure_ai_sim_error_report_init()
        # extension/usage.c: the usage ledger, in shared memory (off unless preloaded).
        # Optional, as the others: an older library preloaded has none.
        self.usage_begin: Any = getattr(native, "azure_ai_sim_usage_begin", None)
        if self.usage_begin is not None:
            self.usage_begin.restype = ctypes.c_int
            self.usage_begin.argtypes = [
                ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64,
                ctypes.POINTER(ctypes.c_int64),
            ]  # fmt: skip
            self.usage_end = native.azure_ai_sim_usage_end
            self.usage_end.restype = None
            self.usage_end.argtypes = [
                ctypes.c_char_p, ctypes.c_char_p, ctypes.c_bool, ctypes.c_int64,
                ctypes.c_int64, ctypes.c_int64,
            ]  # fmt: skip
        # The Python codec of the server's encoding, which PL/Python's messages are in
        # (SQL_ASCII: PL/Python's UTF-8 as it is); None if Python has none.
        encoding = (self.get_config_option(b"server_encoding", True, False) or b"").decode()
        try:
            self.message_codec: str | None = codecs.lookup(
                {"UTF8": "utf-8", "SQL_ASCII": "utf-8"}.get(encoding, encoding.replace("WIN", "cp"))
            ).name
        except LookupError:
            self.message_codec = None


def _postgres() -> _Backend:
    global _backend
    if _backend is None:
        _backend = _Backend()
    return _backend


def in_parallel_mode() -> bool:
    """True inside a parallel worker, and in a leader while it runs a parallel plan.

    PL/Python wraps every plpy.execute in a subtransaction, which PostgreSQL forbids in
    parallel mode; the resulting ERROR escapes through Python's frames and has crashed the
    server. So this must be known without SPI.
    """
    return _postgres().is_in_parallel_mode()


def outer_user() -> int:
    """The role that called our SECURITY DEFINER function: the session's role after SET
    ROLE (GetOuterUserId), not the function's owner."""
    return int(_postgres().outer_user())


def statement_id() -> tuple[int, int]:
    """The key of per-statement caches: it changes with every top-level statement and
    with every subtransaction, so that a value read after a write that a savepoint or an
    EXCEPTION block then rolled back is never used again. (Subtransaction ids are never
    reused within a transaction; a statement's start alone is shared by all statements of
    one simple-protocol query string.)"""
    backend = _postgres()
    return backend.statement_start(), backend.subtransaction()


class PerStatement(Generic[T]):
    """A value read with SQL at most once per statement, not per row, and again after
    forget(): another session's change shows from our next statement on, our own at once,
    and a rolled-back change of ours never."""

    def __init__(self, load: Callable[[], T]):
        self._load = load
        self._value: T | None = None
        self._statement: tuple[int, int] | None = None

    def get(self) -> T:
        statement = statement_id()
        if statement != self._statement:
            self._value = self._load()
            self._statement = statement
        return self._value  # type: ignore[return-value]

    def forget(self) -> None:
        self._statement = None


def statement_seconds_left() -> float | None:
    """When the statement_timeout timer of this statement fires; None if none is armed."""
    left_us = _postgres().statement_timeout_left()
    return None if left_us < 0 else left_us / 1e6


def caller_reads_server_files() -> bool:
    """Whether the role calling our SECURITY DEFINER function, not its owner, may read
    any file of the server (a superuser or a pg_read_server_files member)."""
    check = _postgres().caller_reads_server_files
    if check is None:
        raise errors.VersionMismatch(
            "this server runs an older azure_ai_sim native library, loaded when it started, "
            "which cannot tell who called",
            hint="Restart the server, so that it loads the library make install put in place.",
        )
    return check()


USAGE_OFF = -1  # usage_begin's answer without the ledger (extension/usage.c)


def usage_begin(
    service: str, endpoint: str, rows: int, bytes_sent: int, caps: Sequence[int]
) -> int:
    """Counts an attempt in the ledger unless one of the six caps (per day: requests, rows,
    tokens of the whole service, then of the endpoint; -1 none) is reached: 0, or the cap
    (1 to 6) that refuses it, or USAGE_OFF."""
    if _outside_postgres:
        return USAGE_OFF
    try:
        begin = _postgres().usage_begin
    except AttributeError:  # not inside PostgreSQL (a unit test)
        return USAGE_OFF
    if begin is None:
        return USAGE_OFF
    return begin(service.encode(), endpoint.encode(), rows, bytes_sent,
                 (ctypes.c_int64 * 6)(*caps))  # fmt: skip


def usage_end(
    service: str, endpoint: str, failed: bool, bytes_received: int, input_tokens: int,
    output_tokens: int,
) -> None:  # fmt: skip
    """What an attempt counted by usage_begin brought back."""
    backend = _backend  # none: not inside PostgreSQL, so nothing was counted
    if backend is not None and backend.usage_begin is not None:
        backend.usage_end(service.encode(), endpoint.encode(), failed, bytes_received,
                          input_tokens, output_tokens)  # fmt: skip


def setting(name: str) -> str | None:
    """A configuration parameter (GUC) of this session, custom ones included."""
    value = _postgres().get_config_option(name.encode(), True, False)
    return value.decode() if value is not None else None


def check_for_interrupts() -> None:
    """Lets PostgreSQL act on a pending cancel, statement timeout or terminate.

    Reading the flag costs nothing; only when it is set do we run a statement, during
    which PostgreSQL processes the interrupt and raises its own error (57014 and others).
    """
    if not interrupt_pending():
        return
    import plpy

    try:
        execute("SELECT 1")
    except plpy.SPIError as interrupt:
        raise errors.Interrupted(str(interrupt), sqlstate=interrupt.sqlstate) from None


_outside_postgres = False


def interrupt_pending() -> bool:
    """PostgreSQL's InterruptPending; plain Python (a simulator) has nothing to cancel."""
    global _outside_postgres
    if _outside_postgres:
        return False
    try:
        return bool(_postgres().interrupt_pending.value)
    except AttributeError:  # the executable is not postgres: no backend symbols
        _outside_postgres = True
        return False


def sleep(seconds: float) -> None:
    """time.sleep that a cancel or statement timeout interrupts within a slice."""
    wait_for(threading.Event(), seconds)


def wait_for(event: threading.Event, seconds: float) -> bool:
    """Waits up to `seconds` for the event, checking for interrupts before every slice."""
    end = time.monotonic() + seconds
    while True:
        check_for_interrupts()
        left = end - time.monotonic()
        if left <= 0:
            return event.is_set()
        if event.wait(min(WAIT_SLICE_SECONDS, left)):
            return True


def execute(query: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> list[dict]:
    """Runs a query through a plan prepared once per backend; refuses in parallel mode."""
    if in_parallel_mode():
        raise errors.ParallelMode()
    import plpy

    try:  # preparing takes the tables' locks too
        plan = _plans.get(query)
        if plan is None:
            plan = _plans[query] = plpy.prepare(query, list(types))
        return list(plpy.execute(plan, list(args)))
    except plpy.SPIError as error:
        if error.sqlstate == LOCK_NOT_AVAILABLE and _lock_limit[0] == statement_id():
            raise errors.TimedOut(
                f"timeout_ms ({_lock_limit[1]} ms) passed while waiting for a lock"
            ) from None
        raise


LOCK_NOT_AVAILABLE = "55P03"
# The statement and the limit in ms of the last lock_wait_limit.
_lock_limit: tuple[tuple[int, int] | None, int] = (None, 0)


def lock_wait_limit(seconds: float) -> None:
    """Lets the lock waits of this function call's SQL last at most `seconds`, which then
    end as errors.TimedOut. set_config(..., true) lasts until the function returns,
    since every function of ours has a SET clause (PostgreSQL undoes a SET LOCAL made
    inside such a function when it exits)."""
    global _lock_limit
    milliseconds = max(1, round(seconds * 1000))
    execute(
        "SELECT pg_catalog.set_config('lock_timeout', $1, true)", ["text"], [f"{milliseconds}ms"]
    )
    _lock_limit = (statement_id(), milliseconds)


def sql_error(error: errors.Error, source: str) -> Exception:
    """The plpy exception PL/Python reports as our SQL error: "<source>: <message>".

    PL/Python prefixes every message with the exception's class name, so the class is
    named after the function or extension that failed.
    """
    import plpy

    cls = _error_classes.get(source)
    if cls is None:
        cls = _error_classes[source] = type(source, (plpy.Error,), {"__module__": "builtins"})
    exception = cls(redaction.scrub(error.message))
    exception.sqlstate = error.sqlstate
    exception.detail = error.detail and redaction.scrub(error.detail)
    exception.hint = error.hint and redaction.scrub(error.hint)
    _report_as_ours(exception)
    return exception


def _report_as_ours(exception: BaseException) -> None:
    """Tells the native library that PL/Python is about to report this exception as an
    error of ours, whose Python traceback must then stay out of the error's CONTEXT
    (extension/error_report.c). It knows the error by its message, made as PL/Python
    makes it (plpy_elog.c): the class name, with its module unless builtins, ": " and
    str(exception). Never raises: at worst the traceback stays."""
    cls = type(exception)
    name = cls.__name__
    if cls.__module__ not in ("builtins", "__main__", "exceptions"):
        name = f"{cls.__module__}.{name}"
    try:
        backend = _postgres()
        if backend.our_error is None or backend.message_codec is None:
            return
        message = f"{name}: {exception}".encode(backend.message_codec)
    except Exception:  # unencodable, or no backend symbols
        return
    if b"\0" not in message:
        backend.our_error(message)


def warning(error: errors.Error, source: str) -> None:
    """Reports an error as a WARNING, for calls made with throw_on_error => false."""
    import plpy

    extra = {"detail": error.detail, "hint": error.hint, "sqlstate": error.sqlstate}
    plpy.warning(
        redaction.scrub(f"{source}: {error.message}"),
        **{k: redaction.scrub(v) for k, v in extra.items() if v},
    )


def sql_function(name: str) -> Callable[[F], F]:
    """Marks an entry point called from a PL/Python body; our errors become SQL errors.

    PostgreSQL's own errors (plpy.SPIError: a cancel, a constraint) pass as they are; any
    other exception is a bug of ours, reported as XX000, and like every message scrubbed
    of secrets. None of them shows PL/Python's traceback (see _report_as_ours)."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def entry_point(*args: Any) -> Any:
            try:
                return function(*args)
            except errors.Error as error:
                raise sql_error(error, name) from None
            except Exception as bug:
                import plpy

                if isinstance(bug, (plpy.SPIError, plpy.Error)):  # SQL errors already
                    _report_as_ours(bug)
                    raise
                internal = errors.Error(f"internal error: {type(bug).__name__}: {bug}")
                raise sql_error(internal, name) from None

        return entry_point  # type: ignore[return-value]

    return decorate
