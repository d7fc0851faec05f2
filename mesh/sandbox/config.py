"""What a sandbox is made of: the request that creates it, each service's configuration, and the
description of one sandbox that the registry hands the sandbox agent with every call.

Pydantic models, so the registry refuses a bad request with the field named, and the sandbox agent's
tools get their JSON Schema from the same definitions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MODES = ("mock", "emulated", "connected")
Mode = Literal["mock", "emulated", "connected"]
MAX_TTL_SECONDS = 30 * 24 * 3600
DEFAULT_TTL_SECONDS = 3600
# A connected sandbox names its credential; only variables exported for the purpose can be named, so a
# sandbox cannot read any other secret of the sandbox agent's environment.
SECRET_REF = re.compile(r"env:(MESH_SECRET_[A-Z0-9_]+)")
SPEC_SUFFIXES = (".yaml", ".yml", ".json")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Failures(Strict):
    """Failure injection: a share of calls answered with an error status, and latency added to every call."""

    rate: float = Field(0.0, ge=0.0, le=1.0, description="share of calls answered with `status` (0 to 1)")
    status: int = Field(429, ge=400, le=599, description="the status of an injected failure")
    latency_ms: int = Field(0, ge=0, le=10_000, description="added to every call before it is answered")
    retry_after: int | None = Field(1, ge=0, le=3600, description="Retry-After (seconds) on an injected 429/503")
    operations: list[str] | None = Field(None, description="only these operation ids (default: every one)")


class FixedResponse(Strict):
    """An answer given instead of the spec's, for one operation, optionally only when arguments match."""

    operation_id: str
    status: int = Field(200, ge=100, le=599)
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    when: dict[str, Any] | None = Field(
        None, description="path or query parameters that must have these values (default: any call)")


class ServiceConfig(Strict):
    """One service's custom configuration inside a sandbox."""

    seed: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict, description="emulated mode: records per collection path, e.g. {'/pets': [...]}")
    responses: list[FixedResponse] = Field(default_factory=list)
    failures: Failures | None = None
    credentials: list[str] = Field(
        default_factory=list, description="tokens or API keys the emulated service accepts where its spec "
                                          "asks for security; empty: no credential is checked")
    base_url: str | None = Field(None, description="connected mode: the real endpoint (default: the spec's "
                                                   "first server)")

    @field_validator("base_url")
    @classmethod
    def _http_only(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^\s/]+", value):
            raise ValueError("base_url must be an http:// or https:// URL")
        return value


class SandboxRequest(Strict):
    """The body of ``POST /v1/agents/{name}/sandboxes``."""

    required_services: list[str] = Field(min_length=1, max_length=20,
                                         description="OpenAPI specs of the workspace, by name")
    mode: Mode = "emulated"
    services: dict[str, ServiceConfig] = Field(default_factory=dict, description="configuration per service")
    ttl_seconds: int = Field(DEFAULT_TTL_SECONDS, ge=1, le=MAX_TTL_SECONDS)
    secret_ref: str | None = Field(None, description="connected mode: env:MESH_SECRET_NAME")
    description: str = Field("", max_length=2000)

    @field_validator("required_services")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names a service twice")
        return value

    @field_validator("secret_ref")
    @classmethod
    def _secret_ref(cls, value: str | None) -> str | None:
        if value is not None and not SECRET_REF.fullmatch(value):
            raise ValueError("must be env:MESH_SECRET_NAME (an environment variable of the sandbox agent "
                             "whose name starts with MESH_SECRET_)")
        return value


class SandboxPatch(Strict):
    """The body of ``PATCH``: every field optional; what is given replaces what was there."""

    required_services: list[str] | None = Field(None, min_length=1, max_length=20)
    mode: Mode | None = None
    services: dict[str, ServiceConfig] | None = None
    ttl_seconds: int | None = Field(None, ge=1, le=MAX_TTL_SECONDS, description="counted again from now")
    secret_ref: str | None = None
    description: str | None = Field(None, max_length=2000)

    @field_validator("required_services")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else SandboxRequest._distinct(value)

    @field_validator("secret_ref")
    @classmethod
    def _secret_ref(cls, value: str | None) -> str | None:
        return SandboxRequest._secret_ref(value)


class SandboxRef(BaseModel):
    """One sandbox as the sandbox agent needs it for a call: sent by the registry with every call, so the
    agent keeps no copy of the registry's records. State is kept per (id, revision)."""

    id: str = Field(max_length=64)
    revision: int = Field(ge=1)
    mode: Mode
    required_services: list[str] = Field(min_length=1, max_length=20)
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    secret_ref: str | None = None
    expires_at: float = Field(description="seconds since the epoch; the agent forgets the state after it")


def workspace_specs(workspace: Path, listed: Any = None) -> dict[str, Path]:
    """The OpenAPI specs a workspace serves, by name (the file's stem): ``docs/openapi/*``, or the paths
    ``[agents.sandbox] specs`` lists (relative to the workspace)."""
    if listed is None:
        folder = workspace / "docs" / "openapi"
        paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in SPEC_SUFFIXES) if folder.is_dir() else []
    elif isinstance(listed, list) and all(isinstance(item, str) for item in listed):
        paths = [workspace / item for item in listed]
    else:
        raise ValueError("settings 'specs' must be a list of paths relative to the workspace")
    specs: dict[str, Path] = {}
    for path in paths:
        if path.stem in specs:
            raise ValueError(f"two specs would both be called {path.stem!r}: rename one of them ({path})")
        specs[path.stem] = path
    return specs
