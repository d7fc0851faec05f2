"""Budgets: periods and thresholds, running totals on SQLite and PostgreSQL, alerts once per period,
overrides, what the policy reads and refuses; then a real registry with an agent and a webhook receiver.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from mcp import Client
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mesh.client import MeshError
from mesh.keys import TrustStore
from mesh.learning.service import LearningService
from mesh.registry import store
from mesh.registry.budgets import (
    BudgetProblem,
    Budgets,
    BudgetSettings,
    BudgetSpec,
    crossed,
    period_window,
    read_spec,
)
from mesh.registry.policy import PolicyEngine
from mesh.registry.tenancy import Tenancy, Tenant

from .conftest import REPO, run_mesh
from .test_registry_e2e import ECHO_AGENT, Mesh, agent_client, running_mesh, wait_until

# -- periods and thresholds ------------------------------------------------------------------------------


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("period", "now", "start", "end"), [
    ("day", "2026-11-30T23:59:59", "2026-11-30T00:00:00", "2026-12-01T00:00:00"),
    ("week", "2026-11-29T12:00:00", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),  # a Sunday: from Monday
    ("week", "2026-11-30T00:00:00", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),  # a Monday starts one
    ("month", "2026-12-31T23:00:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),  # into the next year
    ("month", "2028-02-29T10:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
])
def test_a_period_is_the_utc_calendar_unit_the_moment_falls_in(period: str, now: str, start: str, end: str):
    spec = BudgetSpec(id="b", period=period, limit=10)
    assert period_window(spec, at(now)) == (at(start), at(end))
    # the same instant seen from another offset falls in the same UTC period
    assert period_window(spec, at(now).astimezone(timezone(timedelta(hours=-8)))) == (at(start), at(end))


def test_a_fixed_window_applies_only_inside_it():
    spec = BudgetSpec(id="launch", period="fixed", limit=10, starts_at=at("2026-12-01T00:00:00"),
                      ends_at=at("2026-12-08T00:00:00"))
    assert period_window(spec, at("2026-11-30T23:59:59")) is None
    assert period_window(spec, at("2026-12-03T00:00:00")) == (spec.starts_at, spec.ends_at)
    assert period_window(spec, at("2026-12-08T00:00:00")) is None


def test_a_threshold_is_crossed_once_by_the_spend_that_reaches_it():
    assert crossed([0.8, 1.0], 10, 7, 8) == [0.8]
    assert crossed([0.8, 1.0], 10, 8, 9) == []  # already reached before this spend
    assert crossed([0.8, 1.0], 10, 7.5, 12) == [0.8, 1.0]
    assert crossed([0.5], 10, 0, 4.99) == []


@pytest.mark.parametrize(("body", "problem"), [
    ({"id": "b", "limit": 10, "scope": "agent"}, "names its agent"),
    ({"id": "b", "limit": 10, "agent": "echo"}, "names its agent"),
    ({"id": "b", "limit": 10, "scope": "agent", "agent": "bad__name"}, "not a valid name"),
    ({"id": "b", "limit": 10, "period": "fixed"}, "needs starts_at and ends_at"),
    ({"id": "b", "limit": 10, "period": "day", "starts_at": "2026-12-01T00:00:00Z"}, "for period 'fixed' only"),
    ({"id": "b", "limit": 10, "period": "fixed", "starts_at": "2026-12-02T00:00:00Z",
      "ends_at": "2026-12-01T00:00:00Z"}, "must come after"),
    ({"id": "b", "limit": 10, "alerts": [0]}, "fraction of the limit"),
    ({"id": "b", "limit": 0}, "limit"),
    ({"id": "b", "limit": 10, "status": 403}, "status"),
    ({"id": "b", "limit": 10, "colour": "red"}, "colour"),
])
def test_a_budget_that_cannot_work_is_refused_naming_the_problem(body: dict, problem: str):
    with pytest.raises(BudgetProblem, match=problem) as caught:
        read_spec(body)
    assert caught.value.kind == "bad-request"


# -- running totals, alerts and overrides in the store ---------------------------------------------------


def budgets_with(sessions: sessionmaker[Session], *specs: BudgetSpec, costs: dict | None = None) -> Budgets:
    budgets = Budgets(BudgetSettings(limits=list(specs), costs=costs or {}), sessions)
    budgets.load()
    return budgets



def test_a_learning_runs_tokens_count_against_its_agents_organisation(sessions: sessionmaker[Session]):
    """An agent placed in another organisation's project spends that organisation's budget, not the default's."""
    acme, default = BudgetSpec(id="acme-day", org="acme", limit=10), BudgetSpec(id="org-day", limit=10)
    budgets = budgets_with(sessions, acme, default)
    registry = SimpleNamespace(budgets=budgets, tenancy=Tenancy(sessions, {"echo": Tenant("acme", "lab")}, "default"))
    LearningService.token_spender(SimpleNamespace(registry=registry), "echo")(3000)  # 3 units
    assert budgets.spent == {("acme-day", period_window(acme, datetime.now(UTC))[0]): 3.0}

