"""The learning routes' part of the registry's OpenAPI document (``mesh.registry.openapi`` merges it in)."""

from __future__ import annotations

from typing import Any


def learning_document(read: tuple[int, ...], write: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(paths, schemas)`` for the learning routes; ``read``/``write`` are the statuses every such route has."""
    from mesh.registry.openapi import (
        AGENT_NAME,
        _json_body,
        _list,
        _nullable,
        _object,
        _operation,
        _param,
        _ref,
        _responses,
    )

    def accepted(ok: dict[str, Any], description: str, *statuses: int, **special: str) -> dict[str, Any]:
        responses = _responses(ok, description, *statuses, **special)
        responses["202"] = responses.pop("200")
        return dict(sorted(responses.items()))

    plan_id = _param("plan_id", "path", {"type": "string", "format": "uuid"}, "the learning plan's id")
    run_id = _param("run_id", "path", {"type": "string", "format": "uuid"}, "the learning run's (or assessment's) id")
    version = _param("version", "path", {"type": "string"},
                     "a version id (SHA-256 of the saved program), a unique prefix of 8 or more, or 'active'")
    system = _param("system", "query", {"type": "string"}, "the target system, e.g. petstore")
    no_model = "no language model is configured (lm-not-configured); the detail says how to configure one"
    not_trainer = "only the agent itself or an administrator may (or a browser Origin not allowed)"
    budget = _object({"iterations": {"type": "integer", "minimum": 1}, "calls": {"type": "integer", "minimum": 1},
                      "tokens": {"type": "integer", "minimum": 1}}, additionalProperties=False)
    schemas = {
        "LearningTask": _object(
            {"id": {"type": "string"}, "level": {"type": "integer"}, "skill": {"type": "string"},
             "text": {"type": "string", "description": "the task, {name} placeholders filled per attempt"},
             "params": {"type": "object"}, "held_out": {"type": "boolean"},
             "check": _object({"kind": {"enum": ["all", "state_contains", "state_lacks", "called",
                                                 "answer_has_field", "answer_count"]}}, ["kind"])},
            ["id", "text", "check"]),
        "LearningPlan": _object(
            {"id": {"type": "string", "format": "uuid"}, "agent": {"type": "string"}, "system": {"type": "string"},
             "source": {"type": "object"}, "objectives": _list({"type": "string"}),
             "tasks": _list(_ref("LearningTask")), "rubric": _list({"type": "object"}),
             "threshold": {"type": "number"}, "budget": {"type": "object"}, "revision": {"type": "integer"},
             "created_at": {"type": "string", "format": "date-time"},
             "updated_at": {"type": "string", "format": "date-time"}, "runs": _list({"type": "object"})},
            ["id", "agent", "system", "objectives", "tasks", "rubric", "threshold", "budget", "revision"]),
        "LearningIteration": _object(
            {"number": {"type": "integer"}, "prompt_version": _nullable("string"), "attempted": {"type": "integer"},
             "passed": {"type": "integer"}, "success_rate": {"type": "number"}, "retries": {"type": "integer"},
             "lm_calls": {"type": "integer"}, "tool_calls": {"type": "integer"}, "tokens": {"type": "integer"},
             "seconds": {"type": "number"}, "analysis": _list({"type": "object"}),
             "lessons": _list({"type": "string"})},
            ["number", "attempted", "passed", "success_rate", "analysis", "lessons"]),
        "LearningRun": _object(
            {"id": {"type": "string", "format": "uuid"}, "plan_id": {"type": "string"}, "agent": {"type": "string"},
             "system": {"type": "string"},
             "status": {"type": "string", "description": "running, proficient, budget-spent, cancelled, failed, "
                                                         "interrupted"},
             "reason": _nullable("string"), "budget": {"type": "object"}, "spent": {"type": "object"},
             "result": _nullable("object"), "start_version": _nullable("string"),
             "final_version": _nullable("string"), "started_at": {"type": "string", "format": "date-time"},
             "finished_at": _nullable("string"), "iterations": _list(_ref("LearningIteration")),
             "progress": _nullable("object", description="while running: iteration, done, of, task, phase")},
            ["id", "plan_id", "agent", "system", "status", "budget", "spent", "iterations"]),
        "LearningAttempt": _object(
            {"id": {"type": "string"}, "run_id": {"type": "string"},
             "kind": {"enum": ["train", "bootstrap", "gepa", "assess"]},
             "iteration": {"type": "integer"}, "task_id": {"type": "string"}, "input": {"type": "string"},
             "params": {"type": "object"},
             "tool_calls": _list(_object({"tool": {"type": "string"}, "arguments": {"type": "object"},
                                          "ok": {"type": "boolean"}, "status": _nullable("integer"),
                                          "error": _nullable("string"), "run_id": _nullable("string")},
                                         ["tool", "ok"])),
             "output": _nullable("string"), "error": _nullable("string"), "passed": {"type": "boolean"},
             "check_detail": _nullable("string"), "prompt_version": _nullable("string")},
            ["id", "run_id", "kind", "task_id", "input", "tool_calls", "passed"]),
        "CapabilityAssessment": _object(
            {"id": {"type": "string"}, "agent": {"type": "string"}, "system": {"type": "string"},
             "plan_id": _nullable("string"), "prompt_version": _nullable("string"), "score": {"type": "number"},
             "level": {"enum": ["novice", "competent", "proficient"]}, "criteria": _list({"type": "object"}),
             "evidence": _list(_object({"attempt": {"type": "string"}, "task": {"type": "string"},
                                        "passed": {"type": "boolean"}, "runs": _list({"type": "string"})},
                                       ["attempt", "task", "passed", "runs"])),
             "created_at": {"type": "string", "format": "date-time"}},
            ["id", "agent", "system", "score", "level", "criteria", "evidence"]),
        "PromptVersion": _object(
            {"id": {"type": "string", "description": "SHA-256 of the saved program (program.save JSON)"},
             "agent": {"type": "string"}, "system": {"type": "string"}, "active": {"type": "boolean"},
             "lessons": _list({"type": "string"}), "demos": {"type": "integer"}, "metrics": {"type": "object"},
             "parent_id": _nullable("string"), "plan_id": _nullable("string"), "run_id": _nullable("string"),
             "iteration": _nullable("integer"), "created_at": {"type": "string", "format": "date-time"},
             "program": {"type": "string", "description": "one version only: the saved program"}},
            ["id", "agent", "system", "active", "lessons", "demos", "metrics"]),
        "Proficiency": {"type": "object", "description": "the latest assessment per target system",
                        "additionalProperties": _object({"score": {"type": "number"}, "level": {"type": "string"},
                                                         "assessed_at": {"type": "string"},
                                                         "assessment": {"type": "string"}},
                                                        ["score", "level"])},
    }
    paths = {
        "/v1/lm": {"get": _operation(
            "Whether a language model is configured for the LM features (never the key)",
            _responses(_object({"configured": {"type": "boolean"}, "model": _nullable("string")},
                               ["configured", "model"]), "the model, or none", *read),
            operation_id="languageModel")},
        "/v1/agents/{name}/learning-plans": {
            "get": _operation(
                "The agent's learning plans, newest first",
                _responses(_object({"plans": _list(_ref("LearningPlan"))}, ["plans"]), "its plans", *read, 404),
                parameters=[AGENT_NAME], operation_id="listLearningPlans"),
            "post": _operation(
                "Derive a learning plan from a sandbox API's spec: objectives, tasks with checks, a rubric",
                _responses(_ref("LearningPlan"), "the plan", *write, 403, 404, s403=not_trainer,
                           s404="no such agent, or the sandbox agent is not registered"),
                parameters=[AGENT_NAME],
                body=_json_body(_object({"system": {"type": "string", "description": "the sandbox API, e.g. petstore"},
                                         "sandbox_agent": {"type": "string", "default": "sandbox"},
                                         "threshold": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                         "budget": budget}, ["system"])),
                operation_id="createLearningPlan")},
        "/v1/agents/{name}/assessments": {"get": _operation(
            "The agent's capability assessments, newest first, and its proficiency per system",
            _responses(_object({"assessments": _list(_ref("CapabilityAssessment")),
                                "proficiency": _ref("Proficiency")}, ["assessments", "proficiency"]),
                       "its assessments", *read, 404),
            parameters=[AGENT_NAME], operation_id="listAssessments")},
        "/v1/agents/{name}/prompts": {"get": _operation(
            "The agent's prompt versions, oldest first, the active one per system marked",
            _responses(_object({"versions": _list(_ref("PromptVersion")),
                                "active": {"type": "object", "additionalProperties": {"type": "string"}}},
                               ["versions", "active"]), "its versions", *read, 404),
            parameters=[AGENT_NAME, system], operation_id="listPromptVersions")},
        "/v1/agents/{name}/prompts/{version}": {"get": _operation(
            "One prompt version with its saved program; 'active' (with ?system=) the one the agent serves",
            _responses(_ref("PromptVersion"), "the version", *read, 404),
            parameters=[AGENT_NAME, version, system], operation_id="getPromptVersion")},
        "/v1/agents/{name}/prompts/{version}/activate": {"post": _operation(
            "Serve this version for its system from now on (a rollback, when it is an earlier one)",
            _responses(_object({"agent": {"type": "string"}, "system": {"type": "string"},
                                "active": {"type": "string"}, "previous": _nullable("string")},
                               ["agent", "system", "active", "previous"]), "now active", *write, 403, 404,
                       s403=not_trainer),
            parameters=[AGENT_NAME, version], body=_json_body({"type": "object"}),
            operation_id="activatePromptVersion")},
        "/v1/learning-plans/{plan_id}": {
            "get": _operation("One learning plan with its runs",
                              _responses(_ref("LearningPlan"), "the plan", *read, 404),
                              parameters=[plan_id], operation_id="getLearningPlan"),
            "patch": _operation(
                "Edit a plan's objectives, tasks, rubric, threshold or budget",
                _responses(_ref("LearningPlan"), "the plan as edited (revision + 1)", *write, 403, 404,
                           s403=not_trainer),
                parameters=[plan_id],
                body=_json_body(_object({"objectives": _list({"type": "string"}),
                                         "tasks": _list(_ref("LearningTask")), "rubric": _list({"type": "object"}),
                                         "threshold": {"type": "number"}, "budget": budget})),
                operation_id="editLearningPlan")},
        "/v1/learning-plans/{plan_id}/run": {"post": _operation(
            "Start the learning loop on a plan, in the background",
            accepted(_ref("LearningRun"), "started; follow it at /v1/learning-runs/{id}", *write, 403, 404, 409,
                     503, s403=not_trainer, s409="the plan is being learned already", s503=no_model),
            description="Every attempt's calls go through the registry as agent:NAME (policy-checked, recorded). "
                        "Stops when the plan's threshold is reached, the budget is spent, or it is cancelled.",
            parameters=[plan_id],
            body=_json_body(_object({"budget": budget, "optimizer": {"enum": ["bootstrap", "gepa", "none"]},
                                     "lessons": {"type": "boolean"}, "assess": {"type": "boolean"}})),
            operation_id="runLearningPlan")},
        "/v1/learning-plans/{plan_id}/assess": {"post": _operation(
            "Score the agent's active prompt version on the plan's held-out tasks, by its rubric",
            _responses(_ref("CapabilityAssessment"), "the assessment", *write, 403, 404, 503, s403=not_trainer,
                       s503=no_model),
            parameters=[plan_id],
            body=_json_body(_object({"trials": {"type": "integer", "minimum": 1, "maximum": 10}})),
            operation_id="assessLearningPlan")},
        "/v1/learning-runs/{run_id}": {"get": _operation(
            "A learning run: status, budget and spending, metrics per iteration, progress while it runs",
            _responses(_ref("LearningRun"), "the run", *read, 404), parameters=[run_id],
            operation_id="getLearningRun")},
        "/v1/learning-runs/{run_id}/cancel": {"post": _operation(
            "Cancel a running learning run (it stops before its next model-driven call)",
            _responses(_object({"id": {"type": "string"}, "cancelling": {"type": "boolean"}}, ["id", "cancelling"]),
                       "cancelling, or false when it had ended", *write, 403, 404, s403=not_trainer),
            parameters=[run_id], body=_json_body({"type": "object"}), operation_id="cancelLearningRun")},
        "/v1/learning-runs/{run_id}/attempts": {"get": _operation(
            "Every attempt of a learning run or assessment: input, tool calls with run ids, output, verdict",
            _responses(_object({"attempts": _list(_ref("LearningAttempt"))}, ["attempts"]), "its attempts",
                       *read, 404), parameters=[run_id], operation_id="listLearningAttempts")},
    }
    return paths, schemas
