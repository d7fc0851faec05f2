"""The registry's sandboxes: created for an agent, changed, reset, deleted, expired; and approvals.

The registry owns every sandbox's record (``sandboxes``), the attempts made in it (``sandbox_runs``) and
the operator's approvals (``approvals``); the ``sandbox`` agent runs the services and holds their state.
A reset or a change of what the services are moves the sandbox to a new ``revision``, which the agent
starts from the seed data; runs, their provenance and whatever else refers to the sandbox stay.
A removed sandbox (deleted, or expired: ``expire_due`` marks them, the registry runs it every few
seconds) keeps its row and its runs but answers no call.

Connected mode is the one way out of the machine, so it asks for two things before it is allowed, at
creation, at every change, and again at every call: the sandbox names its credential (``secret_ref``,
``env:MESH_SECRET_NAME``, read by the sandbox agent) and an operator approved each of its services for
the agent at the endpoint it reaches (``mesh approve AGENT SERVICE [--base-url URL]``: an ``approvals``
row with scope ``sandbox:connected``), so the credential goes nowhere the operator did not say.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from mesh.registry import store
from mesh.registry.auth import Caller
from mesh.registry.node import Registry
from mesh.registry.problems import Problem
from mesh.sandbox.config import SandboxPatch, SandboxRef, SandboxRequest, ServiceConfig, workspace_specs
from mesh.sandbox.openapi_mock import MockAPI, OpenAPIError

SANDBOX_AGENT = "sandbox"  # the agent that runs every sandbox's services
CONNECTED_SCOPE = "sandbox:connected"


class Catalog:
    """The workspace's OpenAPI specs by name, as the sandbox agent loads them; parsed once each (again
    when the file changes)."""

    def __init__(self, specs: Callable[[], dict[str, Path]]):
        self._specs = specs
        self._apis: dict[str, tuple[float, MockAPI]] = {}

    def names(self) -> list[str]:
        return sorted(self._specs())

    def api(self, name: str) -> MockAPI:
        specs = self._specs()
        if name not in specs:
            raise Problem("bad-request", f"no spec {name[:80]!r} in the workspace (known: {', '.join(sorted(specs))})")
        path = specs[name]
        stamp = os.stat(path).st_mtime
        cached = self._apis.get(name)
        if cached is None or cached[0] != stamp:
            try:
                cached = self._apis[name] = (stamp, MockAPI.from_file(path, name, stateful=False))
            except OpenAPIError as exc:
                raise Problem("bad-request", f"spec {name!r} cannot be served: {exc}") from exc
        return cached[1]


def workspace_catalog(registry: Registry) -> Catalog:
    workspace = registry.config.workspace

    def specs() -> dict[str, Path]:
        settings = (workspace.config().get("agents") or {}).get(SANDBOX_AGENT) or {}
        return workspace_specs(workspace.root, settings.get("specs"))

    return Catalog(specs)


def _now() -> datetime:
    return datetime.now(UTC)


class Sandboxes:
    """Every operation on sandboxes and approvals; ``clock`` is injectable so expiry can be tested."""

    def __init__(self, registry: Registry, catalog: Catalog | None = None, clock: Callable[[], datetime] = _now):
        self.registry = registry
        self.catalog = catalog or workspace_catalog(registry)
        self.clock = clock

    # -- sandboxes -------------------------------------------------------------------------------------

    def create(self, caller: Caller, agent: str, body: dict[str, Any]) -> store.SandboxRecord:
        if not self.registry.tenancy.visible(caller, agent):  # unregistered, or another project's
            raise Problem("unknown-agent", f"no agent {agent!r} is registered")
        request = _parse(SandboxRequest, body)
        self._check_services(request.required_services, request.services)
        now = self.clock()
        with self.registry.sessions.begin() as session:
            self._check_connected(session, agent, request.mode, request.required_services, request.secret_ref,
                                  request.services)
            record = store.SandboxRecord(
                agent=agent, mode=request.mode, required_services=request.required_services,
                services=_services_json(request.services), secret_ref=request.secret_ref,
                description=request.description, ttl_seconds=request.ttl_seconds, revision=1, status="active",
                created_by=caller.id, created_at=now, updated_at=now,
                expires_at=now + timedelta(seconds=request.ttl_seconds))
            return store.add_sandbox(session, record)

    def get(self, agent: str, sandbox_id: str) -> store.SandboxRecord:
        """The sandbox, removed ones too (their status says so); one whose time is up is expired now."""
        with self.registry.sessions.begin() as session:
            record = store.get_sandbox(session, sandbox_id)
            if record is None or record.agent != agent:
                raise Problem("unknown-sandbox", f"agent {agent!r} has no sandbox {sandbox_id[:80]!r}")
            self._expire_if_due(record)
            return record

    def active(self, agent: str, sandbox_id: str) -> store.SandboxRecord:
        record = self.get(agent, sandbox_id)
        if record.status != "active":
            raise Problem("sandbox-expired", f"sandbox {sandbox_id} is {record.status} since "
                                             f"{record.removed_at.isoformat() if record.removed_at else '?'}")
        return record

    def list(self, agent: str | None = None, *, removed: bool = False) -> list[store.SandboxRecord]:
        self.expire_due()
        with self.registry.sessions.begin() as session:
            return store.list_sandboxes(session, agent, removed=removed)

    def update(self, agent: str, sandbox_id: str, body: dict[str, Any]) -> store.SandboxRecord:
        """Change what is given; a new set of services, mode or configuration starts a new revision."""
        patch = _parse(SandboxPatch, body)
        given = patch.model_fields_set
        self.active(agent, sandbox_id)
        now = self.clock()
        with self.registry.sessions.begin() as session:
            record = store.get_sandbox(session, sandbox_id)
            assert record is not None
            required = patch.required_services if patch.required_services is not None else record.required_services
            mode = patch.mode or record.mode
            services = patch.services if patch.services is not None else {
                name: ServiceConfig.model_validate(config) for name, config in record.services.items()}
            secret_ref = patch.secret_ref if "secret_ref" in given else record.secret_ref
            self._check_services(required, services)
            self._check_connected(session, agent, mode, required, secret_ref, services)
            changed = (required != record.required_services or mode != record.mode
                       or _services_json(services) != record.services)
            record.required_services, record.mode, record.services = list(required), mode, _services_json(services)
            record.secret_ref = secret_ref
            if "description" in given and patch.description is not None:
                record.description = patch.description
            if "ttl_seconds" in given and patch.ttl_seconds is not None:
                record.ttl_seconds = patch.ttl_seconds
                record.expires_at = now + timedelta(seconds=patch.ttl_seconds)
            if changed:
                record.revision += 1
            record.updated_at = now
            return record

    def reset(self, agent: str, sandbox_id: str) -> store.SandboxRecord:
        """Start the services again from their seed data; the sandbox's runs and their provenance stay."""
        self.active(agent, sandbox_id)
        with self.registry.sessions.begin() as session:
            record = store.get_sandbox(session, sandbox_id)
            assert record is not None
            record.revision += 1
            record.updated_at = self.clock()
            return record

    def delete(self, agent: str, sandbox_id: str) -> store.SandboxRecord:
        self.active(agent, sandbox_id)
        now = self.clock()
        with self.registry.sessions.begin() as session:
            record = store.get_sandbox(session, sandbox_id)
            assert record is not None
            record.status, record.removed_at, record.updated_at = "deleted", now, now
            return record

    def expire_due(self) -> list[str]:
        """Mark every sandbox whose time is up as expired; returns their ids."""
        with self.registry.sessions.begin() as session:
            return store.expire_sandboxes(session, self.clock())

    def _expire_if_due(self, record: store.SandboxRecord) -> None:
        if record.status == "active" and record.expires_at <= self.clock():
            record.status, record.removed_at = "expired", self.clock()

    def ref(self, record: store.SandboxRecord, endpoints: dict[str, str | None] | None = None) -> dict[str, Any]:
        """The sandbox as the sandbox agent needs it with each call (``SandboxRef``); a connected sandbox's
        services carry the endpoint their approval names (``endpoints``, from ``check_callable``)."""
        services = {name: dict(config) for name, config in record.services.items()}
        for name, url in (endpoints or {}).items():
            if url is not None:
                services.setdefault(name, {})["base_url"] = url
        return SandboxRef(id=record.id, revision=record.revision, mode=record.mode,  # type: ignore[arg-type]
                          required_services=record.required_services, services=services,
                          secret_ref=record.secret_ref,
                          expires_at=record.expires_at.timestamp()).model_dump(mode="json", exclude_defaults=True)

    def check_callable(self, record: store.SandboxRecord) -> dict[str, str | None]:
        """Before every call: a connected sandbox still has its credential named and its approvals.
        Returns each service's approved endpoint (None: the spec's server); {} for other modes."""
        with self.registry.sessions.begin() as session:
            services = {name: ServiceConfig.model_validate(config) for name, config in record.services.items()}
            return self._check_connected(session, record.agent, record.mode, record.required_services,
                                         record.secret_ref, services)

    def _check_services(self, required: list[str], services: dict[str, ServiceConfig]) -> None:
        unknown = sorted(set(services) - set(required))
        if unknown:
            raise Problem("bad-request", f"services configures {unknown[0]!r}, which required_services does not "
                                         "name")
        for name in required:
            api = self.catalog.api(name)
            config = services.get(name)
            if config is None:
                continue
            known = {op.operation_id for op in api.operations()}
            named = [(f"services.{name}.responses[{i}].operation_id", fixed.operation_id)
                     for i, fixed in enumerate(config.responses)]
            named += [(f"services.{name}.failures.operations", op) for op in (config.failures.operations or [])
                      ] if config.failures else []
            for where, operation_id in named:
                if operation_id not in known:
                    raise Problem("bad-request", f"{where}: {name} has no operation {operation_id!r}")
            for collection in config.seed:
                if not collection.startswith("/"):
                    raise Problem("bad-request", f"services.{name}.seed: {collection!r} is not a collection path "
                                                 "(e.g. '/pets')")

    def _check_connected(self, session: Any, agent: str, mode: str, required: list[str], secret_ref: str | None,
                         services: dict[str, ServiceConfig]) -> dict[str, str | None]:
        """For connected mode: the credential is named, and each service is approved for ``agent`` at the
        endpoint the sandbox would reach (an approval names it, else the spec's own server). Returns each
        service's approved endpoint."""
        if mode != "connected":
            return {}
        if not secret_ref:
            raise Problem("bad-request", "a connected sandbox must name its credential: secret_ref "
                                         "env:MESH_SECRET_NAME (an environment variable of the sandbox agent)")
        approvals = store.list_approvals(session, agent, scope=CONNECTED_SCOPE)
        endpoints: dict[str, str | None] = {}
        for name in required:
            wanted = services[name].base_url if name in services else None
            matching = [a for a in approvals if a.service == name and (wanted is None or a.base_url == wanted)]
            if not matching:
                where = f" at {wanted}" if wanted else ""
                option = f" --base-url {wanted}" if wanted else ""
                raise Problem("approval-required", f"connected mode reaches the real {name!r}{where}: an operator "
                                                   f"must approve it first (mesh approve {agent} {name}{option})")
            endpoints[name] = matching[0].base_url
        return endpoints

    # -- runs ------------------------------------------------------------------------------------------

    def record_run(self, run: store.SandboxRunRecord) -> int:
        """Keep one attempt; returns its id (a learning attempt names it as evidence)."""
        with self.registry.sessions.begin() as session:
            return store.record_sandbox_run(session, run).id

    def runs(self, agent: str, sandbox_id: str, *, limit: int = 100, after: int | None = None
             ) -> list[store.SandboxRunRecord]:
        self.get(agent, sandbox_id)
        with self.registry.sessions.begin() as session:
            return store.list_sandbox_runs(session, sandbox_id, limit=limit, after=after)

    # -- approvals -------------------------------------------------------------------------------------

    def approve(self, caller: Caller, body: dict[str, Any]) -> store.ApprovalRecord:
        request = _parse(ApprovalRequest, body)
        self.catalog.api(request.service)
        with self.registry.sessions.begin() as session:
            record = store.ApprovalRecord(agent=request.agent, service=request.service, scope=request.scope,
                                          approved_by=caller.id, approved_at=self.clock(), note=request.note,
                                          base_url=request.base_url)
            store.add_approval(session, record)
            store.audit(session, org=record.org_id, actor=caller.id, action="approve", subject=request.agent,
                        outcome="done",
                        detail=f"{request.scope} for {request.service} at {request.base_url or 'its spec server'}"
                        + (f": {request.note}" if request.note else ""))
            return record

    def approvals(self, agent: str | None = None, *, revoked: bool = False) -> list[store.ApprovalRecord]:
        with self.registry.sessions.begin() as session:
            return store.list_approvals(session, agent, revoked=revoked)

    def revoke_approval(self, caller: Caller, approval_id: str) -> store.ApprovalRecord:
        with self.registry.sessions.begin() as session:
            record = store.get_approval(session, approval_id)
            if record is None:
                raise Problem("unknown-approval", f"no approval {approval_id[:80]!r}")
            if record.revoked_at is None:
                record.revoked_at = self.clock()
                store.audit(session, org=record.org_id, actor=caller.id, action="revoke-approval",
                            subject=record.agent,
                            outcome="done", detail=f"{record.scope} for {record.service}")
            return record