def test_spend_keeps_running_totals_per_budget_and_period(sessions: sessionmaker[Session]):
    org = BudgetSpec(id="org-day", period="day", limit=10)
    agent = BudgetSpec(id="echo-month", scope="agent", agent="echo", limit=100)
    other = BudgetSpec(id="acme-day", org="acme", period="day", limit=10)
    budgets = budgets_with(sessions, org, agent, other)
    budgets.spend(None, "echo", 3)  # an agent in the default org: its budget and the org's
    budgets.spend("default", None, 2)  # a person: the org's only
    budgets.spend_tokens(None, "echo", 2000)  # 2 units at the default token_cost
    now = datetime.now(UTC)
    day, month = period_window(org, now)[0], period_window(agent, now)[0]
    assert budgets.spent == {("org-day", day): 7.0, ("echo-month", month): 5.0}
    with sessions.begin() as session:
        rows = {(row.budget_id, row.spent) for row in session.scalars(select(store.BudgetSpendRecord))}
    assert rows == {("org-day", 7.0), ("echo-month", 5.0)}

    again = budgets_with(sessions, org, agent, other)  # a restart, or another registry process
    assert again.spent == budgets.spent
    field = again.policy_field(again.charge_for(None, "echo", 1))
    assert [(b["id"], b["spent"], b["remaining"], b["state"]) for b in field["budgets"]] == [
        ("org-day", 7.0, 3.0, "ok"), ("echo-month", 5.0, 95.0, "ok")]


def test_each_alert_fires_once_per_period_even_across_processes(sessions: sessionmaker[Session]):
    spec = BudgetSpec(id="org-day", period="day", limit=10, alerts=[0.8, 1.0])
    one, two = budgets_with(sessions, spec), budgets_with(sessions, spec)
    assert one.spend(None, None, 7).alerts == []
    two.refresh()
    fired = two.spend(None, None, 1).alerts  # 8 of 10
    assert [(a["budget"], a["threshold"], a["spent"]) for a in fired] == [("org-day", 0.8, 8.0)]
    # The other process's memory says 7 spent; the database says 8: it must not fire 80 % again.
    assert [a["threshold"] for a in one.spend(None, None, 2).alerts] == [1.0]
    assert two.spend(None, None, 5).alerts == []
    with sessions.begin() as session:
        alerts = list(session.scalars(select(store.BudgetAlertRecord)))
    assert sorted(a.threshold for a in alerts) == [0.8, 1.0]
    one.refresh()
    assert one.policy_field(one.charge_for(None, None, 1))["budgets"][0]["state"] == "exceeded"


