"""Which language model the mesh's LM features use: ``[lm]`` in ``registry/registry.toml``, then ``MESH_LM_*``.

The key is read from the environment only (``MESH_LM_API_KEY``, or the variable ``api_key_env`` names), never
from a file git tracks, and it is a ``SecretStr``: no repr, log line or error message shows it. Reading the
settings imports nothing heavy; ``mesh.lm.model`` builds the model when a feature needs one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, SecretStr, field_validator

ENV_PREFIX = "MESH_LM_"
HOW_TO_CONFIGURE = ("no language model is configured: set MESH_LM_MODEL (e.g. openai/gpt-4o-mini or "
                    "ollama_chat/llama3.2), with MESH_LM_BASE_URL and MESH_LM_API_KEY as the server needs, "
                    "or model = \"...\" under [lm] in registry/registry.toml")


class NoModelConfigured(Exception):
    """An LM feature was asked for and no model is configured; the message says how to configure one."""

    def __init__(self) -> None:
        super().__init__(HOW_TO_CONFIGURE)


class LMSettings(BaseModel):
    """The configured model; ``model is None`` means none, and every LM feature refuses (``require``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None  # a LiteLLM/DSPy model string, "provider/name"
    base_url: str | None = None  # an OpenAI-compatible server or Ollama, e.g. http://127.0.0.1:11434
    api_key: SecretStr | None = Field(None, exclude=True)  # from the environment only
    api_key_env: str | None = None  # the variable holding the key, when not MESH_LM_API_KEY
    engine: Literal["auto", "litellm", "lm15"] = "auto"  # DSPy's backend for the HTTP call
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: PositiveInt = 2000
    timeout: PositiveFloat = 120.0
    num_retries: int = Field(1, ge=0, le=10)

    @field_validator("model", "base_url")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if isinstance(value, str) else value

    @classmethod
    def resolve(cls, section: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> LMSettings:
        """``[lm]`` from registry.toml, overridden by MESH_LM_MODEL/BASE_URL/ENGINE and the key's variable.

        A key written into the file is refused: it would end up in git."""
        section = dict(section or {})
        environ = os.environ if environ is None else environ
        if "api_key" in section:
            raise ValueError("[lm] api_key: keep the key out of registry.toml (git tracks it); set MESH_LM_API_KEY "
                             "or name a variable with api_key_env")
        for name in ("model", "base_url", "engine"):
            if environ.get(ENV_PREFIX + name.upper()):
                section[name] = environ[ENV_PREFIX + name.upper()]
        key_variable = section.get("api_key_env") or ENV_PREFIX + "API_KEY"
        if environ.get(key_variable):
            section["api_key"] = environ[key_variable]
        return cls(**section)

    @property
    def configured(self) -> bool:
        return self.model is not None

    def require(self) -> LMSettings:
        """These settings, or ``NoModelConfigured`` (one line saying how to configure a model)."""
        if not self.configured:
            raise NoModelConfigured()
        return self

    def describe(self) -> str:
        """Model and server for a human; never the key, only whether there is one."""
        if not self.configured:
            return "none"
        where = f" at {self.base_url}" if self.base_url else ""
        return f"{self.model}{where} (key {'set' if self.api_key else 'not set'})"