class ApprovalRequest(BaseModel):
    """The body of ``POST /v1/approvals``: which agent may reach which service, where (``base_url``; the
    spec's first server when absent) — a sandbox cannot send the credential anywhere else."""

    model_config = {"extra": "forbid"}

    agent: str = Field(max_length=64)
    service: str = Field(max_length=200)
    scope: Literal["sandbox:connected"] = CONNECTED_SCOPE
    base_url: str | None = None
    note: str | None = Field(None, max_length=2000)

    _http_only = field_validator("base_url")(ServiceConfig._http_only.__func__)  # type: ignore[attr-defined]


def _parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    """A request body as ``model``, or a bad-request problem naming each wrong field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc']) or '(body)'}: {error['msg']}"
                             for error in exc.errors()[:5])
        raise Problem("bad-request", problems) from exc


def _services_json(services: dict[str, ServiceConfig]) -> dict[str, Any]:
    return {name: config.model_dump(mode="json", exclude_defaults=True) for name, config in services.items()}


def sandbox_json(record: store.SandboxRecord, base_url: str = "") -> dict[str, Any]:
    path = f"/agents/{record.agent}/sandboxes/{record.id}"
    return {
        "id": record.id, "agent": record.agent, "mode": record.mode, "status": record.status,
        "required_services": record.required_services, "services": record.services,
        "secret_ref": record.secret_ref, "description": record.description, "ttl_seconds": record.ttl_seconds,
        "revision": record.revision, "created_by": record.created_by, "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(), "expires_at": record.expires_at.isoformat(),
        "removed_at": record.removed_at.isoformat() if record.removed_at else None,
        "mcp": f"{base_url}{path}/mcp", "href": f"{base_url}/v1{path}",
    }


def sandbox_run_json(run: store.SandboxRunRecord) -> dict[str, Any]:
    return {
        "id": run.id, "sandbox_id": run.sandbox_id, "revision": run.revision, "run_id": run.run_id,
        "caller": run.caller, "service": run.service, "operation_id": run.operation_id, "attempt": run.attempt,
        "arguments": run.arguments, "status": run.status, "http_status": run.http_status, "answer": run.answer,
        "error": run.error, "started_at": run.started_at.isoformat(),
    }


def approval_json(record: store.ApprovalRecord) -> dict[str, Any]:
    return {
        "id": record.id, "agent": record.agent, "service": record.service, "scope": record.scope,
        "approved_by": record.approved_by, "approved_at": record.approved_at.isoformat(), "note": record.note,
        "base_url": record.base_url,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
    }
