"""The HTTP API fuzzed against its own OpenAPI document: no 500 for any input, and every answer documented.

A real registry runs on loopback with the `echo` agent admitted; schemathesis loads ``/v1/openapi.json``
from it and sends generated requests (valid and invalid) to every operation. Each answer must not be a
server error, and its status, content type and body must be the ones the document gives for that
operation. Requests without a token act as the local user (all scopes); a second pass sends bogus bearer
tokens (junk, and JWTs with any header and claims) to reach the refusals. Some requests are steered to
the real agent, runs and cursors, past the first 404. Runs are derandomized, so a failure repeats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, timedelta, timezone

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.keys import KeyRing, SigningKey, b64url
from mesh.registry.auth import issue_token
from mesh.registry.openapi import openapi_document

from .test_registry_e2e import ECHO, Mesh, running_mesh

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]
# A 5xx is a server error, except the gateway statuses by which the registry relays a target agent's
# failure (502 unreachable or wrong answer, 504 too slow) on the four routes that call an agent.
GATEWAY = ["2xx", "3xx", "4xx", "502", "504"]
CONFIG = schemathesis.Config.from_dict({"operations": [{
    "include-operation-id": ["invoke", "register", "recheckAgent", "getSandboxState"],
    "checks": {"not_a_server_error": {"expected-statuses": GATEWAY}},
}, {  # learning and the builder refuse with 503 while no language model is configured (this mesh has none)
    "include-operation-id": ["runLearningPlan", "assessLearningPlan", "buildAgent"],
    "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}},
}, {  # validating a built agent calls it, and needs the model
    "include-operation-id": ["validateBuiltAgent"],
    "checks": {"not_a_server_error": {"expected-statuses": [*GATEWAY, "503"]}},
}]})
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON_VALUES = st.recursive(JSON_SCALARS,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)
JSON_OBJECTS = st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4)


@dataclass
class Known:
    """Real values of the running mesh, to steer some generated requests past the first refusal (a random
    agent name is only ever a 404) into the code behind it."""

    run_ids: list[str]
    cursor: str
    registration: dict
    key: SigningKey

    def steer(self, path: str, method: str) -> st.SearchStrategy[dict] | None:
        """Overrides for schemathesis' strategy of one operation (the rest of the request is generated)."""
        if path == "/v1/invoke":
            # Arguments right or wrong, a tool error, a JSON-RPC error, a destructive tool the policy refuses.
            call = st.fixed_dictionaries({
                "agent": st.just("echo"),
                "tool": st.sampled_from(["echo", "fail", "refuse", "wipe", "nothing"]),
                "arguments": st.fixed_dictionaries({"text": st.text()}) | st.fixed_dictionaries(
                    {"reason": st.text()}) | JSON_OBJECTS,
            })
            parent = st.fixed_dictionaries({"x-mesh-parent-run": st.sampled_from(self.run_ids) | st.uuids().map(str)})
            return st.fixed_dictionaries({"body": call}, optional={"headers": parent})
        if path == "/v1/agents" and method == "POST":
            # The agent's own token, with a forged manifest or JWKS, or a real manifest at a dead endpoint.
            real = self.registration
            body = st.fixed_dictionaries({
                "name": st.just("echo"),
                "endpoint": st.sampled_from([real["endpoint"], "http://127.0.0.1:1/mcp", "ftp://x"]),
                "manifest": st.just(real["manifest"]) | JSON_OBJECTS,
                "jwks": st.just(real["jwks"]) | JSON_OBJECTS | st.fixed_dictionaries(
                    {"rotations": st.lists(JSON_VALUES, max_size=2), "revocations": st.lists(JSON_VALUES, max_size=2)}),
            })
            token = st.builds(lambda: {"Authorization": f"Bearer {issue_token('echo', self.key)}"})
            return st.fixed_dictionaries({"body": body, "headers": token})
        if path == "/v1/runs":
            forged = st.builds(lambda when, run: b64url(json.dumps([when.isoformat(), str(run)]).encode()),
                               st.datetimes(timezones=st.none() | st.just(UTC) | st.builds(
                                   timezone, st.timedeltas(-timedelta(hours=23), timedelta(hours=23)))), st.uuids())
            return st.fixed_dictionaries({"query": st.fixed_dictionaries({"cursor": st.just(self.cursor) | forged})})
        if path == "/v1/runs/{run_id}":
            return st.fixed_dictionaries({"path_parameters": st.fixed_dictionaries(
                {"run_id": st.sampled_from(self.run_ids)})})
        if path == "/v1/agents/{name}/sandboxes" and method == "POST":
            # Real services, so that modes, TTLs and configurations are judged, not just the spec names.
            body = st.fixed_dictionaries(
                {"required_services": st.lists(st.sampled_from(["petstore", "tracker"]), min_size=1, max_size=2,
                                               unique=True)},
                optional={"mode": st.sampled_from(["mock", "emulated", "connected", "live"]),
                          "ttl_seconds": st.integers(), "services": JSON_OBJECTS, "secret_ref": st.text(),
                          "description": st.text()})
            return st.fixed_dictionaries({"path_parameters": st.just({"name": "echo"}), "body": body})
        if "{name}" in path:
            return st.just({"path_parameters": {"name": "echo"}})
        return None


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The repository's workspace with the `echo` agent admitted beside the registry."""
    with running_mesh(tmp_path_factory, "fuzz", ("echo",), sources={"echo": ECHO},
                      settings={"registry": "call_timeout = 2.0"}) as network:
        assert network.invoke("echo", "echo", {"text": "a run to read"}).status_code == 200
        yield network


