"""Budgets: what an organisation, or one agent in it, may spend per period, in cost units.

What spends:

- A call through the registry (``proxy.py``) that reaches its target spends the cost of what it calls,
  the first of: the operator's ``[budgets.costs]`` in ``registry/registry.toml`` (``"agent.tool" = 2``;
  ``"agent.prompt:NAME"``, ``"agent.resource:URI"`` for the other kinds), then the ``cost`` the tool
  declares in its agent's signed manifest (``@agent.tool(cost=...)``), then 1. Both are things the
  registry can trust: its own configuration, or what the agent signed; nothing a request says counts.
  A call refused before it is forwarded spends nothing.
- LM features (the learning loop) spend the tokens the model reports, times ``token_cost``.

Whose budgets: an organisation's budgets (scope ``org``) take the spend of everything done in it (a
caller without an organisation acts in the default one); an agent's (scope ``agent``) the spend of the
calls it makes and of the LM use on its behalf. A period is a UTC calendar ``day``, ``week`` (from
Monday) or ``month``, or a ``fixed`` window (``starts_at``..``ends_at``), outside which it applies to
nothing.

The call path stays one policy evaluation: running totals are kept in memory (loaded at start, refreshed
every few seconds from the database for registries sharing it), each applicable budget reaches the
policy as ``input.budget`` (``policy_field``), the shipped rule ``budget_exceeded`` refuses a call its
cost would take past a hard limit unless an override is active, and the proxy answers that with the
budget's own status (402 or 429) naming it. The spend is written in the run's own transaction (``record``).
A budget is checked when a call is decided and charged when it ends, so the calls in flight when it runs
out (and, with several registry processes, what the others spent since the last refresh) may take it a
little past its limit; the totals in the database stay exact.
Each soft threshold (``alerts``, fractions of the limit such as 0.8 and 1.0) fires once per period: a log
line and, when ``[budgets] webhook`` is set, a JSON POST to it, sent off the call path.

An override (``POST /v1/budgets/{id}/override``, admins) lets calls past a hard limit until it expires;
it is audited. ``grant_override`` is the one function that makes one, for an approvals workflow to call.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel
import httpx2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import bindparam, delete, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from mesh.names import NAME_RULE, is_valid_name
from mesh.registry import audit, store

if TYPE_CHECKING:
    from mesh.registry.node import Registry

log = logging.getLogger(__name__)

DEFAULT_COST = 1.0
REFRESH_SECONDS = 5.0  # how stale another registry process's spend may be here
REFUSAL_RULE = "budget_exceeded"  # the shipped policy's rule (registry/policies/mesh.rego)
_ALERT_QUEUE = 1000
BUDGET_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


Cost = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class BudgetSpec(BaseModel):
    """One budget, as ``[[budgets.limits]]`` in registry.toml or the body of ``POST /v1/budgets`` says it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=BUDGET_ID)
    scope: Literal["org", "agent"] = "org"
    org: str = Field("default", pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    agent: str | None = None  # the spending agent, for scope "agent"
    period: Literal["day", "week", "month", "fixed"] = "month"
    starts_at: datetime | None = None  # a "fixed" period's window
    ends_at: datetime | None = None
    limit: float = Field(gt=0, allow_inf_nan=False)  # cost units per period
    alerts: list[float] = Field(default_factory=lambda: [0.8, 1.0])  # fractions of the limit: soft alerts
    hard: bool = True  # refuse a call that would spend past the limit (false: alert only)
    status: Literal[402, 429] = 429  # what a refusal answers: 402 Payment Required or 429 Too Many Requests
    # Past the hard limit, a call waits for an approver (``approvals.py``) instead of being refused; a yes
    # grants an override of ``override_hours`` (recorded and audited), so the calls after it pass unasked.
    approve_overrun: bool = False
    override_hours: float = Field(1.0, gt=0, le=24 * 31, allow_inf_nan=False)

    @model_validator(mode="after")
    def consistent(self) -> BudgetSpec:
        if (self.scope == "agent") != (self.agent is not None):
            raise ValueError("a budget of scope 'agent' names its agent, and only such a budget does")
        if self.agent is not None and not is_valid_name(self.agent):
            raise ValueError(f"agent {self.agent[:80]!r} is not a valid name ({NAME_RULE})")
        if self.period == "fixed":
            if self.starts_at is None or self.ends_at is None:
                raise ValueError("a fixed period needs starts_at and ends_at")
            if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None:
                raise ValueError("starts_at and ends_at need a UTC offset (e.g. 2026-12-01T00:00:00Z)")
            if self.ends_at <= self.starts_at:
                raise ValueError("ends_at must come after starts_at")
        elif self.starts_at is not None or self.ends_at is not None:
            raise ValueError("starts_at and ends_at are for period 'fixed' only")
        if any(not (isinstance(t, int | float) and 0 < t <= 10 and math.isfinite(t)) for t in self.alerts):
            raise ValueError("each alert threshold is a fraction of the limit above 0 (0.8 is 80 %), at most 10")
        self.alerts = sorted(set(self.alerts))
        return self


class BudgetSettings(BaseModel):
    """``[budgets]`` in registry.toml: where alerts go, what things cost, and the budgets themselves."""

    model_config = ConfigDict(extra="forbid")

    webhook: str | None = Field(None, pattern=r"^https?://")  # soft alerts are POSTed here as JSON
    token_cost: Cost = 0.001  # cost units per LM token (1 unit per thousand tokens)
    costs: dict[str, Cost] = Field(default_factory=dict)  # "agent.tool" -> cost units per call
    limits: list[BudgetSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def unique_ids(self) -> BudgetSettings:
        ids = [spec.id for spec in self.limits]
        repeated = sorted({budget_id for budget_id in ids if ids.count(budget_id) > 1})
        if repeated:
            raise ValueError(f"budget ids must be unique: {', '.join(repeated)} used more than once")
        return self


def period_window(spec: BudgetSpec, now: datetime) -> tuple[datetime, datetime] | None:
    """The period of ``spec`` that ``now`` falls in (start, end), or None outside a fixed window."""
    now = now.astimezone(UTC)
    if spec.period == "fixed":
        assert spec.starts_at is not None and spec.ends_at is not None
        starts, ends = spec.starts_at.astimezone(UTC), spec.ends_at.astimezone(UTC)
        return (starts, ends) if starts <= now < ends else None
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if spec.period == "day":
        return day, day + timedelta(days=1)
    if spec.period == "week":
        monday = day - timedelta(days=day.weekday())
        return monday, monday + timedelta(days=7)
    first = day.replace(day=1)
    return first, (first + timedelta(days=32)).replace(day=1)


def crossed(alerts: Iterable[float], limit: float, before: float, after: float) -> list[float]:
    """The thresholds (fractions of ``limit``) that spending from ``before`` to ``after`` reaches."""
    return [t for t in alerts if before < t * limit <= after]


@dataclass
class Charge:
    """One spend, worked out before its transaction: the budgets it counts against and the alerts it fires."""

    cost: float
    periods: list[tuple[BudgetSpec, datetime]]  # each budget with the start of its current period
    totals: dict[tuple[str, datetime], float] = field(default_factory=dict)  # by ``record``: the new totals
    alerts: list[dict[str, Any]] = field(default_factory=list)  # by ``record``: those this charge fired


class Budgets:
    """Every budget of the registry, its running spend per period, active overrides and fired alerts."""

    def __init__(self, settings: BudgetSettings, sessions: sessionmaker[Session], *, default_org: str = "default"):
        self.settings = settings
        self.sessions = sessions
        self.default_org = default_org
        self.specs: dict[str, BudgetSpec] = {}
        self.sources: dict[str, str] = {}  # id -> "config" or "api"
        self.spent: dict[tuple[str, datetime], float] = {}  # (budget id, period start) -> cost units
        self.fired: set[tuple[str, datetime, float]] = set()  # (budget id, period start, threshold)
        self.overrides: dict[str, list[store.BudgetOverrideRecord]] = {}  # budget id -> unexpired overrides
        self._alerts_in, self._alerts_out = anyio.create_memory_object_stream[dict[str, Any]](_ALERT_QUEUE)
        self._loop: tuple[int, Any] | None = None  # (thread id, anyio token) of the loop delivering alerts

    # -- state ------------------------------------------------------------------------------------------

    def load(self, by: str = "registry.toml") -> None:
        """At start: write the configured budgets (they win over the database for their ids; configured
        ones since removed from the file go), then read every budget, spend, alert and override."""
        configured = {spec.id: spec for spec in self.settings.limits}
        with self.sessions.begin() as session:
            for record in session.scalars(select(store.BudgetRecord).where(store.BudgetRecord.source == "config")):
                if record.id not in configured:
                    session.delete(record)
            for spec in configured.values():
                _save(session, spec, source="config", by=by)
        self.refresh()

    def refresh(self) -> None:
        """Read budgets, this period's spend, alerts and overrides again (other registry processes write too)."""
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            records = list(session.scalars(select(store.BudgetRecord)))
            spend = list(session.scalars(select(store.BudgetSpendRecord)))
            fired = list(session.scalars(select(store.BudgetAlertRecord)))
            overrides = list(session.scalars(select(store.BudgetOverrideRecord)
                                             .where(store.BudgetOverrideRecord.expires_at > now)))
        self.specs = {record.id: spec_of(record) for record in records}
        self.sources = {record.id: record.source for record in records}
        self.spent = {(row.budget_id, row.period_start): row.spent for row in spend}
        self.fired = {(row.budget_id, row.period_start, row.threshold) for row in fired}
        self.overrides = {}
        for override in overrides:
            self.overrides.setdefault(override.budget_id, []).append(override)

    # -- what a call costs and which budgets it counts against ------------------------------------------

    def cost_of(self, agent: str, label: str, declared: float | None = None) -> float:
        """The cost units of calling ``agent``'s ``label`` (a tool's name, or ``KIND:NAME``)."""
        configured = self.settings.costs.get(f"{agent}.{label}")
        if configured is not None:
            return configured
        return DEFAULT_COST if declared is None else declared

    def applicable(self, org: str | None, agent: str | None, now: datetime) -> list[tuple[BudgetSpec, datetime]]:
        """The budgets a spend by ``agent`` (None: a person) in ``org`` counts against, with their period."""
        org = org or self.default_org
        found = []
        for spec in self.specs.values():
            if spec.org != org or (spec.scope == "agent" and spec.agent != agent):
                continue
            window = period_window(spec, now)
            if window is not None:
                found.append((spec, window[0]))
        return found

    def charge_for(self, org: str | None, agent: str | None, cost: float, now: datetime | None = None) -> Charge:
        return Charge(cost, self.applicable(org, agent, now or datetime.now(UTC)))

    def policy_field(self, charge: Charge, now: datetime | None = None) -> dict[str, Any]:
        """``input.budget``: the call's cost and each budget it counts against, as the policy reads them.

        ``override`` is present only while an override is active: the shipped rule tests its absence."""
        now = now or datetime.now(UTC)
        return {"cost": charge.cost, "budgets": [self._entry(spec, start, now) for spec, start in charge.periods]}

    def _entry(self, spec: BudgetSpec, start: datetime, now: datetime) -> dict[str, Any]:
        spent = self.spent.get((spec.id, start), 0.0)
        fraction = spent / spec.limit
        state = "exceeded" if spent >= spec.limit else "alert" if spec.alerts and fraction >= spec.alerts[0] else "ok"
        entry = {"id": spec.id, "scope": spec.scope, "org": spec.org, "agent": spec.agent, "period": spec.period,
                 "period_start": start.isoformat(), "limit": spec.limit, "spent": round(spent, 6),
                 "remaining": round(spec.limit - spent, 6), "fraction": round(fraction, 6), "state": state,
                 "hard": spec.hard, "status": spec.status, "approve_overrun": spec.approve_overrun}
        override = self.active_override(spec.id, now)
        if override is not None:
            entry["override"] = {"id": override.id, "expires_at": override.expires_at.isoformat(),
                                 "granted_by": override.granted_by}
        return entry

    def active_override(self, budget_id: str, now: datetime | None = None) -> store.BudgetOverrideRecord | None:
        now = now or datetime.now(UTC)
        live = [o for o in self.overrides.get(budget_id, ()) if o.expires_at > now]
        return max(live, key=lambda o: o.expires_at) if live else None

    @staticmethod
    def refusing(field: dict[str, Any]) -> dict[str, Any] | None:
        """The budget that ``budget_exceeded`` refused a call for: hard, too little left, no override."""
        for entry in field.get("budgets", ()):
            if entry["hard"] and entry["remaining"] < field["cost"] and "override" not in entry:
                return entry
        return None

    async def grant_approved_overrun(self, field: dict[str, Any], *, by: str, request_id: str | None) -> list[str]:
        """A person approved a call past a budget that asks for approval (``approve_overrun``): each such
        budget the call would overrun gets an override of its ``override_hours``. Returns their ids."""
        granted = []
        for entry in field.get("budgets", ()):
            if entry["hard"] and entry["remaining"] < field["cost"] and "override" not in entry \
                    and entry.get("approve_overrun"):
                spec = self.require(entry["id"])
                expires = datetime.now(UTC) + timedelta(hours=spec.override_hours)
                await anyio.to_thread.run_sync(lambda spec=spec, expires=expires: self.grant_override(
                    spec.id, by=by, expires_at=expires, reason=f"approval request {request_id}"))
                granted.append(spec.id)
        return granted

    # -- spending ---------------------------------------------------------------------------------------

    def record(self, connection: Connection, charge: Charge) -> None:
        """Add ``charge`` to its budgets' running totals in the caller's transaction (the run's own), and
        claim the alerts it fires: a row per threshold and period, so only one writer ever fires one. The
        totals come back from the database, so thresholds hold across registry processes sharing it."""
        if charge.cost <= 0:
            return
        for spec, start in charge.periods:
            total = _add_spend(connection, spec, start, charge.cost)
            charge.totals[(spec.id, start)] = total
            for threshold in crossed(spec.alerts, spec.limit, total - charge.cost, total):
                if (spec.id, start, threshold) not in self.fired and _claim_alert(connection, spec, start, threshold,
                                                                                  total):
                    charge.alerts.append(alert_json(spec, start, threshold, total))

    def settle(self, charge: Charge) -> None:
        """After the transaction committed: the totals in memory follow, and the alerts go out."""
        self.spent.update(charge.totals)
        for alert in charge.alerts:
            self.fired.add((alert["budget"], datetime.fromisoformat(alert["period_start"]), alert["threshold"]))
            log.warning("budget %s: %s%% of its limit reached (%s of %s cost units this %s)", alert["budget"],
                        round(alert["threshold"] * 100), alert["spent"], alert["limit"], alert["period"])
            self._queue(alert)

    def _queue(self, alert: dict[str, Any]) -> None:
        """Hand an alert to ``deliver_alerts_forever``, from the event loop or from a worker thread (LM spend)."""
        try:
            if self._loop is None or self._loop[0] == threading.get_ident():
                self._alerts_in.send_nowait(alert)
            else:
                anyio.from_thread.run_sync(self._alerts_in.send_nowait, alert, token=self._loop[1])
        except anyio.WouldBlock:
            log.warning("budget alerts are not being delivered fast enough; dropped one for %s", alert["budget"])

    def spend(self, org: str | None, agent: str | None, cost: float) -> Charge:
        """Charge a spend outside the call path (LM tokens) in a transaction of its own."""
        charge = self.charge_for(org, agent, cost)
        if charge.periods and cost > 0:
            with self.sessions.begin() as session:
                self.record(session.connection(), charge)
            self.settle(charge)
        return charge

    def spend_tokens(self, org: str | None, agent: str | None, tokens: int) -> Charge:
        """LM tokens, in cost units (``token_cost`` each), against the budgets of ``org`` and ``agent``."""
        return self.spend(org, agent, tokens * self.settings.token_cost)

    # -- administering ------------------------------------------------------------------------------------

    def put(self, spec: BudgetSpec, by: str) -> None:
        """Create or replace a budget through the API (one named in registry.toml is the file's to change)."""
        if self.sources.get(spec.id) == "config":
            raise BudgetProblem("budget-conflict", f"budget {spec.id!r} is defined in registry/registry.toml; "
                                                   "change it there")
        with self.sessions.begin() as session:
            _save(session, spec, source="api", by=by)
            audit.append(session, org=spec.org, actor=by, action="budget-set", subject=spec.id, outcome="done",
                         data=spec.model_dump(mode="json"))
        self.specs[spec.id], self.sources[spec.id] = spec, "api"

    def remove(self, budget_id: str, by: str) -> None:
        self.require(budget_id)
        if self.sources.get(budget_id) == "config":
            raise BudgetProblem("budget-conflict", f"budget {budget_id!r} is defined in registry/registry.toml; "
                                                   "remove it there")
        with self.sessions.begin() as session:
            session.execute(delete(store.BudgetRecord).where(store.BudgetRecord.id == budget_id))
            audit.append(session, org=self.specs[budget_id].org, actor=by, action="budget-remove",
                         subject=budget_id, outcome="done")
        self.specs.pop(budget_id, None)
        self.sources.pop(budget_id, None)

    def grant_override(self, budget_id: str, *, by: str, expires_at: datetime, reason: str = "") -> dict[str, Any]:
        """Let calls past ``budget_id``'s hard limit until ``expires_at``; recorded, and audited."""
        self.require(budget_id)
        if expires_at <= datetime.now(UTC):
            raise BudgetProblem("bad-request", "an override must expire in the future")
        spec = self.specs[budget_id]
        record = store.BudgetOverrideRecord(id=str(uuid.uuid4()), budget_id=budget_id, org_id=spec.org,
                                            granted_by=by, reason=reason, expires_at=expires_at,
                                            created_at=datetime.now(UTC))
        with self.sessions.begin() as session:
            session.add(record)
            audit.append(session, org=spec.org, actor=by, action="budget-override", subject=budget_id,
                         outcome="granted",
                         detail=reason or None, data={"override": record.id, "expires_at": expires_at.isoformat()})
        self.overrides.setdefault(budget_id, []).append(record)
        return override_json(record)

    def require(self, budget_id: str) -> BudgetSpec:
        spec = self.specs.get(budget_id)
        if spec is None:
            raise BudgetProblem("unknown-budget", f"no budget {budget_id[:80]!r}")
        return spec

    def to_json(self, spec: BudgetSpec, now: datetime | None = None) -> dict[str, Any]:
        """A budget as the API shows it: its settings, this period's spend and state, and active overrides."""
        now = now or datetime.now(UTC)
        document = spec.model_dump(mode="json")
        document["source"] = self.sources.get(spec.id, "api")
        window = period_window(spec, now)
        if window is None:
            document["current"] = None
        else:
            entry = self._entry(spec, window[0], now)
            document["current"] = {key: entry[key] for key in ("period_start", "spent", "remaining", "fraction",
                                                               "state")} | {"period_end": window[1].isoformat()}
        document["overrides"] = [override_json(o) for o in self.overrides.get(spec.id, ()) if o.expires_at > now]
        return document

    def listing(self) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        return [self.to_json(spec, now) for _, spec in sorted(self.specs.items())]

    # -- background work (the registry's lifespan runs these) -----------------------------------------------

    async def deliver_alerts_forever(self) -> None:
        """POST each fired alert to ``[budgets] webhook`` (a failure is logged, never retried forever)."""
        self._loop = (threading.get_ident(), anyio.lowlevel.current_token())
        async with httpx2.AsyncClient(timeout=10.0) as client:
            async for alert in self._alerts_out:
                if not self.settings.webhook:
                    continue
                try:
                    response = await client.post(self.settings.webhook, json=alert)
                    if response.status_code >= 400:
                        log.warning("budget alert webhook %s answered %s", self.settings.webhook,
                                    response.status_code)
                except httpx2.HTTPError as exc:
                    log.warning("budget alert webhook %s unreachable: %r", self.settings.webhook, exc)

    async def refresh_forever(self, interval: float = REFRESH_SECONDS) -> None:
        while True:
            await anyio.sleep(interval)
            await anyio.to_thread.run_sync(self.refresh)


class BudgetProblem(Exception):
    """A budget request the registry refuses; ``kind`` is the problem type (``problems.py``)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def spec_of(record: store.BudgetRecord) -> BudgetSpec:
    return BudgetSpec(id=record.id, scope=record.scope, org=record.org_id, agent=record.agent, period=record.period,
                      starts_at=record.starts_at, ends_at=record.ends_at, limit=record.cost_limit,
                      alerts=list(record.alerts), hard=record.hard, status=record.status)


def read_spec(body: dict[str, Any]) -> BudgetSpec:
    """A budget from an API body; a mistake is a ``bad-request`` naming the field."""
    try:
        return BudgetSpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "budget"
        raise BudgetProblem("bad-request", f"{where}: {first['msg']}") from None


def alert_json(spec: BudgetSpec, start: datetime, threshold: float, spent: float) -> dict[str, Any]:
    """What the webhook receives for one alert."""
    return {"type": "budget.threshold", "budget": spec.id, "org": spec.org, "scope": spec.scope,
            "agent": spec.agent, "period": spec.period, "period_start": start.isoformat(), "threshold": threshold,
            "limit": spec.limit, "spent": round(spent, 6), "hard": spec.hard, "at": datetime.now(UTC).isoformat()}


def override_json(record: store.BudgetOverrideRecord) -> dict[str, Any]:
    return {"id": record.id, "budget": record.budget_id, "granted_by": record.granted_by, "reason": record.reason,
            "created_at": record.created_at.isoformat(), "expires_at": record.expires_at.isoformat()}


def _save(session: Session, spec: BudgetSpec, *, source: str, by: str) -> None:
    record = session.get(store.BudgetRecord, spec.id) or store.BudgetRecord(id=spec.id, created_by=by)
    record.org_id, record.scope, record.agent, record.period = spec.org, spec.scope, spec.agent, spec.period
    record.starts_at, record.ends_at, record.cost_limit = spec.starts_at, spec.ends_at, spec.limit
    record.alerts, record.hard, record.status, record.source = list(spec.alerts), spec.hard, spec.status, source
    session.add(record)


@functools.cache
def _statements(dialect: str) -> tuple[Any, Any]:
    """The two writes of a charge, built once per backend (building one costs more than running it):
    add to a period's running total (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``, both backends speak
    it) and claim an alert (``ON CONFLICT DO NOTHING``: a row comes back only for the first claim)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    spend, alerts = store.BudgetSpendRecord.__table__, store.BudgetAlertRecord.__table__
    add = insert(spend).values(budget_id=bindparam("budget_id", type_=spend.c.budget_id.type),
                               period_start=bindparam("period_start", type_=spend.c.period_start.type),
                               org_id=bindparam("org_id", type_=spend.c.org_id.type),
                               spent=bindparam("cost", type_=spend.c.spent.type))
    add = add.on_conflict_do_update(index_elements=["budget_id", "period_start"],
                                    set_={"spent": spend.c.spent + add.excluded.spent}).returning(spend.c.spent)
    claim = insert(alerts).on_conflict_do_nothing().returning(alerts.c.threshold)
    return add, claim


def _add_spend(connection: Connection, spec: BudgetSpec, start: datetime, cost: float) -> float:
    """Add ``cost`` to the period's running total; the new total."""
    add, _ = _statements(connection.dialect.name)
    parameters = {"budget_id": spec.id, "period_start": start, "org_id": spec.org, "cost": cost}
    return float(connection.execute(add, parameters).scalar_one())


def _claim_alert(connection: Connection, spec: BudgetSpec, start: datetime, threshold: float, spent: float) -> bool:
    """Record that ``threshold`` fired this period; False when some writer already did."""
    _, claim = _statements(connection.dialect.name)
    row = {"budget_id": spec.id, "period_start": start, "threshold": threshold, "org_id": spec.org, "spent": spent,
           "fired_at": datetime.now(UTC)}
    return connection.execute(claim, row).first() is not None


def routes(registry: Registry) -> list[Any]:
    """``/v1/budgets``: list with spend (anyone who may read), set, remove and override (owners, admins)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from mesh.registry.gate import allowed, parse_json
    from mesh.registry.problems import Problem, problem_json

    budgets = registry.budgets

    def answered(action: str, handler: Any) -> Any:
        """``handler(request, by, org)``: ``org`` is the organisation the caller acts in (``tenancy.py``); a
        budget of another organisation is unknown to it, as one that does not exist."""

        async def checked(request: Request) -> Response:
            caller = allowed(registry, request, action)
            return await handler(request, caller.id, registry.tenancy.of_caller(caller).org)

        checked.__doc__ = handler.__doc__
        return problem_json(checked, kinds=(BudgetProblem,))

    async def body_of(request: Request) -> dict[str, Any]:
        body = parse_json(await request.body(), registry.config.max_json_depth)
        if not isinstance(body, dict):
            raise Problem("bad-request", "the request body must be a JSON object")
        return body

    def own(budget_id: str, org: str) -> BudgetSpec:
        spec = budgets.require(budget_id)
        if spec.org != org:
            raise BudgetProblem("unknown-budget", f"no budget {spec.id!r}")
        return spec

    async def listing(request: Request, by: str, org: str) -> Response:
        """Every budget of the caller's organisation with this period's spend, state and active overrides."""
        return JSONResponse({"budgets": [b for b in budgets.listing() if b["org"] == org]})

    async def put(request: Request, by: str, org: str) -> Response:
        """Create or replace a budget (one defined in registry.toml is changed there)."""
        body = await body_of(request)
        spec = read_spec({"org": org, **body})
        if spec.org != org:
            raise Problem("forbidden", f"{by} acts in organisation {org!r}: it cannot set a budget of {spec.org!r}")
        if spec.id in budgets.specs:  # replacing one: it must be this organisation's
            own(spec.id, org)
        budgets.put(spec, by)
        return JSONResponse(budgets.to_json(spec), status_code=201)

    async def one(request: Request, by: str, org: str) -> Response:
        """One budget with this period's spend."""
        return JSONResponse(budgets.to_json(own(request.path_params["budget_id"], org)))

    async def remove(request: Request, by: str, org: str) -> Response:
        """Remove a budget made through the API, with its spend and overrides (the audit log keeps them)."""
        budgets.remove(own(request.path_params["budget_id"], org).id, by)
        return Response(status_code=204)

    async def override(request: Request, by: str, org: str) -> Response:
        """Let calls past the budget's hard limit for ``hours`` (default 1), with a ``reason``."""
        body = await body_of(request)
        hours, reason = body.get("hours", 1), body.get("reason", "")
        if isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 < hours <= 24 * 366:
            raise Problem("bad-request", "hours must be a number above 0 and at most a year (8784)")
        if not isinstance(reason, str) or len(reason) > 2000:
            raise Problem("bad-request", "reason must be a string of at most 2000 characters")
        granted = budgets.grant_override(own(request.path_params["budget_id"], org).id, by=by, reason=reason,
                                         expires_at=datetime.now(UTC) + timedelta(hours=hours))
        return JSONResponse(granted, status_code=201)

    return [Route("/budgets", answered("read", listing), methods=["GET"]),
            Route("/budgets", answered("budgets", put), methods=["POST"]),
            Route("/budgets/{budget_id}", answered("read", one), methods=["GET"]),
            Route("/budgets/{budget_id}", answered("budgets", remove), methods=["DELETE"]),
            Route("/budgets/{budget_id}/override", answered("budgets", override), methods=["POST"])]

