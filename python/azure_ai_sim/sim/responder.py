"""The chat simulator's language model: a small deterministic responder, not an LLM.

It answers the last user message of a chat, by rules simple enough for a test to predict,
and with the local e5 model where a rule needs a judgement of meaning:

- no JSON schema: "Simulated reply: " followed by the message;
- a JSON schema (structured outputs): a value that conforms to it, built field by field:
  - string with an enum: the choice closest in meaning to the message (e5);
  - string: the clause of the message closest in meaning to the field's name and
    description (e5), so that extraction returns a piece of the document;
  - number, integer: when the message has a "Query:" line and a "Document:" line, their
    e5 similarity (0 to 1) placed in the field's range (a relevance score); else the
    middle of the range, the range being the field's minimum and maximum or "A to B"
    in its description; else 0;
  - boolean: false if the message has a negation (not, no, never, n't, false, ...); null,
    where the schema allows it, if it hedges (maybe, perhaps, unclear, ... or ends with
    "?"); true otherwise;
  - object: each property; array: one item.
"""

from __future__ import annotations

import re
from typing import Any

from azure_ai_sim.sim.e5 import E5

NEGATION = re.compile(r"\b(not|no|never|none|nothing|nobody|false|cannot)\b|n't\b", re.I)
HEDGE = re.compile(r"\b(maybe|perhaps|possibly|unknown|unclear|uncertain|might)\b|\?\s*$", re.I)
RANGE = re.compile(r"(-?\d+(?:\.\d+)?)\D{0,20}?\bto\b\D{0,20}?(-?\d+(?:\.\d+)?)")
CLAUSES = re.compile(r"(?<=[.!?;])\s+|,\s+|\s+(?:but|though|although|while)\s+", re.I)
QUERY_AND_DOCUMENT = re.compile(r"^Query:\s*(.*?)\s*^Document:\s*(.*)\Z", re.M | re.S)


class Responder:
    def __init__(self, e5: E5):
        self.e5 = e5

    def reply(self, message: str, schema: dict | None) -> Any:
        """The answer to a user message: text, or a value that conforms to schema."""
        if schema is None:
            return f"Simulated reply: {message}"
        return self._value(schema, message, "")

    def _value(self, schema: dict, message: str, about: str) -> Any:
        types = schema.get("type", "object")
        types = types if isinstance(types, list) else [types]
        kind = next((t for t in types if t != "null"), "null")
        about = " ".join(filter(None, [about, schema.get("description", "")]))
        if "enum" in schema:
            choices = [choice for choice in schema["enum"] if choice is not None]
            return self._closest(message, [str(c) for c in choices], choices) if choices else None
        if kind == "object":
            properties = schema.get("properties", {})
            return {
                name: self._value(sub, message, f"{name}: {sub.get('description', '')}")
                for name, sub in properties.items()
            }
        if kind == "array":
            return [self._value(schema.get("items", {}), message, about)]
        if kind == "string":
            clauses = [c.strip(" .!?;") for c in CLAUSES.split(message) if c.strip(" .!?;")]
            return self._closest(about, clauses, clauses) if clauses else ""
        if kind in ("number", "integer"):
            number = self._number(schema, message, about)
            return round(number) if kind == "integer" else number
        if kind == "boolean":
            if NEGATION.search(message):
                return False
            if "null" in types and HEDGE.search(message):
                return None
            return True
        return None

    def _number(self, schema: dict, message: str, about: str) -> float:
        low, high = schema.get("minimum"), schema.get("maximum")
        described = RANGE.search(about)
        if (low is None or high is None) and described:
            low, high = float(described[1]), float(described[2])
        pair = QUERY_AND_DOCUMENT.search(message)
        if pair:
            score = min(1.0, max(0.0, float(self.e5.similarities(pair[1], [pair[2]])[0])))
            low, high = (0.0, 1.0) if low is None or high is None else (low, high)
            return round(low + (high - low) * score, 6)
        if low is not None and high is not None:
            middle = (low + high) / 2
            return int(middle) if middle == int(middle) else middle
        return 0

    def _closest(self, text: str, candidates: list[str], values: list) -> Any:
        """The value whose candidate text is closest in meaning to text (e5)."""
        if len(values) == 1:
            return values[0]
        return values[int(self.e5.similarities(text, candidates).argmax())]
