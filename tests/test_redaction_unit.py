"""redaction.py on its own: no run of a secret survives, wherever it is cut."""

import random
import string

from azure_ai_sim import redaction


def runs_of(secret: str, text: str, run: int) -> bool:
    if len(secret) <= run:
        return secret in text
    return any(secret[i : i + run] in text for i in range(len(secret) - run + 1))


def test_no_run_of_eight_survives_random_plantings():
    rng = random.Random(20261129)
    for _ in range(3000):
        alphabet = rng.choice([string.hexdigits.lower()[:16], string.ascii_letters + "+/=", "ab"])
        secret = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300)))
        text = "".join(rng.choice(alphabet + " ") for _ in range(rng.randint(0, 600)))
        for _ in range(rng.randint(1, 3)):
            start = rng.randint(0, len(secret))
            part = secret[start : rng.randint(start, len(secret))]
            at = rng.randint(0, len(text))
            text = text[:at] + part + text[at:]
        scrubbed = redaction._scrub(text, [secret], 8, "\x00")
        assert not runs_of(secret, scrubbed, 8), (secret, text)


def test_a_secret_cut_by_a_shortening_is_still_found():
    secret = "d41d8cd98f00b204e9800998ecf8427e"
    message = "x" * 470 + " Bearer " + secret
    shown = redaction.excerpt(message[:500], 500, [secret])
    assert "d41d8cd9" not in shown and shown.endswith("Bearer [redacted]")


def test_remembered_secrets_apply_everywhere_and_stay_bounded():
    redaction.remember("first-remembered-key")
    assert redaction.scrub("echo: first-remembered") == "echo: [redacted]"
    for number in range(redaction.REMEMBERED):
        redaction.remember(f"later-key-{number:04d}")
    assert redaction.scrub("first-remembered-key") == "first-remembered-key"


def test_bodies_keep_short_runs_that_occur_by_chance():
    key = "0123456789abcdef0123456789abcdef"
    body = b'{"result": [0.01234567, 1.5], "echo": "0123456789abcdef0123456789abcdef"}'
    assert redaction.scrub_body(body, [key]) == (
        b'{"result": [0.01234567, 1.5], "echo": "[redacted]"}'
    )