def test_the_policy_refuses_past_a_hard_limit_unless_an_override_is_active(sessions: sessionmaker[Session]):
    hard = BudgetSpec(id="org-day", period="day", limit=3, status=402)
    soft = BudgetSpec(id="org-week", period="week", limit=3, hard=False)
    budgets = budgets_with(sessions, hard, soft, costs={"echo.echo": 2})
    assert budgets.cost_of("echo", "echo", declared=5) == 2  # the operator's word over the manifest's
    assert budgets.cost_of("echo", "other", declared=5) == 5 and budgets.cost_of("echo", "other") == 1
    policy = PolicyEngine(REPO / "registry" / "policies", data={"min_reputation": 0.3, "allow_destructive": []})
    call = {"caller": {"id": "user:local", "kind": "user", "scopes": ["*"], "reputation": None},
            "target": {"agent": "echo", "tool": "echo", "annotations": {"readOnlyHint": True}, "scopes": [],
                       "reputation": 1.0}, "arguments": {}}

    def decide(cost: float):
        field = budgets.policy_field(budgets.charge_for(None, None, cost))
        return policy.evaluate({**call, "budget": field}), Budgets.refusing(field)

    budgets.spend(None, None, 2)
    decision, refusing = decide(1)  # 2 + 1 = 3: exactly the limit
    assert decision.allow and refusing is None
    decision, refusing = decide(2)  # 2 + 2 > 3
    assert (decision.allow, decision.rule, refusing["id"], refusing["status"]) == (False, "budget_exceeded",
                                                                                   "org-day", 402)
    assert "budget org-day" in decision.reasons[0] and "org-week" not in decision.reasons[0]

    granted = budgets.grant_override("org-day", by="user:local", reason="month-end close",
                                     expires_at=datetime.now(UTC) + timedelta(hours=1))
    decision, refusing = decide(2)
    assert decision.allow and refusing is None
    field = budgets.policy_field(budgets.charge_for(None, None, 2))
    assert field["budgets"][0]["override"]["id"] == granted["id"]
    budgets.overrides["org-day"][0].expires_at = datetime.now(UTC) - timedelta(seconds=1)  # it ran out
    assert not decide(2)[0].allow
    with sessions.begin() as session:
        audited = session.scalars(select(store.AuditRecord).where(store.AuditRecord.action == "budget-override"))
        assert [(a.subject, a.detail) for a in audited] == [("org-day", "month-end close")]
    with pytest.raises(BudgetProblem, match="no budget"):
        budgets.grant_override("nothing", by="user:local", expires_at=datetime.now(UTC) + timedelta(hours=1))


def test_budgets_from_the_file_win_and_the_api_cannot_change_them(sessions: sessionmaker[Session]):
    budgets = budgets_with(sessions, BudgetSpec(id="org-day", period="day", limit=10))
    with pytest.raises(BudgetProblem, match=r"registry\.toml") as caught:
        budgets.put(BudgetSpec(id="org-day", limit=99), by="user:local")
    assert caught.value.kind == "budget-conflict"
    budgets.put(BudgetSpec(id="extra", limit=5), by="user:local")
    again = budgets_with(sessions)  # org-day left the file: it goes; the API's stays
    assert set(again.specs) == {"extra"} and again.sources == {"extra": "api"}
    again.remove("extra", by="user:local")
    assert budgets_with(sessions).specs == {}


def test_a_bad_budgets_table_is_one_line_naming_the_key(tmp_path: Path):
    from mesh.registry.config import ConfigProblem, RegistryConfig
    from mesh.workspace import Workspace

    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "registry.toml").write_text(
        '[budgets]\nwebhook = "http://127.0.0.1:1/x"\n[[budgets.limits]]\nid = "m"\nlimit = -1\n')
    with pytest.raises(ConfigProblem, match=r"registry.toml: budgets\.limits\.0\.limit"):
        RegistryConfig.from_workspace(Workspace(tmp_path))
    with pytest.raises(ValidationError):
        BudgetSettings(webhook="ftp://nowhere")
    with pytest.raises(ValidationError, match="used more than once"):
        BudgetSettings(limits=[BudgetSpec(id="m", limit=1), BudgetSpec(id="m", limit=2)])


def test_a_declared_cost_is_signed_in_the_manifest_and_a_bad_one_refused():
    from mesh import Agent
    from mesh.keys import SigningKey, generate_private_jwk, public_part, thumbprint
    from mesh.manifest import Manifest, ManifestProblem

    tool = {"name": "costly", "inputSchema": {"type": "object"}}
    payload = Manifest.payload("echo", "1", "", [(tool, [])], costs={"costly": 2.5})
    assert payload["tools"][0]["cost"] == 2.5
    assert "cost" not in Manifest.payload("echo", "1", "", [(tool, [])])["tools"][0]  # undeclared: as before
    private = generate_private_jwk()
    key = SigningKey(thumbprint(public_part(private)), private)
    signed = Manifest.from_json(Manifest.sign(payload, [key]).to_json())
    assert signed.body["tools"][0]["cost"] == 2.5
    document = Manifest.sign({**payload, "tools": [{**payload["tools"][0], "cost": "free"}]}, [key]).to_json()
    with pytest.raises(ManifestProblem, match="declares a cost that is not a number"):
        Manifest.from_json(document)
    agent = Agent("priced")
    with pytest.raises(ValueError, match="cost units >= 0"):
        agent.tool(cost=-1)

    @agent.tool(read_only=True, cost=3)
    def priced() -> str:
        """Three units a call."""
        return "ok"

    assert agent.costs() == {"priced": 3}


