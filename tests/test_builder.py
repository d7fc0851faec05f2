"""The agent builder through a real registry: a brief becomes a signed, running, validated mesh agent.

The model is the double (``tests/builder_double.py``) on loopback, reached through ``dspy.LM`` and LiteLLM
over real HTTP by the registry and by the built agent. Its answers follow its prompts, so these tests check
mechanics: the blueprint is typed and reviewable, the kit follows discovery and the constraints, the pack
and the kit reach the built agent's prompt, the comparison is run and stored. Not intelligence.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import mcp_types as types
import pytest
from mcp import Client

from mesh.builder.blueprint import BlueprintProblem, Draft
from mesh.builder.kit import Kit, KitTool, forbidden, select_kit
from mesh.builder.module import agent_source, signature_of
from mesh.builder.pack import Pack
from mesh.builder.tasks import split
from mesh.knowledge import RecordStore
from mesh.knowledge.records import Blueprint, CapabilityNeed
from mesh.supervisor import running_up
from mesh.workspace import Workspace

from .builder_double import BLUEPRINT, QUESTIONS, UNREADABLE, VAGUE, builder_model
from .conftest import free_port, mesh_command, run_mesh
from .lm_double import ModelDouble, fields
from .test_registry_e2e import Mesh, running_mesh

BRIEF = "Become a reviewer of our technical documentation who never changes anything"
NOTES = '''
from mesh import Agent

agent = Agent("notes", description="Keeps short notes about the documentation.")


@agent.tool(destructive=True, idempotent=True, open_world=False)
def delete_note(title: str) -> str:
    """Delete outdated notes about documentation passages, by title."""
    return f"deleted {title}"


@agent.tool(read_only=True, idempotent=True, open_world=True)
def fetch_web_page(url: str) -> str:
    """Fetch documentation passages from a web page on the internet."""
    return url
'''


# -- the parts, in process -----------------------------------------------------------------------------------


def test_a_draft_file_with_a_mistake_is_refused_naming_the_field(tmp_path: Path):
    path = tmp_path / "draft.json"
    path.write_text(json.dumps({"name": "ok", "brief": "b", "blueprint": {"domain": "x"}}))
    with pytest.raises(BlueprintProblem, match=r"blueprint\.role: Field required"):
        Draft.load(path)
    path.write_text(json.dumps({"name": "../evil", "brief": "b", "blueprint": {"role": "r"}}))
    with pytest.raises(BlueprintProblem, match="not a valid name"):
        Draft.load(path)


def test_a_read_only_role_gets_no_tool_that_may_change_state_or_reach_out():
    assert forbidden({"readOnlyHint": True, "openWorldHint": False}, True, True) is None
    assert "change state" in forbidden({}, True, True)  # MCP's defaults: may change state
    assert "open world" in forbidden({"readOnlyHint": True}, True, True)
    assert forbidden({"destructiveHint": True}, False, False) is None  # no such constraint, no exclusion
    safe = {"readOnlyHint": True, "openWorldHint": False}
    hits = [{"agent": "a", "tool": "weak", "relevance": 0.05, "reputation": 0.9, "annotations": safe},
            {"agent": "b", "tool": "shunned", "relevance": 0.9, "reputation": 0.1, "annotations": safe}]
    blueprint = Blueprint(role="r", capabilities=[CapabilityNeed(name="n")])
    kit = select_kit(blueprint, discover=lambda q, k: hits, pinned=lambda a, t: ({}, []),
                     workspace_kits=[("k", [KitTool(source="workspace", owner="k", tool="t", description="d")])],
                     embed=lambda texts: __import__("numpy").ones((len(texts), 2)))
    reasons = {t.ref: t.why for t in kit.left}
    assert "relevance" in reasons["a.weak"] and "reputation" in reasons["b.shunned"]
    assert [t.ref for t in kit.taken] == ["k.t"] and "mounted whole" in kit.taken[0].why


def test_wrappers_are_typed_from_the_pinned_schema():
    schema = {"type": "object", "required": ["query"], "properties": {
        "query": {"type": "string"}, "k": {"type": "integer", "default": 3}, "tag": {"type": "string"}}}
    signature, arguments = signature_of(schema)
    assert signature == "query: str, k: int = 3, tag: str | None = None"
    assert eval(arguments, {"query": "q", "k": 3, "tag": None}) == {"query": "q", "k": 3}
    assert signature_of({"properties": {"class": {"type": "string"}}}) == ("arguments: dict[str, Any]",
                                                                          "dict(arguments)")


def test_blueprint_text_cannot_escape_the_module_docstring_or_a_comment():
    draft = Draft(name="x", brief='b"""', blueprint=Blueprint(role='r"""\nimport os\n"""', domain="d\\"))
    mounted = KitTool(source="workspace", owner="k", tool="t", why="answers 'n\nimport os'")
    source = agent_source(draft, Kit(taken=[mounted]), Pack(version="0" * 64, instructions="i"))
    tree = ast.parse(source)
    assert not any(isinstance(node, ast.Import) and node.names[0].name == "os" for node in tree.body)
    assert ast.get_docstring(tree).startswith("x: r''' import os ''' (d\\)")


