"""The one place that builds the configured model: a ``dspy.LM`` for every LM feature of the mesh.

DSPy is imported here and only when a feature asks for a model (importing it costs about 0.6 s, LiteLLM
3.5 s more), so nothing else in the mesh pays for it or depends on it. LiteLLM is told to use the price
table in its wheel: nothing is fetched from the internet at run time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from mesh.lm.settings import LMSettings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm can be imported by anyone


def load_dspy() -> Any:
    """``dspy``, imported with LiteLLM kept offline (its price table from the wheel, no telemetry)."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    os.environ.setdefault("DSPY_CACHEDIR", os.path.join(os.path.expanduser("~"), ".cache", "mcpmesh-dspy"))
    import dspy

    return dspy


def build_lm(settings: LMSettings, *, cache: bool = False) -> Any:
    """A ``dspy.LM`` for the configured model; ``NoModelConfigured`` when there is none.

    No response cache by default: the learning loop must see the model answer each new prompt, and its
    budget counts real calls."""
    settings.require()
    dspy = load_dspy()
    client: dict[str, Any] = {"timeout": settings.timeout}
    if settings.base_url:
        client["api_base"] = settings.base_url
    if settings.api_key is not None:
        client["api_key"] = settings.api_key.get_secret_value()
    elif settings.base_url:
        client["api_key"] = "none"  # OpenAI-compatible local servers want some key, and ask for none
    return dspy.LM(settings.model, temperature=settings.temperature, max_tokens=settings.max_tokens,
                   cache=cache, num_retries=settings.num_retries, engine=settings.engine, **client)


@dataclass(frozen=True)
class Usage:
    """Calls made and tokens spent by one ``dspy.LM`` since a mark (``usage_since``)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.calls + other.calls, self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens)


def usage_since(lm: Any, mark: int = 0) -> Usage:
    """What ``lm.history[mark:]`` spent: each entry is one call with the server's reported usage."""
    calls = prompt = completion = 0
    for entry in lm.history[mark:]:
        calls += 1
        usage = entry.get("usage") or {}
        prompt += int(usage.get("prompt_tokens") or 0)
        completion += int(usage.get("completion_tokens") or 0)
    return Usage(calls, prompt, completion)


@dataclass(frozen=True)
class CheckResult:
    """What ``check`` found: whether the model answered, how fast, and its reply or the reason it did not."""

    ok: bool
    model: str
    seconds: float
    detail: str


def check(settings: LMSettings) -> CheckResult:
    """Ask the configured model one short question (``mesh lm check``)."""
    lm = build_lm(settings)
    started = time.perf_counter()
    try:
        replies = lm(messages=[{"role": "user", "content": "Reply with the single word: pong"}])
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        if settings.api_key is not None:
            message = message.replace(settings.api_key.get_secret_value(), "***")
        return CheckResult(False, settings.describe(), time.perf_counter() - started,
                           f"{type(exc).__name__}: {message}")
    reply = replies[0] if replies else ""
    text = reply.get("text", "") if isinstance(reply, dict) else str(reply)
    return CheckResult(True, settings.describe(), time.perf_counter() - started, " ".join(text.split())[:200])
