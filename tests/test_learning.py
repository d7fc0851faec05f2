"""The learning loop in one process: a mock API as the target, the model double over real HTTP as the model.

What these tests check is mechanics, not a model's intelligence. The double fills in a field that a task
does not name only when its prompt holds that knowledge (a lesson line in the instructions, or a
demonstration of an earlier successful call). So when success rises across iterations, it rises because
the loop carried what it learned back into the prompt (as lessons, as BootstrapFewShot's demonstrations, or
as GEPA's rewritten instructions): with every channel switched off it stays flat.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.learning.analysis import analyse_call
from mesh.learning.assessment import assess, level_of
from mesh.learning.budget import Budget, BudgetProblem
from mesh.learning.checks import evaluate
from mesh.learning.curriculum import derive_plan, instantiate
from mesh.learning.loop import LearningLoop, LoopSettings, MemoryRecorder
from mesh.learning.program import Toolbox, build_program, lessons_of, saved, state_of, with_lessons
from mesh.learning.target import MockTarget, SandboxTarget
from mesh.lm.model import build_lm
from mesh.lm.settings import LMSettings
from mesh.sandbox.openapi_mock import MockAPI

from .lm_double import ModelDouble, curriculum_agent

ROOT = Path(__file__).resolve().parent.parent
PETSTORE = ROOT / "docs" / "openapi" / "petstore.yaml"
TRACKER = ROOT / "docs" / "openapi" / "issues.yaml"
LESSON = "createPet: always set `body.species` (one of: dog, cat, bird, fish)"


@pytest.fixture(scope="module")
def double() -> Iterator[ModelDouble]:
    with ModelDouble(curriculum_agent) as server:
        yield server


@pytest.fixture
def target() -> MockTarget:
    return MockTarget(MockAPI.from_file(PETSTORE))


def model(double: ModelDouble, engine: str = "auto"):
    return build_lm(LMSettings(model="openai/double", base_url=double.base_url, api_key="k", engine=engine))


def learn(double: ModelDouble, target: MockTarget, settings: LoopSettings, budget: Budget | None = None,
          engine: str = "auto") -> tuple[object, MemoryRecorder, int]:
    plan = derive_plan(target.system, target.tools())
    recorder = MemoryRecorder()
    first_request = len(double.requests)
    result = LearningLoop(plan, target, model(double, engine), recorder, budget=budget or Budget(iterations=3),
                          settings=settings).run()
    return result, recorder, first_request


def test_the_plan_goes_from_simple_to_composite_and_holds_out_tasks(target: MockTarget):
    plan = derive_plan("petstore", target.tools())
    training = [t for t in plan["tasks"] if not t["held_out"]]
    held_out = [t for t in plan["tasks"] if t["held_out"]]
    assert [t["level"] for t in training] == sorted(t["level"] for t in training)
    assert [t["id"] for t in training] == ["list-pets", "create-pet-stated", "create-pet", "create-pet-status",
                                           "fetch-pet", "find-pet-by-status", "delete-pet"]
    assert held_out and not {t["text"] for t in held_out} & {t["text"] for t in training}
    assert {c["id"] for c in plan["rubric"]} == {"create", "read", "composite"}
    assert all(task_id in {t["id"] for t in held_out} for c in plan["rubric"] for task_id in c["tasks"])
    text, values = instantiate(training[2])
    assert values["name"] in text and "{name}" not in text


def test_the_tracker_spec_gives_a_curriculum_with_paged_lists_read_back_by_id():
    tracker = MockTarget(MockAPI.from_file(TRACKER))
    plan = derive_plan("issues", tracker.tools())
    create = next(t for t in plan["tasks"] if t["id"] == "create-project")
    assert create["check"]["via_created"] == {"tool": "createProject", "param": "projectId", "field": "id"}
    made = tracker.call("createProject", {"body": {"name": "site", "key": "WEB", "visibility": "public"}})
    verdict = evaluate(create["check"], {"name": "site"}, [made], "", tracker)
    assert verdict.passed, verdict.detail


@pytest.mark.parametrize(("settings", "rises"), [
    (LoopSettings(optimizer="none"), True),  # lessons from the error analysis only
    (LoopSettings(lessons=False), True),  # BootstrapFewShot's demonstrations only
    (LoopSettings(optimizer="gepa", lessons=False), True),  # GEPA rewriting the instructions from the feedback
    (LoopSettings(optimizer="none", lessons=False), False),  # neither: the control
], ids=["lessons", "demos", "gepa", "control"])
def test_success_rises_only_when_the_loop_carries_what_it_learned_into_the_prompt(double: ModelDouble,
                                                                                   target: MockTarget,
                                                                                   settings: LoopSettings,
                                                                                   rises: bool):
    result, recorder, first_request = learn(double, target, settings)
    rates = [i["success_rate"] for i in recorder.iterations]
    assert rates[0] < 0.5
    if rises:
        assert result.status == "proficient" and rates[-1] == 1.0 and len(rates) == 2
        assert result.to_proficiency["iterations"] == 2
    else:
        assert result.status == "budget-spent" and rates == [rates[0]] * 3
    prompts = [r["messages"] for r in double.requests[first_request:]]
    carried = [m for m in prompts if LESSON in m[0]["content"]]
    demonstrated = [m for m in prompts if len(m) > 2 and any('"species"' in x["content"] for x in m[1:-1])]
    assert bool(carried) == (rises and (settings.lessons or settings.optimizer == "gepa"))
    assert bool(demonstrated) == (settings.optimizer == "bootstrap")
    # The error analysis said which call failed, what the API said and what to change.
    finding = recorder.iterations[0]["analysis"][0]
    assert finding["tool"] == "createPet" and "species" in finding["said"] and "species" in finding["change"]
    # Every attempt was recorded with its input, tool calls, output and verdict.
    first = recorder.attempts[0]
    assert {"input", "tool_calls", "output", "error", "passed", "check_detail"} <= set(first)


def test_the_real_litellm_client_path_learns_too(double: ModelDouble, target: MockTarget):
    result, _, _ = learn(double, target, LoopSettings(), engine="litellm")
    assert result.status == "proficient"
    assert result.spent.lm_calls > 0 and result.spent.tokens > 0 and result.spent.tool_calls > 0


def test_a_budget_stops_the_loop(double: ModelDouble, target: MockTarget):
    result, recorder, _ = learn(double, target, LoopSettings(optimizer="none", lessons=False),
                                budget=Budget(iterations=10, tokens=20_000))
    assert result.status == "budget-spent" and "token budget" in result.reason
    assert len(recorder.iterations) < 10
    result, recorder, _ = learn(double, target, LoopSettings(optimizer="none", lessons=False),
                                budget=Budget(iterations=2))
    assert result.status == "budget-spent" and "iteration budget" in result.reason and len(recorder.iterations) == 2


def test_a_cancelled_loop_stops_before_its_next_call(double: ModelDouble, target: MockTarget):
    import threading

    cancel = threading.Event()
    cancel.set()
    plan = derive_plan(target.system, target.tools())
    result = LearningLoop(plan, target, model(double), MemoryRecorder(), cancel=cancel).run()
    assert result.status == "cancelled" and result.spent.tool_calls == 0


def test_versions_are_content_hashed_and_restore_what_was_learned(target: MockTarget):
    toolbox = Toolbox(target)
    plain = build_program(toolbox, "petstore")
    taught = with_lessons(build_program(toolbox, "petstore"), [LESSON])
    (plain_id, _), (taught_id, text) = saved(plain), saved(taught)
    assert plain_id != taught_id and saved(build_program(toolbox, "petstore"))[0] == plain_id
    restored = build_program(toolbox, "petstore", state_of(text))
    assert lessons_of(restored) == [LESSON] and saved(restored)[0] == taught_id
    assert saved(with_lessons(restored, []))[0] == plain_id  # lessons removed: back to the same version
    assert json.loads(text)["react"]["signature"]["instructions"].endswith(LESSON)


def test_the_error_analysis_reads_the_apis_answers(target: MockTarget):
    tools = {spec.name: spec for spec in target.tools()}
    missing = analyse_call("t", target.call("createPet", {"body": {"name": "x"}}), tools["createPet"])
    assert missing.lessons == (LESSON,)
    outside = analyse_call("t", target.call("createPet", {"body": {"name": "x", "species": "cow"}}),
                           tools["createPet"])
    assert "must be one of" in outside.lessons[0] and "species" in outside.lessons[0]
    gone = target.call("getPet", {"path_params": {"petId": 1}})
    target.call("deletePet", {"path_params": {"petId": 1}})
    unknown = analyse_call("t", target.call("getPet", {"path_params": {"petId": 1}}), tools["getPet"])
    assert gone.ok and "id that the create call returned" in unknown.lessons[0]


def test_an_assessment_scores_held_out_tasks_by_the_rubric(double: ModelDouble, target: MockTarget):
    plan = {**derive_plan("petstore", target.tools()), "threshold": 0.9}
    novice = assess(LearningLoop(plan, target, model(double), MemoryRecorder()))
    assert novice["level"] == "novice" and novice["score"] < 0.5
    taught = with_lessons(build_program(Toolbox(target), "petstore"), [LESSON])
    loop = LearningLoop(plan, target, model(double), MemoryRecorder(), start_state=state_of(saved(taught)[1]))
    expert = assess(loop)
    assert expert["level"] == "proficient" and expert["score"] == 1.0
    assert {e["task"] for e in expert["evidence"]} == {t["id"] for t in plan["tasks"] if t["held_out"]}
    assert level_of(0.6, 0.9) == "competent"


def test_a_budget_must_be_positive_integers():
    assert Budget.from_json({"iterations": 2}).iterations == 2
    for bad in ({"iterations": 0}, {"calls": "many"}, {"minutes": 3}):
        with pytest.raises(BudgetProblem):
            Budget.from_json(bad)


def test_the_registry_knows_proficiency_for_discovery_and_the_policy(tmp_path: Path):
    from mesh.learning import records
    from mesh.registry import store
    from mesh.registry.auth import Caller
    from mesh.registry.config import RegistryConfig
    from mesh.registry.node import Registry
    from mesh.registry.proxy import policy_input
    from mesh.workspace import Workspace

    from .conftest import copy_repo_workspace

    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    engine = store.connect(store.database_url(workspace.root))
    store.migrate(engine)
    with store.session_factory(engine).begin() as session:
        for score in (0.4, 0.95):
            records.add_assessment(session, agent="learner", system="petstore", plan_id=None, prompt_version=None,
                                   score=score, level="x", criteria=[], evidence=[])
    engine.dispose()
    registry = Registry.open(RegistryConfig.from_workspace(workspace))
    assert registry.proficiency("learner", "petstore") == 0.95  # the latest assessment, loaded at start
    assert registry.proficiency("learner", "issues") is None
    given = policy_input(registry, Caller("agent:learner", "agent", []), None, {},
                         call=type("Call", (), {"agent": "sandbox", "kind": "tool", "name": "x"})())
    assert given["caller"]["proficiency"] == {"petstore": 0.95}


def test_a_sandbox_target_calls_the_sandboxs_tools_by_their_mcp_names_with_flat_arguments():
    """How the loop's grouped arguments and attempt label reach a sandbox's MCP tool, and what comes back
    (the registry's run id and the sandbox_runs row); the registry's side is in test_learning_registry."""
    made: list[tuple[str, dict, str | None]] = []

    def call(tool: str, arguments: dict, attempt: str | None) -> tuple[dict, int | None]:
        made.append((tool, arguments, attempt))
        if tool == "petstore__deletePet":
            return {"isError": True, "content": [{"type": "text", "text": "policy denied"}],
                    "_meta": {"io.mcpmesh/run": "run-2"}}, 8
        return {"structuredContent": {"status": 201, "headers": {}, "body": {"id": 1}},
                "_meta": {"io.mcpmesh/run": "run-1"}}, 7

    target = SandboxTarget(call, MockAPI.from_file(PETSTORE, "petstore"), "sbx-1")
    assert "createPet" in {spec.name for spec in target.tools()}
    target.label = "run/train-1/create-pet"
    outcome = target.call("createPet", {"body": {"name": "Rex"}, "query": {"dryRun": "no"}, "invented": 1})
    assert made[-1] == ("petstore__createPet", {"dryRun": "no", "body": {"name": "Rex"}}, "run/train-1/create-pet")
    assert (outcome.ok, outcome.status, outcome.body, outcome.run_id, outcome.sandbox_run) == (
        True, 201, {"id": 1}, "run-1", 7)
    refused = target.call("deletePet", {"path_params": {"petId": 1}}, observe=True)
    assert made[-1] == ("petstore__deletePet", {"petId": 1}, "run/train-1/create-pet/check")
    assert (refused.ok, refused.error, refused.run_id, refused.sandbox_run) == (False, "policy denied", "run-2", 8)
