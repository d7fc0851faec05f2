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
    # The front door (``gate.py``): which Host and Origin headers are ours, how big a body may be.
    allowed_hosts: list[str] = field(default_factory=list)  # "host:port" or "host:*"; [] = this host, loopback
    allowed_origins: list[str] = field(default_factory=list)  # browser origins allowed besides the registry's own
    max_body_bytes: int = 1 << 20
    max_json_depth: int = 64
    # Caller tokens (``auth.py``).
    audience: str = "mcpmesh-registry"
    max_token_lifetime: int = 300
    token_clock_skew: int = 30
    trust_ttl: float = 5.0  # seconds a process keeps an agent's trusted keys before re-reading them

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

    def _own_hosts(self) -> list[str]:
        own = f"[{self.host}]" if ":" in self.host else self.host
        return sorted({own, "127.0.0.1", "localhost", "[::1]"})

    def host_patterns(self) -> list[str]:
        """Host headers the registry answers (``host:port`` or ``host:*``): configured ones, else its own
        host and loopback names. Anything else is a DNS-rebinding attempt or a misdirected request."""
        return list(self.allowed_hosts) or [f"{host}:*" for host in self._own_hosts()]

    def origin_patterns(self) -> list[str]:
        """Browser origins allowed to call: the registry's own (this port only), plus configured ones.
        A page from anywhere else must not act as the local user."""
        return [f"http://{host}:{self.port}" for host in self._own_hosts()] + list(self.allowed_origins)
