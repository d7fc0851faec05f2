"""Registry settings: the ``[registry]``, ``[policy]`` and ``[grants]`` tables of ``registry/registry.toml``.

Every setting has a default, so a workspace without the file runs as a local, single-user mesh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mesh.workspace import Workspace


@dataclass
class RegistryConfig:
    """What a registry process needs to know; ``from_workspace`` reads it, keywords override."""

    workspace: Workspace
    host: str = "127.0.0.1"
    port: int = 7300
    database_url: str | None = None
    strict: bool = False
    trust_local_keys: bool = False  # `mesh up` sets it: trust keys under this workspace's .mesh/
    allow_local_user: bool = True  # a caller on loopback without a token acts as "user:local"
    local_user_scopes: list[str] = field(default_factory=lambda: ["*"])
    grants: dict[str, list[str]] = field(default_factory=dict)  # agent -> scopes it holds as a caller
    policy: dict[str, Any] = field(default_factory=dict)  # data for the Rego policy
    call_timeout: float = 30.0
    recheck_interval: float = 30.0  # seconds between re-listing each agent's tools (rug-pull check)
    probe_interval: float = 60.0  # a target no call reached for this long gets one trial call past low_reputation

    @classmethod
    def from_workspace(cls, workspace: Workspace, **overrides: Any) -> RegistryConfig:
        document = workspace.config()
        section = dict(document.get("registry", {}))
        known = {name for name in cls.__dataclass_fields__ if name not in ("workspace", "grants", "policy")}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"registry/registry.toml: unknown [registry] settings: {', '.join(unknown)}")
        settings = {
            **section,
            "grants": {name: list(scopes) for name, scopes in document.get("grants", {}).items()},
            "policy": {"min_reputation": 0.3, "allow_destructive": [], **document.get("policy", {})},
        }
        settings.update({key: value for key, value in overrides.items() if value is not None})
        return cls(workspace=workspace, **settings)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"