@pytest.fixture(scope="module")
def api(mesh: Mesh) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{mesh.url}/v1/openapi.json", config=CONFIG)


@pytest.fixture(scope="module")
def known(mesh: Mesh) -> Known:
    page = httpx.get(f"{mesh.url}/v1/runs", params={"limit": 1}).json()
    manifests = mesh.workspace / ".mesh" / "manifests"
    registration = {"endpoint": f"http://127.0.0.1:{mesh.agent_ports['echo']}/mcp",
                    "manifest": json.loads((manifests / "echo.manifest.json").read_text()),
                    "jwks": json.loads((manifests / "echo.jwks.json").read_text())}
    runs = httpx.get(f"{mesh.url}/v1/runs").json()["runs"]
    return Known([run["id"] for run in runs], page["next_cursor"], registration,
                 KeyRing.open(mesh.workspace / ".mesh" / "keys" / "echo").active())


def test_the_document_lists_every_route_with_its_problems(api: schemathesis.BaseSchema):
    document = api.raw_schema
    assert set(document["paths"]) == {
        "/healthz", "/.well-known/jwks.json", "/v1/openapi.json", "/v1/agents", "/v1/agents/{name}",
        "/v1/agents/{name}/recheck", "/v1/agents/{name}/revocations", "/v1/agents/{name}/keys/{kid}/revoke",
        "/v1/discover", "/v1/invoke", "/v1/runs", "/v1/runs/{run_id}", "/v1/agents/{name}/sandboxes",
        "/v1/agents/{name}/sandboxes/{sandbox_id}", "/v1/agents/{name}/sandboxes/{sandbox_id}/reset",
        "/v1/agents/{name}/sandboxes/{sandbox_id}/runs", "/v1/agents/{name}/sandboxes/{sandbox_id}/state",
        "/v1/sandboxes", "/v1/approvals", "/v1/approvals/{approval_id}",
        # calls held for approval (approvals.py)
        "/v1/approvals/requests", "/v1/approvals/requests/{request_id}", "/v1/approvals/requests/{request_id}/approve",
        "/v1/approvals/requests/{request_id}/deny",
        "/v1/audit", "/v1/audit/export", "/v1/audit/checkpoints", "/v1/secrets", "/v1/secrets/{ref}",
        "/v1/secrets/{ref}/rotate", "/v1/secrets/{ref}/cutover",
        "/v1/lm", "/v1/agents/{name}/learning-plans", "/v1/agents/{name}/assessments", "/v1/agents/{name}/prompts",
        "/v1/agents/{name}/prompts/{version}", "/v1/agents/{name}/prompts/{version}/activate",
        "/v1/learning-plans/{plan_id}", "/v1/learning-plans/{plan_id}/run", "/v1/learning-plans/{plan_id}/assess",
        "/v1/learning-runs/{run_id}", "/v1/learning-runs/{run_id}/cancel", "/v1/learning-runs/{run_id}/attempts",
        "/v1/builder", "/v1/builder/{name}/validation",  # the agent builder (mesh/builder)
        # people and sign-in (people.py, oidc.py)
        "/.well-known/oauth-protected-resource", "/v1/auth/login", "/v1/auth/callback", "/v1/users/me",
        "/v1/tokens", "/v1/tokens/{token_id}", "/v1/orgs", "/v1/orgs/{org}/members", "/v1/orgs/{org}/members/{user_id}",
        # budgets (budgets.py)
        "/v1/budgets", "/v1/budgets/{budget_id}", "/v1/budgets/{budget_id}/override"}
    assert document == openapi_document()  # what this module fuzzes below is what the registry serves
    invoke = document["paths"]["/v1/invoke"]["post"]["responses"]
    assert set(invoke) == {"200", "400", "401", "402", "403", "404", "408", "409", "413", "415", "421", "429", "502",
                           "503",
                           "504"}
    assert invoke["504"]["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    revoke = document["paths"]["/v1/agents/{name}/keys/{kid}/revoke"]["post"]
    assert [p["name"] for p in revoke["parameters"] if p["in"] == "path"] == ["name", "kid"]


def test_an_unknown_path_or_method_under_v1_is_a_problem_too(mesh: Mesh):
    missing = httpx.get(f"{mesh.url}/v1/agents/echo/nothing")
    assert (missing.status_code, missing.headers["content-type"]) == (404, "application/problem+json")
    wrong = httpx.put(f"{mesh.url}/v1/agents", json={})
    assert (wrong.status_code, wrong.headers["content-type"]) == (405, "application/problem+json")
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert wrong.json()["status"] == 405


# schemathesis' own pytest integration (schema.parametrize with a lazily loaded schema) does not run under
# pytest 9.2, so each operation is its own test here, drawing cases from schemathesis' strategies.
OPERATIONS = [(path, method.upper()) for path, item in openapi_document()["paths"].items() for method in item]
IDS = [f"{method} {path}" for path, method in OPERATIONS]


def test_only_the_routes_that_call_an_agent_may_answer_a_gateway_error(api: schemathesis.BaseSchema):
    for path, method in OPERATIONS:
        allowed = api.config.checks_config_for(operation=api[path][method]).not_a_server_error.expected_statuses
        calls_an_agent = {("POST", "/v1/invoke"), ("POST", "/v1/agents"), ("POST", "/v1/agents/{name}/recheck"),
                          ("GET", "/v1/agents/{name}/sandboxes/{sandbox_id}/state"),
                          ("POST", "/v1/builder/{name}/validation")}
        assert ("502" in allowed) == ((method, path) in calls_an_agent), path


def cases(api: schemathesis.BaseSchema, path: str, method: str, data: st.DataObject,
          known: Known | None = None) -> schemathesis.Case:
    """A request for the operation, valid or not; with ``known``, some steered to real agents and runs."""
    operation = api[path][method]
    mode = data.draw(st.sampled_from(list(schemathesis.GenerationMode)), label="mode")
    steer = known.steer(path, method) if known is not None else None
    overrides = {}
    if steer is not None and mode == schemathesis.GenerationMode.POSITIVE and data.draw(st.booleans(), "steered"):
        overrides = data.draw(steer, label="overrides")
    return data.draw(operation.as_strategy(mode, **overrides), label="case")


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=IDS)
@FUZZ
@given(data=st.data())
def test_as_the_local_user(api: schemathesis.BaseSchema, known: Known, path: str, method: str,
                           data: st.DataObject):
    cases(api, path, method, data, known).call_and_validate(checks=CHECKS)


