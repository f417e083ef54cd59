"""What the OpenAI and Cohere simulators share: keys, a managed identity, the e5 model."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from azure_ai_sim.sim import managed_identity
from azure_ai_sim.sim.e5 import E5, default_model_dir
from azure_ai_sim.sim.server import Simulator


class KeyedE5Simulator(Simulator):
    """A service that takes keys or managed-identity tokens, and answers with e5 (fp32,
    each text as if alone, as a real service embeds each text of a request on its own)."""

    default_key: str

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keys: Iterable[str] = (),
        model_dir: str | Path | None = None,
        identity_header: str = managed_identity.DEFAULT_HEADER_SECRET,
        request_timeout_ms: int | None = None,
        latency_ms: float = 0,
    ):
        super().__init__(host, port, request_timeout_ms=request_timeout_ms, latency_ms=latency_ms)
        self.keys = tuple(keys) or (self.default_key,)
        self.e5 = E5(Path(model_dir) if model_dir else default_model_dir(), exact=True)
        self.identity = managed_identity.ManagedIdentity(identity_header)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--key", action="append", help=f"a key it accepts ({cls.default_key})")
        parser.add_argument("--model-dir", help="multilingual-e5-small's files (default: the "
                            f"model cache, {default_model_dir()})")  # fmt: skip

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Simulator:
        return cls(args.host, args.port, **cls.options(args))

    @classmethod
    def options(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "keys": args.key or (), "model_dir": args.model_dir,
            "request_timeout_ms": args.request_timeout_ms, "latency_ms": args.latency_ms,
        }  # fmt: skip

    def has_key(self, secret: str) -> bool:
        return any([managed_identity.same_secret(secret, key) for key in self.keys])
