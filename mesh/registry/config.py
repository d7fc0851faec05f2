"""Registry settings: the ``[registry]``, ``[policy]``, ``[grants]``, ``[lm]``, ``[auth]``, ``[oidc]``,
``[approvals]``, ``[budgets]`` and ``[breaker]`` tables of ``registry/registry.toml``.

Every setting has a default, so a workspace without the file runs as a local, single-user mesh. The
settings are a pydantic model: a misspelt key or a value of the wrong type is one line naming the file,
the key and what is expected (``ConfigProblem``), with a guess for a misspelt key.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from mesh.lm.settings import LMSettings
from mesh.registry.budgets import BudgetSettings
from mesh.registry.migrations.rls import REGISTRY_ROLE
from mesh.workspace import Workspace, WorkspaceProblem

CONFIG_FILE = "registry/registry.toml"


class ConfigProblem(WorkspaceProblem):
    """``registry/registry.toml`` says something the registry cannot use; the message names the key."""


ROLE_NAMES = ("owner", "admin", "member", "viewer")


class AuthConfig(BaseModel):
    """``[auth]``: people and their personal API tokens (``people.py``)."""

    model_config = ConfigDict(extra="forbid")

    default_org: str = Field("default", pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")  # the local user owns it
    token_days: PositiveInt = 30  # a personal API token's life when none is asked for
    max_token_days: PositiveInt = 365


class OidcConfig(BaseModel):
    """``[oidc]``: the OpenID provider whose access tokens the registry accepts (``oidc.py``)."""

    model_config = ConfigDict(extra="forbid")

    issuer: str  # e.g. "https://login.example.com/realms/acme"; its discovery document names the JWKS
    audience: str | None = None  # the resource indicator tokens must be for; default: the registry's URL
    groups_claim: str = "groups"
    # group -> "ORG:ROLE", e.g. "mesh-admins" = "default:admin"; a person's groups decide these memberships
    roles: dict[str, str] = Field(default_factory=dict)
    default_role: str | None = None  # role in the default org for a signed-in person no group maps
    client_id: str = "mcpmesh"  # the public client `mesh login` and the browser sign-in use (PKCE)
    client_secret: str | None = None  # only if the provider insists on a confidential client for the browser
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"])

    @model_validator(mode="after")
    def known_roles(self) -> OidcConfig:
        for group, target in self.roles.items():
            org, _, role = target.rpartition(":")
            if not org or role not in ROLE_NAMES:
                raise ValueError(f"[oidc.roles] {group!r} = {target!r}: expected \"ORG:ROLE\" with ROLE one of "
                                 f"{', '.join(ROLE_NAMES)}")
        if self.default_role is not None and self.default_role not in ROLE_NAMES:
            raise ValueError(f"[oidc] default_role must be one of {', '.join(ROLE_NAMES)}")
        return self


class ApprovalsConfig(BaseModel):
    """``[approvals]``: how long a call the policy wants approved waits for a person (``approvals.py``)."""

    model_config = ConfigDict(extra="forbid")

    timeout: PositiveFloat = 300.0  # seconds a call waits for an approver before it is refused (expired)
    poll_interval: PositiveFloat = 1.0  # seconds between looks at the database (another process may decide)


class BreakerConfig(BaseModel):
    """``[breaker]``: when a per-agent circuit breaker opens, how long it stays open, how it probes (``breaker.py``)."""

    model_config = ConfigDict(extra="forbid")

    consecutive_failures: NonNegativeInt = 0  # target failures in a row that open it too; 0: reputation alone
    trip_below: float | None = Field(None, ge=0, le=1)  # reputation that opens it; default [policy] min_reputation
    open_seconds: NonNegativeFloat | None = None  # how long it refuses calls; default [registry] probe_interval
    probe_calls: PositiveInt = 1  # calls let through at a time while half-open


class RegistryConfig(BaseModel):
    """What a registry process needs to know; ``from_workspace`` reads it, keywords override."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)

    workspace: Workspace
    host: str = "127.0.0.1"
    port: int = Field(7300, ge=0, le=65535)
    database_url: str | None = None
    # PostgreSQL: serve as this least-privilege role, under row-level security (``tenancy.py``). Unset:
    # "mesh_registry", which the migrations create and make the login role a member of. "": opt out and
    # serve as the login role (the tables' owner bypasses row-level security; the store's rules alone isolate).
    database_role: str | None = None
    strict: bool = False
    trust_local_keys: bool = False  # `mesh up` sets it: trust keys under this workspace's .mesh/
    allow_local_user: bool = True  # a caller on loopback without a token acts as "user:local"
    local_user_scopes: list[str] = Field(default_factory=lambda: ["*"])
    grants: dict[str, list[str]] = Field(default_factory=dict)  # agent -> scopes it holds as a caller
    agent_projects: dict[str, str] = Field(default_factory=dict)  # agent -> "ORG/PROJECT" ([agents.NAME] project)
    policy: dict[str, Any] = Field(default_factory=dict)  # data for the Rego policy
    call_timeout: PositiveFloat = 30.0
    retry_attempts: PositiveInt = 3  # sends of a read-only or idempotent tool's call the agent never answered
    recheck_interval: PositiveFloat = 30.0  # seconds between re-listing each agent's tools (rug-pull check)
    probe_interval: NonNegativeFloat = 60.0  # a target no call reached for this long gets one trial call
    # The front door (``gate.py``): which Host and Origin headers are ours, how big a body may be.
    allowed_hosts: list[str] = Field(default_factory=list)  # "host:port" or "host:*"; [] = this host, loopback
    allowed_origins: list[str] = Field(default_factory=list)  # browser origins allowed besides the registry's own
    max_body_bytes: PositiveInt = 1 << 20
    max_json_depth: PositiveInt = 64
    # Caller tokens (``auth.py``).
    audience: str = "mcpmesh-registry"
    max_token_lifetime: PositiveInt = 300
    token_clock_skew: NonNegativeFloat = 30
    trust_ttl: NonNegativeFloat = 5.0  # seconds a process keeps an agent's trusted keys before re-reading them
    lm: LMSettings = Field(default_factory=LMSettings)  # the model LM features use (``mesh.lm``); none by default
    auth: AuthConfig = Field(default_factory=AuthConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    oidc: OidcConfig | None = None
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)  # limits, costs, alerts (``budgets.py``)

    @classmethod
    def from_workspace(cls, workspace: Workspace, **overrides: Any) -> RegistryConfig:
        document = workspace.config()
        section = document.get("registry", {})
        if not isinstance(section, dict):
            raise ConfigProblem(f"{CONFIG_FILE}: [registry] must be a table")
        settings = {
            **section,
            "grants": document.get("grants", {}),
            "agent_projects": {name: settings["project"] for name, settings in (document.get("agents") or {}).items()
                               if isinstance(settings, dict) and "project" in settings},
            "auth": document.get("auth", {}),
            "approvals": document.get("approvals", {}),
            "budgets": document.get("budgets", {}),
            "breaker": document.get("breaker", {}),
            **({"oidc": document["oidc"]} if "oidc" in document else {}),
            "policy": {"min_reputation": 0.3, "allow_destructive": [], **document.get("policy", {})},
        }
        settings.update({key: value for key, value in overrides.items() if value is not None})
        if "lm" not in overrides:
            settings["lm"] = lm_settings(document)
        try:
            return cls(workspace=workspace, **settings)
        except ValidationError as exc:
            raise ConfigProblem(describe(exc, cls)) from None


    def serving_role(self, dialect: str) -> str | None:
        """The database role the registry serves as once migrated: on PostgreSQL ``database_role``, by
        default the least-privilege ``mesh_registry``; None to serve as the login role (opted out, SQLite)."""
        if dialect != "postgresql":
            if self.database_role:
                raise ConfigProblem(f"{CONFIG_FILE}: [registry] database_role = {self.database_role!r} needs a "
                                    "PostgreSQL database_url (row-level security); remove it for SQLite")
            return None
        if self.database_role is None:
            return REGISTRY_ROLE
        return self.database_role or None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def resource(self) -> str:
        """The registry as an OAuth protected resource (RFC 9728): what access tokens must be issued for."""
        return (self.oidc.audience if self.oidc and self.oidc.audience else self.base_url).rstrip("/")

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


