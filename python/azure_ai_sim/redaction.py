"""Keeps secrets out of every text that leaves the package.

Services echo what they were sent: a proxy's error page quotes the Authorization header,
AWS's InvalidSignatureException quotes the canonical request, an echo endpoint answers the
request itself. And messages are shortened before they are shown, so replacing whole
occurrences is not enough: a key cut in half by a shortening survives in part. So every
run of MIN_RUN or more characters of a secret is replaced (a secret shorter than that,
whole), and texts are scrubbed before they are shortened, and again where they leave the
package (pg.py), with every secret this backend has used.

Successful bodies are data the caller parses, so there a run must be BODY_MIN_RUN long:
a short run such as eight digits of a hex key turns up by chance in long lists of
numbers, and replacing it would corrupt them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

MIN_RUN = 8
BODY_MIN_RUN = 16
PLACEHOLDER = "[redacted]"
# Keys, tokens and secret keys this backend has used, most recent last. Tokens renew, so
# the set is bounded; a secret in use is remembered again on every call that uses it.
REMEMBERED = 64

_remembered: dict[str, None] = {}

Text = TypeVar("Text", str, bytes)


def remember(*secrets: str | None) -> None:
    """Records secrets in use: keys and tokens read from settings or fetched."""
    for secret in secrets:
        if secret:
            _remembered.pop(secret, None)
            _remembered[secret] = None
    while len(_remembered) > REMEMBERED:
        del _remembered[next(iter(_remembered))]


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """The text with every run of MIN_RUN or more characters of a secret replaced."""
    return _scrub(text, [*_remembered, *extra], MIN_RUN, PLACEHOLDER)


def scrub_body(body: bytes, extra: Iterable[str] = ()) -> bytes:
    """A successful response's body, with every run of BODY_MIN_RUN characters replaced."""
    secrets = [secret.encode() for secret in (*_remembered, *extra)]
    return _scrub(body, secrets, BODY_MIN_RUN, PLACEHOLDER.encode())


def excerpt(text: str | bytes, limit: int, extra: Iterable[str] = ()) -> str:
    """The start of a text to quote in a message: scrubbed first, then shortened."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = scrub(text, extra)
    return text if len(text) <= limit else text[:limit] + "…"


def _scrub(text: Text, secrets: list[Text], min_run: int, placeholder: Text) -> Text:
    spans = sorted(span for secret in secrets if secret for span in _runs(text, secret, min_run))
    if not spans:
        return text
    merged = [list(spans[0])]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    parts, position = [], 0
    for start, end in merged:
        parts += [text[position:start], placeholder]
        position = end
    parts.append(text[position:])
    return text[:0].join(parts)


def _runs(text: Text, secret: Text, min_run: int) -> Iterable[tuple[int, int]]:
    """Where runs of at least min_run characters of the secret (all of it, if shorter)
    appear in the text.

    Any run of 2b - 1 or more characters of the secret holds one of the secret's blocks
    of b characters that start at a multiple of b. So each such block is searched for
    with find (C speed), and every hit is widened to the whole run of the secret there.
    """
    if len(secret) <= min_run:
        start = text.find(secret)
        while start >= 0:
            yield start, start + len(secret)
            start = text.find(secret, start + 1)
        return
    block = (min_run + 1) // 2
    for offset in range(0, len(secret) - block + 1, block):
        needle = secret[offset : offset + block]
        hit = text.find(needle)
        while hit >= 0:
            before = _common_length(text, hit, secret, offset, -1)
            after = _common_length(text, hit + block, secret, offset + block, 1)
            if before + block + after >= min_run:
                yield hit - before, hit + block + after
            hit = text.find(needle, hit + 1)


def _common_length(text: Text, at: int, secret: Text, offset: int, step: int) -> int:
    """How many characters agree from text[at] and secret[offset] on (step 1), or before
    them (step -1)."""
    count = 0
    if step > 0:
        while at + count < len(text) and offset + count < len(secret):
            if text[at + count] != secret[offset + count]:
                break
            count += 1
    else:
        while at - count > 0 and offset - count > 0:
            if text[at - count - 1] != secret[offset - count - 1]:
                break
            count += 1
    return count
