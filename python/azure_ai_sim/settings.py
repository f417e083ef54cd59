"""Settings tables: which keys exist, what values they accept, and reading/writing them.

Each extension owns a table `<schema>.settings(key, value)` registered with
pg_extension_config_dump, and declares its keys here with a check per key. Values are
never echoed in errors: several of them are keys or tokens.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from azure_ai_sim import errors, pg, redaction

Check = Callable[[str], None]  # raises ValueError with a reason that does not quote the value


def _family_pattern(shown: str) -> re.Pattern[str]:
    """ "sagemaker.<endpoint>.accept" matches sagemaker.my-endpoint-1.accept."""
    return re.compile("[A-Za-z0-9-]{1,63}".join(map(re.escape, re.split(r"<[a-z_]+>", shown))))


# RFC 3986: what a URI may hold, unreserved, reserved and percent-encoded characters;
# no spaces, no control characters, nothing outside ASCII.
_URI_CHARACTERS = re.compile(r"([A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")


def http_url(value: str) -> None:
    """An http or https URL with a host, as RFC 3986 spells it: what goes into the request
    line must be exactly what was checked here."""
    if not _URI_CHARACTERS.fullmatch(value):
        raise ValueError(
            "must be a URL of RFC 3986: no spaces, control or non-ASCII characters "
            "(percent-encode them)"
        )
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise ValueError("must not hold a user name or password: keys go in their own setting")
    if parts.fragment or value.endswith("#"):
        raise ValueError("must not have a #fragment: it is never sent")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ValueError("has an invalid port") from None


def secret(value: str) -> None:
    """Keys and tokens travel in HTTP headers: no whitespace or control characters."""
    if not value:
        raise ValueError("must not be empty")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain whitespace or control characters")


def one_of(*allowed: str) -> Check:
    def check(value: str) -> None:
        if value not in allowed:
            raise ValueError("must be one of: " + ", ".join(allowed))

    return check


def pattern(regex: str, description: str) -> Check:
    compiled = re.compile(regex)

    def check(value: str) -> None:
        if not compiled.fullmatch(value):
            raise ValueError("must be " + description)

    return check


class SettingsTable:
    """One extension's settings; functions that need them read them once per statement."""

    def __init__(
        self, table: str, checks: dict[str, Check], families: dict[str, Check] | None = None
    ):
        """families: keys with a name inside, such as "sagemaker.<endpoint>.accept"."""
        self.table = table
        self.checks = checks
        self.families = {
            _family_pattern(shown): (shown, check) for shown, check in (families or {}).items()
        }
        self._snapshot = pg.PerStatement(self._read_all)

    def snapshot(self) -> dict[str, str]:
        """All settings as this statement sees them (see pg.PerStatement)."""
        return self._snapshot.get()

    def _read_all(self) -> dict[str, str]:
        rows = pg.execute(f"SELECT key, value FROM {self.table}")
        values = {row["key"]: row["value"] for row in rows}
        for key, value in values.items():
            self._remember_if_secret(key, value)
        return values

    def _remember_if_secret(self, key: str, value: str | None) -> None:
        """Values of keys and tokens are scrubbed from every message (redaction.py)."""
        if self._check(key) is secret:
            redaction.remember(value)

    def validate(self, key: str | None, value: str | None) -> str:
        """Returns the key once it and the value are known to be acceptable."""
        if key is None:
            raise errors.NullValueNotAllowed("key must not be NULL")
        check = self._check(key)
        if check is None:
            # Never echoed: a key swapped with its value is a secret in the key's place.
            valid = [*sorted(self.checks), *(shown for shown, _ in self.families.values())]
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.8)
            raise errors.InvalidParameter(
                "unknown setting key (not shown, in case a secret was given as the key)",
                detail="Valid keys: " + ", ".join(valid) + ".",
                hint=f'Did you mean "{close[0]}"?' if close else None,
            )
        if value is not None:
            try:
                check(value)
            except ValueError as reason:
                raise errors.InvalidParameter(
                    f'invalid value for setting "{key}": {reason}'
                ) from None
        return key

    def _check(self, key: str) -> Check | None:
        if key in self.checks:
            return self.checks[key]
        return next((c for regex, (_, c) in self.families.items() if regex.fullmatch(key)), None)

    def get(self, key: str | None) -> str | None:
        key = self.validate(key, None)
        rows = pg.execute(f"SELECT value FROM {self.table} WHERE key = $1", ["text"], [key])
        value = rows[0]["value"] if rows else None
        self._remember_if_secret(key, value)
        return value

    def set(self, key: str | None, value: str | None) -> None:
        """Stores the value in one statement; NULL removes the setting."""
        key = self.validate(key, value)
        self._remember_if_secret(key, value)
        self._snapshot.forget()
        if value is None:
            pg.execute(f"DELETE FROM {self.table} WHERE key = $1", ["text"], [key])
        else:
            pg.execute(
                f"INSERT INTO {self.table} (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                ["text", "text"],
                [key, value],
            )