def test_build_up_knows_a_running_mesh_up_of_the_workspace(tmp_path: Path):
    ws = Workspace(tmp_path)
    assert running_up(ws) is None
    (tmp_path / ".mesh").mkdir()
    (tmp_path / ".mesh" / "up.json").write_text(json.dumps({"pid": os.getpid(), "registry": "http://127.0.0.1:1"}))
    assert running_up(ws) == {"pid": os.getpid(), "registry": "http://127.0.0.1:1"}
    beyond_any_pid = 2**22 + 1  # above Linux's largest pid_max: no such process
    (tmp_path / ".mesh" / "up.json").write_text(json.dumps({"pid": beyond_any_pid, "registry": "x"}))
    assert running_up(ws) is None


def test_every_third_role_task_is_held_out():
    tasks = split([f"t{i}" for i in range(6)])
    assert [t.held_out for t in tasks] == [False, False, True, False, False, True]
    assert [t.held_out for t in split(["a", "b"])] == [False, True]


# -- through a real registry ----------------------------------------------------------------------------------


def test_without_a_model_the_builder_says_how_to_configure_one(hello_workspace: Path, start):
    port = free_port()
    registry = start(mesh_command("registry", "run", "--workspace", str(hello_workspace), "--port", str(port)),
                     env={"MESH_LM_MODEL": ""})
    registry.wait_http(f"http://127.0.0.1:{port}/healthz")
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/builder", json={"brief": BRIEF}, timeout=30)
    assert answer.status_code == 503 and "MESH_LM_MODEL" in answer.json()["detail"]


@pytest.fixture(scope="module")
def double() -> Iterator[ModelDouble]:
    with ModelDouble(builder_model) as server:
        yield server


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, double: ModelDouble) -> Iterator[Mesh]:
    settings = {"grants": 'doc-reviewer = ["docs:read"]'}
    with mock.patch.dict(os.environ, double.env(engine="litellm")), \
            running_mesh(tmp_path_factory, "builder", ("librarian", "notes"), sources={"notes": NOTES},
                         settings=settings) as network:
        yield network


