"""The learning routes under ``/v1``: plans, runs (start, progress, cancel, attempts), assessments, prompts.

Reading needs any caller; making plans, running, assessing and rolling back need the agent itself or an
administrator (the local user is one). Mounted by ``mesh.registry.app`` with ``routes(registry)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mesh.learning import records
from mesh.learning.service import LearningService
from mesh.names import NAME_RULE, is_valid_name
from mesh.registry.auth import Caller
from mesh.registry.gate import allowed, is_run_id, parse_json
from mesh.registry.problems import Problem

PLAN_FIELDS = ("objectives", "tasks", "rubric", "threshold", "budget")
CHECK_KINDS = ("all", "state_contains", "state_lacks", "called", "answer_has_field", "answer_count")


def routes(registry: Any, sandbox_front: Any = None) -> list[Route]:
    service = LearningService(registry, sandbox_front)

    def handler(fn: Callable[[Request], Awaitable[Any]], status: int = 200) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> JSONResponse:
            service.bind()
            try:
                return JSONResponse(await fn(request), status_code=status)
            except Problem as problem:
                return problem.response()

        wrapped.__doc__ = fn.__doc__
        return wrapped

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        body = parse_json(raw, registry.config.max_json_depth) if raw else {}
        if not isinstance(body, dict):
            raise Problem("bad-request", "the request body must be a JSON object")
        return body

    def agent_name(request: Request) -> str:
        name = request.path_params["name"]
        if not is_valid_name(name):
            raise Problem("unknown-agent", f"no agent {name[:80]!r} is registered ({NAME_RULE})")
        return name

    def trainer(request: Request, agent: str) -> Caller:
        """The agent itself or an administrator may change what it learns."""
        caller = allowed(registry, request, "read")
        if registry.tenancy.elsewhere(caller, agent):  # another project's agent is unknown here
            raise Problem("unknown-agent", f"no agent {agent!r} is registered")
        if not (caller.is_admin or caller.agent == agent):
            raise Problem("forbidden", f"{caller.id} may not train {agent}: only the agent or an administrator may")
        return caller

    def plan_id(request: Request) -> str:
        given = request.path_params["plan_id"]
        if not is_run_id(given):
            raise Problem("unknown-plan", f"no learning plan {given[:80]!r}")
        return given

    def run_id(request: Request) -> str:
        given = request.path_params["run_id"]
        if not is_run_id(given):
            raise Problem("unknown-learning-run", f"no learning run {given[:80]!r}")
        return given

    async def create_plan(request: Request) -> Any:
        """Derive a learning plan for the agent from a sandbox API's spec: objectives, tasks, checks, rubric."""
        agent = agent_name(request)
        caller = trainer(request, agent)
        return await service.create_plan(agent, caller, await body_of(request))

    async def list_plans(request: Request) -> Any:
        """The agent's learning plans, newest first."""
        allowed(registry, request, "read")
        with registry.sessions.begin() as session:
            return {"plans": [records.plan_json(p) for p in records.list_plans(session, agent_name(request))]}

    async def plans(request: Request) -> Any:
        return await (create_plan(request) if request.method == "POST" else list_plans(request))

    async def plan(request: Request) -> Any:
        """One plan with its runs."""
        allowed(registry, request, "read")
        found = service.plan(plan_id(request))
        with registry.sessions.begin() as session:
            document = records.plan_json(found)
            document["runs"] = [{"id": r.id, "status": r.status, "started_at": r.started_at.isoformat()}
                                for r in records.list_runs(session, found.id)]
            return document

    async def edit_plan(request: Request) -> Any:
        """Edit a plan's objectives, tasks, rubric, threshold or budget (its revision goes up)."""
        found = service.plan(plan_id(request))
        trainer(request, found.agent)
        changes = checked_changes(await body_of(request))
        with registry.sessions.begin() as session:
            current = records.get_plan(session, found.id)
            assert current is not None
            return records.plan_json(records.edit_plan(session, current, changes))

    async def plan_route(request: Request) -> Any:
        return await (edit_plan(request) if request.method == "PATCH" else plan(request))

    async def run(request: Request) -> Any:
        """Start the learning loop on a plan in the background; follow it at /v1/learning-runs/{id}."""
        allowed(registry, request, "read")
        service.require_model()
        found = service.plan(plan_id(request))
        caller = trainer(request, found.agent)
        service.require_agent(found.agent)
        return service.start_run(found.id, caller, await body_of(request))

    async def assess(request: Request) -> Any:
        """Score the agent's active prompt version on the plan's held-out tasks, by its rubric."""
        allowed(registry, request, "read")
        service.require_model()
        found = service.plan(plan_id(request))
        caller = trainer(request, found.agent)
        return await service.assess(found.id, caller, await body_of(request))

    async def learning_run(request: Request) -> Any:
        """A learning run: status, budget and spending, per-iteration metrics, progress while it runs."""
        allowed(registry, request, "read")
        return service.run_json(run_id(request))

    async def cancel(request: Request) -> Any:
        """Cancel a running learning run; it stops before its next model or tool call."""
        document = service.run_json(run_id(request))
        trainer(request, document["agent"])
        return {"id": document["id"], "cancelling": service.cancel(document["id"])}

    async def attempts(request: Request) -> Any:
        """Every attempt of a learning run (or assessment): input, tool calls with run ids, output, verdict."""
        allowed(registry, request, "read")
        given = run_id(request)
        with registry.sessions.begin() as session:
            return {"attempts": [records.attempt_json(a) for a in records.attempts(session, given)]}

    async def agent_assessments(request: Request) -> Any:
        """The agent's capability assessments, newest first, and its proficiency per system."""
        allowed(registry, request, "read")
        agent = agent_name(request)
        with registry.sessions.begin() as session:
            return {"assessments": [records.assessment_json(a) for a in records.assessments(session, agent)],
                    "proficiency": records.proficiency(session, agent)}

    async def prompts(request: Request) -> Any:
        """The agent's prompt versions, oldest first, with the active one per system marked."""
        allowed(registry, request, "read")
        agent = agent_name(request)
        system = request.query_params.get("system")
        with registry.sessions.begin() as session:
            active = records.active_versions(session, agent)
            return {"versions": [records.version_json(v, active=active.get(v.system) == v.id)
                                 for v in records.list_versions(session, agent, system)], "active": active}

    async def prompt(request: Request) -> Any:
        """One prompt version with its program (``program.save`` JSON); ``active`` with ?system= the served one."""
        allowed(registry, request, "read")
        agent = agent_name(request)
        version = request.path_params["version"]
        with registry.sessions.begin() as session:
            if version == "active":
                system = request.query_params.get("system") or ""
                record = records.active_version(session, agent, system)
                if record is None:
                    raise Problem("unknown-prompt-version", f"{agent} has no active prompt version for {system!r}")
            else:
                record = records.get_version(session, agent, version.lower())
                if record is None:
                    raise Problem("unknown-prompt-version", f"{agent} has no prompt version {version[:80]!r}")
            active = records.active_versions(session, agent).get(record.system) == record.id
            return records.version_json(record, active=active, program=True)

    async def activate(request: Request) -> Any:
        """Make a version the one the agent serves for its system (a rollback, when it is an earlier one)."""
        agent = agent_name(request)
        caller = trainer(request, agent)
        with registry.sessions.begin() as session:
            record = records.get_version(session, agent, request.path_params["version"].lower())
            if record is None:
                raise Problem("unknown-prompt-version", f"{agent} has no prompt version "
                                                        f"{request.path_params['version'][:80]!r}")
            previous = records.active_versions(session, agent).get(record.system)
            records.activate(session, agent, record.system, record.id, caller.id)
            return {"agent": agent, "system": record.system, "active": record.id, "previous": previous}

    async def language_model(request: Request) -> Any:
        """Whether a language model is configured for the LM features (model and server; never the key)."""
        allowed(registry, request, "read")
        settings = registry.config.lm
        return {"configured": settings.configured, "model": settings.describe() if settings.configured else None}

    return [
        Route("/lm", handler(language_model), methods=["GET"]),
        Route("/agents/{name}/learning-plans", handler(plans), methods=["GET", "POST"]),
        Route("/agents/{name}/assessments", handler(agent_assessments), methods=["GET"]),
        Route("/agents/{name}/prompts", handler(prompts), methods=["GET"]),
        Route("/agents/{name}/prompts/{version}", handler(prompt), methods=["GET"]),
        Route("/agents/{name}/prompts/{version}/activate", handler(activate), methods=["POST"]),
        Route("/learning-plans/{plan_id}", handler(plan_route), methods=["GET", "PATCH"]),
        Route("/learning-plans/{plan_id}/run", handler(run, 202), methods=["POST"]),
        Route("/learning-plans/{plan_id}/assess", handler(assess), methods=["POST"]),
        Route("/learning-runs/{run_id}", handler(learning_run), methods=["GET"]),
        Route("/learning-runs/{run_id}/cancel", handler(cancel), methods=["POST"]),
        Route("/learning-runs/{run_id}/attempts", handler(attempts), methods=["GET"]),
    ]