def segment(value: object) -> str:
    return b64url(json.dumps(value).encode())


def bogus_tokens(kid: str) -> st.SearchStrategy[str]:
    """Tokens that prove nothing: junk, and JWTs whose header and claims are anything, some naming `echo`
    and its key, so that the registry gets as far as checking the signature."""
    claims = st.fixed_dictionaries({"sub": st.just("agent:echo") | JSON_SCALARS}, optional={
        "iss": st.just("agent:echo") | JSON_SCALARS, "aud": st.just("mcpmesh-registry") | JSON_VALUES,
        "exp": JSON_SCALARS, "iat": JSON_SCALARS})
    header = st.fixed_dictionaries({"alg": st.just("ES256") | JSON_SCALARS},
                                   optional={"kid": st.just(kid) | JSON_SCALARS})
    signature = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", max_size=86)
    jwts = st.builds(lambda h, c, s: f"{segment(h)}.{segment(c)}.{s}", header | JSON_VALUES, claims | JSON_VALUES,
                     signature)
    return st.just("x.y.z") | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40) | jwts


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=IDS)
@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_with_a_bogus_token(api: schemathesis.BaseSchema, known: Known, path: str, method: str,
                            data: st.DataObject):
    case = cases(api, path, method, data)
    token = data.draw(bogus_tokens(known.key.kid), label="token")
    case.call_and_validate(checks=CHECKS, headers={"Authorization": f"Bearer {token}"})