@pytest.fixture(scope="module")
def started() -> Iterator[list[int]]:
    """Process ids of agents `mesh build --up` started; each one's group is stopped at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)


def build(mesh: Mesh, *args: str) -> object:
    return run_mesh("build", *args, "--registry", mesh.url, "--workspace", str(mesh.workspace), timeout=600)


def test_a_vague_brief_gets_questions_and_the_answers_go_into_the_blueprint(mesh: Mesh):
    asked = httpx.post(f"{mesh.url}/v1/builder", json={"brief": VAGUE}, timeout=120)
    assert asked.status_code == 200, asked.text
    assert asked.json()["stage"] == "questions" and asked.json()["questions"] == QUESTIONS
    answered = httpx.post(f"{mesh.url}/v1/builder", json={"brief": VAGUE, "answers": {QUESTIONS[0]: "the QA team"}},
                          timeout=120).json()
    assert answered["stage"] == "review" and answered["draft"]["blueprint"]["audience"] == "the QA team"
    refused = httpx.post(f"{mesh.url}/v1/builder", json={"brief": "  "}, timeout=30)
    assert refused.status_code == 400 and "brief" in refused.json()["detail"]
    refused = httpx.post(f"{mesh.url}/v1/builder", json={"blueprint": {"name": "x", "brief": "b", "blueprint": {}}},
                         timeout=30)
    assert refused.status_code == 400 and "blueprint.role: Field required" in refused.json()["detail"]
    garbled = httpx.post(f"{mesh.url}/v1/builder", json={"brief": UNREADABLE}, timeout=120)
    assert garbled.status_code == 502 and "the model (openai/double at" in garbled.json()["detail"]
    assert "double-key" not in garbled.text
    assert not (mesh.workspace / "agents" / "helper.py").exists()



def test_the_builders_model_tokens_count_against_the_requesters_organisation(mesh: Mesh):
    made = httpx.post(f"{mesh.url}/v1/budgets", json={"id": "builder-day", "period": "day", "limit": 1e9}, timeout=30)
    assert made.status_code == 201, made.text
    try:
        answered = httpx.post(f"{mesh.url}/v1/builder", json={"brief": VAGUE, "answers": {QUESTIONS[0]: "QA"}},
                              timeout=120)
        assert answered.json()["stage"] == "review", answered.text
        spent = httpx.get(f"{mesh.url}/v1/budgets/builder-day", timeout=30).json()["current"]["spent"]
        assert spent > 0  # the double reports usage, as a provider does; the local user acts in the default org
    finally:
        httpx.delete(f"{mesh.url}/v1/budgets/builder-day", timeout=30)

def test_mesh_build_shows_the_blueprint_and_kit_for_review_and_writes_no_agent(mesh: Mesh):
    shown = build(mesh, BRIEF)
    assert shown.returncode == 0, shown.stderr
    assert "doc-reviewer: documentation reviewer (technical documentation)" in shown.stdout
    assert "Nothing written yet" in shown.stdout and not (mesh.workspace / "agents" / "doc-reviewer.py").exists()
    draft = json.loads((mesh.workspace / ".mesh" / "builder" / "doc-reviewer.json").read_text())
    assert draft["blueprint"] == {**BLUEPRINT, "capabilities": BLUEPRINT["capabilities"]}

    kit = httpx.post(f"{mesh.url}/v1/builder", json={"blueprint": draft}, timeout=120).json()["kit"]
    taken = {f"{t['owner']}.{t['tool']}": t for t in kit["taken"]}
    left = {f"{t['owner']}.{t['tool']}": t for t in kit["left"]}
    assert kit["read_only"] is True, kit
    assert "librarian.search" in taken, json.dumps(kit, indent=1)
    search = taken["librarian.search"]  # ranked by the registry's discovery: relevance, reputation
    assert search["need"].startswith("find the passages") and search["relevance"] > 0 and search["reputation"] > 0
    assert "relevance" in search["why"] and search["input_schema"]["required"] == ["query"]
    assert search["scopes"] == ["docs:read"]
    assert "read-only" in left["notes.delete_note"]["why"]
    assert "open world" in left["notes.fetch_web_page"]["why"]
    assert "textstats.text_stats" in taken and "mounted whole" in taken["textstats.text_stats"]["why"]
    assert "librarian.search" in shown.stdout and "notes.delete_note" in shown.stdout
    unreviewed = build(mesh, BRIEF, "--write")
    assert unreviewed.returncode == 2 and "reviewed draft" in unreviewed.stderr


def test_an_edited_blueprint_is_built_signed_started_admitted_and_validated(mesh: Mesh, started: list[int],
                                                                            double: ModelDouble):
    path = mesh.workspace / ".mesh" / "builder" / "doc-reviewer.json"
    draft = json.loads(path.read_text())
    draft["blueprint"]["objectives"].append("keep every answer under 200 words")  # the person's edit
    path.write_text(json.dumps(draft))
    built = build(mesh, "--blueprint", str(path), "--write", "--up")
    started.extend(int(pid) for pid in re.findall(r"started \(pid (\d+)", built.stdout))
    assert built.returncode == 0, built.stdout + built.stderr
    assert started and "admitted by the registry" in built.stdout and "validation on 2 held-out tasks" in built.stdout

    agents = mesh.workspace / "agents"
    source = (agents / "doc-reviewer.py").read_text()
    assert "await agent.mesh.invoke('librarian', 'search', arguments)" in source
    assert "agent.mount('textstats')" in source and "delete_note" not in source
    pack = json.loads((agents / "doc-reviewer.pack.json").read_text())
    assert "keep every answer under 200 words" in pack["instructions"]
    assert "`search` (librarian.search)" in pack["instructions"] and pack["examples"]
    verified = run_mesh("verify", "doc-reviewer", "--workspace", str(mesh.workspace))
    assert verified.returncode == 0, verified.stderr

    document = mesh.agent("doc-reviewer")
    assert document["status"] == "active"
    build_record = document["build"]
    assert build_record["blueprint"]["objectives"][-1] == "keep every answer under 200 words"
    report = build_record["validation"]
    assert report["held_out"] == 2 and set(report["criteria"]) == {"role_fit", "uses_kit"}
    # The double speaks as the role, naming kit tools, only when its prompt holds the pack and the kit.
    assert report["built"] == 1.0 and report["generic"] == 0.0 and report["difference"] == 1.0
    assert report["criteria"]["uses_kit"] == {"built": 1.0, "generic": 0.0, "difference": 1.0}
    assert all(row["generic"]["answer"] == "Here is a general answer." for row in report["tasks"])
    assert report["lm"]["calls"] == 6  # per held-out task: the generic answer and two judgements

    versions = httpx.get(f"{mesh.url}/v1/agents/doc-reviewer/prompts").json()["versions"]
    assert [(v["id"], v["system"], v["active"]) for v in versions] == [(build_record["prompt_version"], "role", True)]
    with RecordStore.open(mesh.workspace / ".mesh") as store:  # the definition, as a compressed record
        definitions = [record for _, record in store.records("agent_definition")]
    assert [d.name for d in definitions] == ["doc-reviewer"]
    assert definitions[0].blueprint.objectives[-1] == "keep every answer under 200 words"


def test_the_built_agent_is_called_through_the_registry_with_its_kit_and_pack(mesh: Mesh, double: ModelDouble):
    answer = mesh.invoke("doc-reviewer", "search", {"query": "rotating signing keys", "k": 2})
    assert answer.status_code == 200, answer.text
    runs = httpx.get(f"{mesh.url}/v1/runs", params={"agent": "librarian", "limit": 5}).json()["runs"]
    assert any(r["caller"] == "agent:doc-reviewer" and r["tool"] == "search" and r["status"] == "ok" for r in runs)

    before = len(double.requests)
    done = mesh.invoke("doc-reviewer", "do_task", {"task": "Review the page on key rotation."})
    assert done.status_code == 200, done.text
    text = done.json()["result"]["structuredContent"]["result"]
    assert text.startswith("As a documentation reviewer") and "`search`" in text
    prompt = double.requests[before]["messages"]
    assert "You are doc-reviewer, documentation reviewer" in prompt[0]["content"]
    assert "`text_stats` (textstats.text_stats)" in prompt[0]["content"]
    assert len(prompt) > 2 and "Review the documentation about topic" in prompt[1]["content"]  # a worked example


def test_mesh_ls_shows_the_agent_with_its_blueprint(mesh: Mesh):
    listed = run_mesh("ls", "--registry", mesh.url)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("doc-reviewer"))
    assert "documentation reviewer" in line


def test_an_existing_agent_is_not_overwritten_without_force(mesh: Mesh):
    module = mesh.workspace / "agents" / "doc-reviewer.py"
    before = module.read_text()
    again = build(mesh, "--blueprint", str(mesh.workspace / ".mesh" / "builder" / "doc-reviewer.json"), "--write")
    assert again.returncode == 1 and "--force" not in again.stdout and "force" in again.stderr
    assert module.read_text() == before


async def test_build_agent_on_the_mcp_face_elicits_answers_or_returns_the_questions(mesh: Mesh,
                                                                                        double: ModelDouble):
    asked: list[types.ElicitRequestParams] = []

    async def on_elicit(context, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"q1": "the support team"})

    async with Client(f"{mesh.url}/mcp", mode="legacy", elicitation_callback=on_elicit) as client:
        result = await client.call_tool("build_agent", {"brief": VAGUE})
    assert not result.is_error, result.content
    assert len(asked) == 1 and asked[0].requested_schema["properties"]["q1"]["description"] == QUESTIONS[0]
    assert result.structured_content["stage"] == "review"
    assert result.structured_content["draft"]["blueprint"]["audience"] == "the support team"

    async with Client(f"{mesh.url}/mcp", mode="2026-07-28") as client:
        result = await client.call_tool("build_agent", {"brief": VAGUE})
    assert result.structured_content["stage"] == "questions" and result.structured_content["questions"] == QUESTIONS

    # The brief reader's prompt carries, through the budgeter, the agent definition kept by the build above.
    reading = [fields(r["messages"][-1]["content"]) for r in double.requests
               if "`questions`" in r["messages"][0]["content"]][-1]
    assert "[agent_definition #" in reading["context"] and "doc-reviewer" in reading["context"]


def test_a_running_built_agent_is_validated_again_on_request(mesh: Mesh):
    before = mesh.agent("doc-reviewer")["build"]["validation"]["validated_at"]
    again = build(mesh, "--validate", "--name", "doc-reviewer")
    assert again.returncode == 0, again.stderr
    assert "validation on 2 held-out tasks" in again.stdout and "uses_kit" in again.stdout
    assert mesh.agent("doc-reviewer")["build"]["validation"]["validated_at"] > before
    unknown = httpx.post(f"{mesh.url}/v1/builder/librarian/validation", json={}, timeout=30)
    assert unknown.status_code == 404 and "not made by the builder" in unknown.json()["detail"]


def test_the_role_tool_serves_the_prompt_version_the_registry_has_active(mesh: Mesh, double: ModelDouble):
    """A rebuild is a new prompt version and the running agent serves it; a rollback (the learning loop's
    `activate`) brings the earlier one back, without restarting the agent."""
    first = mesh.agent("doc-reviewer")["build"]["prompt_version"]
    draft = json.loads((mesh.workspace / ".mesh" / "builder" / "doc-reviewer.json").read_text())
    draft["blueprint"]["objectives"].append("name the audience in every answer")
    edited = mesh.workspace / ".mesh" / "builder" / "doc-reviewer-2.json"
    edited.write_text(json.dumps(draft))
    rebuilt = build(mesh, "--blueprint", str(edited), "--write", "--force")
    assert rebuilt.returncode == 0, rebuilt.stderr
    second = mesh.agent("doc-reviewer")["build"]["prompt_version"]
    versions = httpx.get(f"{mesh.url}/v1/agents/doc-reviewer/prompts").json()
    assert second != first and versions["active"] == {"role": second} and len(versions["versions"]) == 2

    def served_instructions() -> str:
        before = len(double.requests)
        done = mesh.invoke("doc-reviewer", "do_task", {"task": "Review the page on key rotation."})
        assert done.status_code == 200, done.text
        return double.requests[before]["messages"][0]["content"]

    assert "name the audience in every answer" in served_instructions()
    rolled = httpx.post(f"{mesh.url}/v1/agents/doc-reviewer/prompts/{first}/activate", json={}, timeout=30)
    assert rolled.status_code == 200, rolled.text
    assert "name the audience in every answer" not in served_instructions()