def lm_settings(document: dict[str, Any]) -> LMSettings:
    """``[lm]`` of a registry.toml document with ``MESH_LM_*`` applied; a mistake is a ``ConfigProblem``."""
    section = document.get("lm", {})
    if not isinstance(section, dict):
        raise ConfigProblem(f"{CONFIG_FILE}: [lm] must be a table")
    try:
        return LMSettings.resolve(section)
    except ValidationError as exc:
        raise ConfigProblem(describe(exc, LMSettings, table="[lm] ")) from None
    except ValueError as exc:
        raise ConfigProblem(f"{CONFIG_FILE}: {exc}") from None


def describe(error: ValidationError, model: type[BaseModel], table: str | None = None) -> str:
    """The first problem of a validation error as one line: file, table, key, what is expected."""
    first = error.errors()[0]
    location = [str(part) for part in first["loc"]]
    key = location[0] if location else "?"
    if table is None:
        table = "" if key in ("grants", "policy", "auth", "oidc", "approvals", "budgets", "breaker") else "[registry] "
    where = f"{CONFIG_FILE}: {table}{'.'.join(location)}"
    if first["type"] == "extra_forbidden":
        if len(location) > 1 and key in TABLES:  # a key inside one of the tables: guess among that table's
            model, key = TABLES[key], location[-1]
        known = [name for name in model.model_fields if name not in ("workspace", "grants", "policy", "lm", "auth",
                                                                    "oidc", "approvals", "budgets", "breaker")]
        guess = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else f" (known settings: {', '.join(known)})"
        return f"{where}: unknown setting{hint}"
    return f"{where}: {first['msg']}, not {first.get('input')!r}"


TABLES: dict[str, type[BaseModel]] = {"auth": AuthConfig, "oidc": OidcConfig, "approvals": ApprovalsConfig,
                                      "breaker": BreakerConfig}