# -- a real registry, agent and webhook -------------------------------------------------------------------

PRICED = ECHO_AGENT.format(description="Return the text unchanged.") + '''

@agent.tool(read_only=True, idempotent=True, open_world=False, cost=2)
def costly(text: str) -> str:
    """Echo, at twice the price: the cost is declared here and signed in the manifest."""
    return text
'''


class Webhook:
    """A little HTTP server on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, webhook: Webhook) -> Iterator[Mesh]:
    table = (f'webhook = "{webhook.url}"\n'
             'limits = [{id = "org-month", period = "month", limit = 5, alerts = [0.8, 1.0], status = 402}]')
    with running_mesh(tmp_path_factory, "budgets", ("echo",), sources={"echo": PRICED},
                      settings={"budgets": table}) as network:
        yield network


def budget(mesh: Mesh, budget_id: str) -> dict:
    return httpx.get(f"{mesh.url}/v1/budgets/{budget_id}").json()


async def test_calls_spend_alert_once_refuse_past_the_hard_limit_and_an_override_lets_them_through(
        mesh: Mesh, webhook: Webhook):
    spent = []
    for tool in ("echo", "echo", "costly"):  # 1 + 1 + 2 (declared, signed): 4 of 5, the 80 % alert
        answer = mesh.invoke("echo", tool, {"text": "hi"})
        assert answer.status_code == 200, answer.text
        spent.append(httpx.get(f"{mesh.url}/v1/runs/{answer.json()['run_id']}").json())
    assert [run["cost"] for run in spent] == [1.0, 1.0, 2.0]  # spend is in the run records
    assert all(linked["cost"] == run["cost"] for run in spent for linked in run["linked"])
    trust = TrustStore.from_jwks(httpx.get(f"{mesh.url}/.well-known/jwks.json").json())
    claims = json.loads(trust.verify_compact(spent[2]["provenance"], expected_typ="mcpmesh-provenance+jws"))
    assert claims["cost"] == 2.0  # and signed with the run's provenance
    wait_until(lambda: len(webhook.received) == 1, what="the 80 % alert at the webhook")
    alert = webhook.received[0]
    assert (alert["budget"], alert["threshold"], alert["spent"], alert["limit"]) == ("org-month", 0.8, 4.0, 5.0)
    assert "budget org-month: 80% of its limit reached" in mesh.processes["registry"].output()

    async with Client(f"{mesh.url}/mcp", mode="legacy") as client:  # 5 of 5 over MCP: the 100 % alert
        result = await client.call_tool("echo__echo", {"text": "hi"})
        assert not result.is_error
        refused = await client.call_tool("echo__echo", {"text": "hi"})  # a 6th would pass the hard limit
        assert refused.is_error
        problem = refused.meta["io.mcpmesh/problem"]
        assert (problem["status"], problem["budget"], problem["rule"]) == (402, "org-month", "budget_exceeded")
    wait_until(lambda: len(webhook.received) == 2, what="the 100 % alert at the webhook")
    assert [a["threshold"] for a in webhook.received] == [0.8, 1.0]

    answer = mesh.invoke("echo", "echo", {"text": "hi"})
    assert answer.status_code == 402 and answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"].endswith("/budget-exceeded") and problem["budget"] == "org-month"
    assert "budget org-month" in problem["detail"] and "5 of 5" in problem["detail"]
    refused_run = httpx.get(f"{mesh.url}/v1/runs/{problem['run_id']}").json()
    assert (refused_run["status"], refused_run["policy_rule"], refused_run["cost"]) == (
        "denied", "budget_exceeded", None)  # refused before it reached the agent: it spent nothing
    shown = budget(mesh, "org-month")
    assert shown["current"]["spent"] == 5.0 and shown["current"]["state"] == "exceeded"

    override = httpx.post(f"{mesh.url}/v1/budgets/org-month/override", json={"hours": 1, "reason": "demo day"})
    assert override.status_code == 201, override.text
    assert mesh.invoke("echo", "echo", {"text": "hi"}).status_code == 200
    shown = budget(mesh, "org-month")
    assert shown["current"]["spent"] == 6.0 and [o["reason"] for o in shown["overrides"]] == ["demo day"]

    # A budget made through the API answers 429 as configured, naming itself.
    made = httpx.post(f"{mesh.url}/v1/budgets", json={"id": "org-today", "period": "day", "limit": 1})
    assert made.status_code == 201 and made.json()["status"] == 429 and made.json()["current"]["spent"] == 0
    assert mesh.invoke("echo", "echo", {"text": "hi"}).status_code == 200
    answer = mesh.invoke("echo", "echo", {"text": "hi"})
    assert (answer.status_code, answer.json()["budget"]) == (429, "org-today")
    assert [a["threshold"] for a in webhook.received if a["budget"] == "org-month"] == [0.8, 1.0]  # once each


async def test_budgets_are_listed_and_set_by_the_cli_and_an_agents_budget_counts_its_own_calls(mesh: Mesh):
    listed = httpx.get(f"{mesh.url}/v1/budgets").json()["budgets"]
    assert "org-month" in [b["id"] for b in listed]
    assert run_mesh("budgets", "rm", "org-today", "--registry", mesh.url).returncode == 0
    made = run_mesh("budgets", "set", "echo-week", "--agent", "echo", "--period", "week", "--limit", "1",
                    "--alerts", "0.5,0.9", "--status", "402", "--registry", mesh.url)
    assert made.returncode == 0, made.stderr
    shown = budget(mesh, "echo-week")
    assert (shown["scope"], shown["agent"], shown["limit"], shown["alerts"], shown["status"]) == (
        "agent", "echo", 1.0, [0.5, 0.9], 402)

    async with agent_client(mesh, "echo") as echo:  # the agent echo spends from its own budget
        await echo.invoke("echo", "echo", {"text": "hi"})
        with pytest.raises(MeshError) as refused:
            await echo.invoke("echo", "echo", {"text": "hi"})
    assert (refused.value.status, refused.value.problem["budget"]) == (402, "echo-week")
    assert mesh.invoke("echo", "echo", {"text": "hi"}).status_code == 200  # a person's call is not the agent's

    table = run_mesh("budgets", "--registry", mesh.url)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert set(rows) >= {"org-month", "echo-week"} and "exceeded" in rows["echo-week"]
    assert "(override)" in rows["org-month"] and "hard 402" in rows["org-month"]
    refused_cli = run_mesh("budgets", "set", "org-month", "--limit", "9", "--registry", mesh.url)
    assert refused_cli.returncode == 1 and "registry.toml" in refused_cli.stderr
    removed = run_mesh("budgets", "rm", "echo-week", "--registry", mesh.url)
    assert removed.returncode == 0 and httpx.get(f"{mesh.url}/v1/budgets/echo-week").status_code == 404


def test_bad_budget_requests_are_problems_naming_what_is_wrong(mesh: Mesh):
    bad = httpx.post(f"{mesh.url}/v1/budgets", json={"id": "x", "limit": 5, "period": "year"})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["detail"].startswith("period:")
    missing = httpx.post(f"{mesh.url}/v1/budgets/nothing/override", json={"hours": 1})
    assert missing.status_code == 404 and "no budget 'nothing'" in missing.json()["detail"]
    hours = httpx.post(f"{mesh.url}/v1/budgets/org-month/override", json={"hours": -1})
    assert hours.status_code == 400 and "hours" in hours.json()["detail"]


def test_a_budget_that_asks_for_approval_holds_the_call_and_a_yes_lets_the_caller_past_it(mesh: Mesh):
    """``approve_overrun``: past the hard limit, the call waits for an approver (``approvals.py``) instead of
    being refused; the yes grants the budget an override, so the next call passes without asking."""
    for other in ("org-today", "echo-week"):  # earlier tests' budgets, out of this one's way
        httpx.delete(f"{mesh.url}/v1/budgets/{other}")
    if not budget(mesh, "org-month")["overrides"]:
        httpx.post(f"{mesh.url}/v1/budgets/org-month/override", json={"hours": 1, "reason": "not this test's"})
    made = httpx.post(f"{mesh.url}/v1/budgets", json={"id": "asked-day", "period": "day", "limit": 1,
                                                       "approve_overrun": True, "override_hours": 2})
    assert made.status_code == 201, made.text
    assert mesh.invoke("echo", "echo", {"text": "within"}).status_code == 200  # 1 of 1

    answers: list[httpx.Response] = []
    held = threading.Thread(target=lambda: answers.append(mesh.invoke("echo", "echo", {"text": "past"})))
    held.start()
    pending: list[dict] = []
    wait_until(lambda: pending.extend(httpx.get(f"{mesh.url}/v1/approvals/requests",
                                                params={"status": "requested"}).json()["requests"]) or pending,
               what="the call held for approval")
    request = pending[0]
    assert (request["rule"], request["agent"], request["tool"]) == ("budget_override", "echo", "echo")
    assert "budget asked-day" in " ".join(request["reasons"])
    approved = httpx.post(f"{mesh.url}/v1/approvals/requests/{request['id']}/approve", json={"note": "ship it"})
    assert approved.status_code == 200, approved.text
    held.join(timeout=60)
    assert answers and answers[0].status_code == 200, answers and answers[0].text

    overrides = budget(mesh, "asked-day")["overrides"]
    assert [(o["granted_by"], o["reason"]) for o in overrides] == [("user:local", f"approval request {request['id']}")]
    assert mesh.invoke("echo", "echo", {"text": "after"}).status_code == 200  # the override stands: not asked
    assert httpx.get(f"{mesh.url}/v1/approvals/requests", params={"status": "requested"}).json()["requests"] == []
    httpx.delete(f"{mesh.url}/v1/budgets/asked-day")


def test_a_budget_belongs_to_its_organisation_and_is_unknown_to_another(tmp_path: Path,
                                                                        sessions: sessionmaker[Session]):
    """Budgets are listed, read, changed and overridden only within the organisation the caller acts in."""
    from starlette.testclient import TestClient

    from mesh.registry.app import build_app
    from mesh.registry.config import RegistryConfig
    from mesh.registry.node import Registry
    from mesh.workspace import Workspace

    from .conftest import copy_repo_workspace
    from .test_people import a_person, bearer

    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    registry = Registry.open(RegistryConfig.from_workspace(workspace, database_url=str(sessions.kw["bind"].url)))
    _, acme = a_person(registry, "ann", "owner", org="acme")
    with TestClient(build_app(registry), base_url="http://127.0.0.1:7300", client=("10.1.2.3", 5000)) as remote, \
            TestClient(build_app(registry), base_url="http://127.0.0.1:7300", client=("127.0.0.1", 5000)) as local:
        made = remote.post("/v1/budgets", json={"id": "acme-day", "period": "day", "limit": 3}, headers=bearer(acme))
        assert made.status_code == 201 and made.json()["org"] == "acme"  # the caller's organisation by default
        home = local.post("/v1/budgets", json={"id": "home-day", "period": "day", "limit": 3})
        assert home.json()["org"] == "default"

        assert [b["id"] for b in remote.get("/v1/budgets", headers=bearer(acme)).json()["budgets"]] == ["acme-day"]
        assert "acme-day" not in [b["id"] for b in local.get("/v1/budgets").json()["budgets"]]
        for answer in (local.get("/v1/budgets/acme-day"), local.delete("/v1/budgets/acme-day"),
                       local.post("/v1/budgets/acme-day/override", json={"hours": 1}),
                       local.post("/v1/budgets", json={"id": "acme-day", "org": "default", "limit": 99})):
            assert answer.status_code == 404 and "no budget 'acme-day'" in answer.json()["detail"], answer.text
        elsewhere = remote.post("/v1/budgets", json={"id": "x-day", "org": "default", "limit": 1}, headers=bearer(acme))
        assert elsewhere.status_code == 403 and "acts in organisation 'acme'" in elsewhere.json()["detail"]
        assert remote.get("/v1/budgets/acme-day", headers=bearer(acme)).json()["limit"] == 3  # untouched