def checked_changes(body: dict[str, Any]) -> dict[str, Any]:
    """A plan edit, checked enough that the loop can run it: known fields, tasks with an id, text and check."""
    unknown = sorted(set(body) - set(PLAN_FIELDS))
    if unknown:
        raise Problem("bad-request", f"a plan has no field {unknown[0]!r} to edit (editable: {', '.join(PLAN_FIELDS)})")
    if "objectives" in body and not (isinstance(body["objectives"], list)
                                     and all(isinstance(x, str) for x in body["objectives"])):
        raise Problem("bad-request", "objectives must be a list of strings")
    if "tasks" in body:
        tasks = body["tasks"]
        if not isinstance(tasks, list):
            raise Problem("bad-request", "tasks must be a list")
        seen = set()
        for index, task in enumerate(tasks):
            if not (isinstance(task, dict) and isinstance(task.get("id"), str) and isinstance(task.get("text"), str)
                    and isinstance(task.get("check"), dict) and task["check"].get("kind") in CHECK_KINDS):
                raise Problem("bad-request", f"tasks[{index}] needs id and text (strings) and a check whose kind is "
                                             f"one of {', '.join(CHECK_KINDS)}")
            if task["id"] in seen:
                raise Problem("bad-request", f"two tasks have the id {task['id']!r}")
            seen.add(task["id"])
            task.setdefault("level", 1)
            task.setdefault("held_out", False)
            task.setdefault("params", {})
            task.setdefault("skill", "create")
    rubric = body.get("rubric", [])
    if not (isinstance(rubric, list) and all(isinstance(c, dict) and isinstance(c.get("tasks"), list) for c in rubric)):
        raise Problem("bad-request", "rubric must be a list of criteria, each with a list of task ids")
    if "threshold" in body:
        value = body["threshold"]
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1:
            raise Problem("bad-request", "threshold must be a number in (0, 1]")
        body["threshold"] = float(value)
    if "budget" in body:
        from mesh.learning.budget import Budget, BudgetProblem

        try:
            body["budget"] = Budget.from_json(body["budget"]).to_json()
        except BudgetProblem as exc:
            raise Problem("bad-request", str(exc)) from None
    return body
