"""Learning inside the registry: plans made, runs started in the background, progress, cancel, assessments.

The learner acts as itself: every call its attempts make is carried by ``proxy.invoke`` as ``agent:NAME``
with the scopes ``[grants]`` gives that agent (narrowed to the requester's, unless the requester is an
administrator), so each one is authenticated, policy-checked, recorded with provenance and counted in
reputation like any other call. A run practises in a sandbox with a lifecycle (``mesh/sandbox``): the
one the run or the plan names, else a new ``emulated`` one for the plan's system; its tools are called
in process through the sandbox front's own call path (``SandboxFront.call_as``: the same ``proxy.carry``
and ``sandbox_runs`` row as its MCP endpoint), labelled with the attempt. The loop runs in a daemon thread
(a stopping registry does not wait for it; the next start marks the run interrupted); its calls come back
to the event loop by its token.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from mesh.learning import records
from mesh.learning.assessment import assess
from mesh.learning.budget import Budget, BudgetProblem
from mesh.learning.curriculum import derive_plan
from mesh.learning.loop import OPTIMIZERS, LearningLoop, LoopSettings
from mesh.learning.program import state_of
from mesh.learning.target import SandboxAgentTarget, SandboxTarget, Target
from mesh.lm.settings import NoModelConfigured
from mesh.registry import proxy, tenancy
from mesh.registry.auth import Caller
from mesh.registry.problems import Problem

DEFAULT_SANDBOX = "sandbox"


@dataclass
class Job:
    """A learning run in progress: how to cancel it and what it reported last."""

    run_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: dict[str, Any] = field(default_factory=dict)
    thread: threading.Thread | None = None


class DatabaseRecorder:
    """The loop's ``Recorder`` over the registry's database (one short transaction per record). The tokens
    each attempt spent are charged to the learner's budgets (``spend_tokens``) as it goes; ``charge_rest``
    charges what the optimizer spent between attempts once the run ends."""

    def __init__(self, sessions: Any, *, agent: str, system: str, run_id: str, plan_id: str | None,
                 spend_tokens: Callable[[int], Any] | None = None):
        self.sessions, self.agent, self.system, self.run_id, self.plan_id = sessions, agent, system, run_id, plan_id
        self.spend_tokens = spend_tokens
        self.tokens_charged = 0

    def attempt(self, record: dict[str, Any]) -> str:
        with self.sessions.begin() as session:
            attempt_id = records.add_attempt(session, self.run_id, self.agent, self.system, record)
        self.charge(record.get("tokens") or 0)
        return attempt_id

    def charge(self, tokens: int) -> None:
        if self.spend_tokens is not None and tokens > 0:
            self.spend_tokens(tokens)
            self.tokens_charged += tokens

    def charge_rest(self, total_tokens: int) -> None:
        self.charge(total_tokens - self.tokens_charged)

    def iteration(self, metrics: dict[str, Any]) -> None:
        with self.sessions.begin() as session:
            records.add_iteration(session, self.run_id, metrics)

    def version(self, version_id: str, program: str, *, lessons: list[str], demos: int, parent_id: str | None,
                iteration: int | None, metrics: dict[str, Any]) -> None:
        with self.sessions.begin() as session:
            records.add_version(session, self.agent, self.system, version_id, program, lessons=lessons, demos=demos,
                                parent_id=parent_id, plan_id=self.plan_id, run_id=self.run_id,
                                iteration=iteration, metrics=metrics)

    def measured(self, version_id: str, metrics: dict[str, Any]) -> None:
        with self.sessions.begin() as session:
            records.set_version_metrics(session, self.agent, version_id, metrics)


class LearningService:
    """What the learning routes do, on one registry."""

    def __init__(self, registry: Any, sandbox_front: Any = None):
        self.registry = registry
        self.sandbox_front = sandbox_front  # mesh.sandbox.front.SandboxFront: where learning runs practise
        self.jobs: dict[str, Job] = {}
        self.token: Any = None  # the event loop's, taken by the first request (``bind``)
        with tenancy.as_registry(), registry.sessions.begin() as session:  # every project's runs, at start
            records.interrupt_unfinished(session)

    def bind(self) -> None:
        """Remember the event loop the registry serves on, so the loop's threads can call back into it."""
        if self.token is None:
            self.token = anyio.lowlevel.current_token()

    # -- who learns, against what ---------------------------------------------------------------------

    def learner(self, agent: str, requester: Caller) -> Caller:
        """``agent:NAME`` with its granted scopes, never more than the requester holds."""
        granted = self.registry.caller_scopes(agent)
        scopes = granted if requester.is_admin else [s for s in granted if s in requester.scopes]
        return Caller(f"agent:{agent}", "agent", scopes)

    def target(self, learner: Caller, source: dict[str, Any]) -> SandboxAgentTarget:
        """The system's tools through the registry, callable from the loop's worker thread."""
        registry, token = self.registry, self.token

        def invoke(agent: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
            try:
                outcome = anyio.from_thread.run(partial(proxy.invoke, registry, learner, agent, tool, arguments),
                                                token=token)
            except Problem as problem:
                raise RuntimeError(f"{problem} (run {problem.extra.get('run_id', '-')})") from None
            return outcome.to_json()

        return SandboxAgentTarget(invoke, source["api"], source.get("agent", DEFAULT_SANDBOX))

    def practice_sandbox(self, plan: Any, learner: Caller, chosen: Any) -> Any:
        """The sandbox a run practises in: ``chosen`` (an id, or a create body's fields: ``mode``,
        ``services``, ``ttl_seconds``, ``secret_ref``...), else the one the plan's source names, else a new
        ``emulated`` sandbox of the plan's system. Connected mode passes the sandbox's own approval rules."""
        if self.sandbox_front is None:
            raise Problem("bad-request", "this registry serves no sandboxes to practise in")
        sandboxes = self.sandbox_front.sandboxes
        named = chosen if isinstance(chosen, str) else (plan.source or {}).get("sandbox")
        if isinstance(named, str) and not isinstance(chosen, dict):
            record = sandboxes.active(plan.agent, named)
            if plan.system not in record.required_services:
                raise Problem("bad-request", f"sandbox {named} has no service {plan.system!r} "
                                             f"(it has: {', '.join(record.required_services)})")
            return record
        if chosen is not None and not isinstance(chosen, dict):
            raise Problem("bad-request", "sandbox must be a sandbox id or the fields of a new sandbox")
        body = {"mode": "emulated", "description": f"learning plan {plan.id}", **(chosen or {}),
                "required_services": [plan.system]}
        return sandboxes.create(learner, plan.agent, body)

    def sandbox_target(self, learner: Caller, record: Any, system: str) -> SandboxTarget:
        """The sandbox's service as the loop's target, its calls carried back to the registry's event loop."""
        front, token = self.sandbox_front, self.token

        def call(tool: str, arguments: dict[str, Any], attempt: str | None) -> tuple[dict[str, Any], int | None]:
            return anyio.from_thread.run(partial(front.call_as, learner, record.agent, record.id, tool, arguments,
                                                 attempt=attempt), token=token)

        return SandboxTarget(call, front.sandboxes.catalog.api(system), record.id,
                             reset=partial(front.sandboxes.reset, record.agent, record.id))

    def require_model(self) -> Any:
        try:
            return self.registry.config.lm.require()
        except NoModelConfigured as exc:
            raise Problem("lm-not-configured", str(exc)) from None

    def require_agent(self, agent: str) -> None:
        if agent not in self.registry.endpoints:
            raise Problem("unknown-agent", f"no agent {agent!r} is registered")

    # -- plans -------------------------------------------------------------------------------------------

    async def create_plan(self, agent: str, requester: Caller, body: dict[str, Any]) -> dict[str, Any]:
        self.require_agent(agent)
        system = body.get("system")
        sandbox = body.get("sandbox_agent", DEFAULT_SANDBOX)
        if not isinstance(system, str) or not system or not isinstance(sandbox, str):
            raise Problem("bad-request", "a learning plan needs system: the name of a sandbox API (e.g. petstore)")
        self.require_agent(sandbox)
        threshold = body.get("threshold", 1.0)
        if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 < threshold <= 1:
            raise Problem("bad-request", "threshold must be a number in (0, 1]")
        try:
            budget = Budget.from_json(body.get("budget")).to_json()
        except BudgetProblem as exc:
            raise Problem("bad-request", str(exc)) from None
        source = {"agent": sandbox, "api": system,
                  **{key: body[key] for key in ("sandbox", "reset_between_iterations") if key in body}}
        if not isinstance(source.get("sandbox", ""), str) or not isinstance(
                source.get("reset_between_iterations", False), bool):
            raise Problem("bad-request", "sandbox must be a sandbox id and reset_between_iterations true or false")
        target = self.target(self.learner(agent, requester), source)
        try:
            tools = await anyio.to_thread.run_sync(target.tools)
        except Exception as exc:
            raise Problem("bad-request", f"cannot read the operations of {sandbox}/{system}: {exc}") from None
        content = derive_plan(system, tools)
        if not content["tasks"]:
            raise Problem("bad-request", f"{system} has no operation that creates something with a name; "
                                         "write the plan's tasks by hand (PATCH)")
        with self.registry.sessions.begin() as session:
            plan = records.add_plan(session, agent, system, content, source=source, threshold=float(threshold),
                                    budget=budget)
            return records.plan_json(plan)

    def plan(self, plan_id: str) -> Any:
        with self.registry.sessions.begin() as session:
            plan = records.get_plan(session, plan_id)
            if plan is None:
                raise Problem("unknown-plan", f"no learning plan {plan_id[:80]!r}")
            return plan

    # -- runs ------------------------------------------------------------------------------------------------

    def start_run(self, plan_id: str, requester: Caller, body: dict[str, Any]) -> dict[str, Any]:
        settings = self.require_model()
        plan = self.plan(plan_id)
        if any(job for job in self.jobs.values() if job.progress.get("plan_id") == plan_id):
            raise Problem("learning-busy", f"plan {plan_id} is already being learned; cancel that run first")
        try:
            budget = Budget.from_json(plan.budget).merged(body.get("budget"))
            loop_settings = LoopSettings(threshold=plan.threshold, optimizer=body.get("optimizer", "bootstrap"),
                                         lessons=bool(body.get("lessons", True)),
                                         reset_between_iterations=bool(body.get(
                                             "reset_between_iterations",
                                             (plan.source or {}).get("reset_between_iterations", False))))
        except (BudgetProblem, TypeError) as exc:
            raise Problem("bad-request", str(exc)) from None
        if loop_settings.optimizer not in OPTIMIZERS:
            raise Problem("bad-request", f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        learner = self.learner(plan.agent, requester)
        sandbox = self.practice_sandbox(plan, learner, body.get("sandbox"))
        with self.registry.sessions.begin() as session:
            run = records.add_run(session, plan, budget.to_json())
            document = records.run_json(session, run)
        job = Job(run.id, progress={"plan_id": plan_id, "phase": "starting", "sandbox": sandbox.id})
        self.jobs[run.id] = job
        target = self.sandbox_target(learner, sandbox, plan.system)
        job.thread = threading.Thread(target=self._run, name=f"learning-{run.id[:8]}", daemon=True,
                                      args=(job, plan, target, settings, budget, loop_settings,
                                            bool(body.get("assess", False))))
        job.thread.start()
        return {**document, "sandbox": sandbox.id, "progress": job.progress}

    def _run(self, job: Job, plan: Any, target: SandboxTarget, settings: Any, budget: Budget,
             loop_settings: LoopSettings, then_assess: bool) -> None:
        # A thread of its own starts in no tenant's context: the run acts in its agent's project.
        with tenancy.acting_as(self.registry.tenancy.of(plan.agent)):
            self._learn(job, plan, target, settings, budget, loop_settings, then_assess)

    def _learn(self, job: Job, plan: Any, target: SandboxTarget, settings: Any, budget: Budget,
               loop_settings: LoopSettings, then_assess: bool) -> None:
        from mesh.lm.model import build_lm

        sessions = self.registry.sessions
        try:
            lm = build_lm(settings)
            with sessions.begin() as session:
                active = records.active_version(session, plan.agent, plan.system)
                start_state = state_of(active.program) if active else None
            recorder = DatabaseRecorder(sessions, agent=plan.agent, system=plan.system, run_id=job.run_id,
                                        plan_id=plan.id, spend_tokens=self.token_spender(plan.agent))

            def report(event: dict[str, Any]) -> None:
                job.progress = {"plan_id": plan.id, "sandbox": target.sandbox_id, **event}

            loop = LearningLoop(records.plan_json(plan), target, lm, recorder,
                                budget=budget, settings=loop_settings, start_state=start_state, progress=report,
                                cancel=job.cancel, run_id=job.run_id)
            result = loop.run()
            recorder.charge_rest(result.spent.tokens)
            with sessions.begin() as session:
                if result.best_version:
                    records.activate(session, plan.agent, plan.system, result.best_version, f"run:{job.run_id}")
                records.finish_run(session, job.run_id, status=result.status, reason=result.reason,
                                   spent=result.spent.to_json(),
                                   result={"to_proficiency": result.to_proficiency,
                                           "best_version": result.best_version, "sandbox": target.sandbox_id},
                                   start_version=result.start_version, final_version=result.best_version)
            if then_assess and result.status != "cancelled":
                self._assess(plan, target, settings, job.cancel, report)
        except Exception as exc:
            with sessions.begin() as session:
                records.finish_run(session, job.run_id, status="failed", reason=f"{type(exc).__name__}: {exc}",
                                   spent={}, result=None, start_version=None, final_version=None)
        finally:
            self.jobs.pop(job.run_id, None)

    def token_spender(self, agent: str) -> Callable[[int], Any]:
        """Charge LM tokens to ``agent``'s budgets and those of the organisation its project belongs to."""
        return partial(self.registry.budgets.spend_tokens, self.registry.tenancy.of(agent).org, agent)

    def cancel(self, run_id: str) -> bool:
        job = self.jobs.get(run_id)
        if job is None:
            return False
        job.cancel.set()
        return True

    def run_json(self, run_id: str) -> dict[str, Any]:
        with self.registry.sessions.begin() as session:
            run = records.get_run(session, run_id)
            if run is None:
                raise Problem("unknown-learning-run", f"no learning run {run_id[:80]!r}")
            document = records.run_json(session, run)
        job = self.jobs.get(run_id)
        document["progress"] = dict(job.progress) if job else None
        return document

    # -- assessments ---------------------------------------------------------------------------------------

    async def assess(self, plan_id: str, requester: Caller, body: dict[str, Any]) -> dict[str, Any]:
        settings = self.require_model()
        plan = self.plan(plan_id)
        trials = body.get("trials", 1)
        if not isinstance(trials, int) or isinstance(trials, bool) or not 1 <= trials <= 10:
            raise Problem("bad-request", "trials must be an integer from 1 to 10")
        learner = self.learner(plan.agent, requester)
        sandbox = await anyio.to_thread.run_sync(self.practice_sandbox, plan, learner, body.get("sandbox"))
        return await anyio.to_thread.run_sync(self._assess, plan, self.sandbox_target(learner, sandbox, plan.system),
                                              settings, threading.Event(), lambda event: None, trials)

    def _assess(self, plan: Any, target: Target, settings: Any, cancel: threading.Event, report: Any,
                trials: int = 1) -> dict[str, Any]:
        from mesh.lm.model import build_lm

        sessions = self.registry.sessions
        assessment_id = str(uuid.uuid4())
        with sessions.begin() as session:
            active = records.active_version(session, plan.agent, plan.system)
            start_state = state_of(active.program) if active else None
        recorder = DatabaseRecorder(sessions, agent=plan.agent, system=plan.system, run_id=assessment_id,
                                    plan_id=plan.id, spend_tokens=self.token_spender(plan.agent))
        loop = LearningLoop(records.plan_json(plan), target, build_lm(settings), recorder,
                            start_state=start_state, progress=report, cancel=cancel, run_id=assessment_id)
        scored = assess(loop, trials=trials)  # every model call is in an attempt: the recorder charged them
        with sessions.begin() as session:
            record = records.add_assessment(session, id=assessment_id, agent=plan.agent, system=plan.system,
                                            plan_id=plan.id, prompt_version=scored["prompt_version"],
                                            score=scored["score"], level=scored["level"],
                                            criteria=scored["criteria"], evidence=scored["evidence"])
            document = records.assessment_json(record)
        self.registry.proficiencies.setdefault(plan.agent, {})[plan.system] = scored["score"]  # discovery, policy
        return document
