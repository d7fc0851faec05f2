"""The learning tables (``store.py``'s learning models): plans, runs, iterations, attempts, assessments, prompts.

Store functions in the registry's style: each takes a ``Session`` first and leaves the transaction to the
caller. ``*_json`` functions give the documents the HTTP API returns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from mesh.registry import store
from mesh.registry.store import (
    ActivePromptRecord,
    CapabilityAssessmentRecord,
    LearningAttemptRecord,
    LearningIterationRecord,
    LearningPlanRecord,
    LearningRunRecord,
    PromptVersionRecord,
    utcnow,
)

FINISHED = ("proficient", "budget-spent", "cancelled", "failed", "interrupted")


# -- plans -----------------------------------------------------------------------------------------------


def add_plan(session: Session, agent: str, system: str, content: dict[str, Any], *, source: dict[str, Any],
             threshold: float, budget: dict[str, Any]) -> LearningPlanRecord:
    plan = LearningPlanRecord(agent=agent, system=system, source=source, objectives=content["objectives"],
                              tasks=content["tasks"], rubric=content["rubric"], threshold=threshold, budget=budget,
                              revision=1, created_at=utcnow(), updated_at=utcnow())
    session.add(plan)
    session.flush()
    return plan


def get_plan(session: Session, plan_id: str) -> LearningPlanRecord | None:
    return session.get(LearningPlanRecord, plan_id)


def list_plans(session: Session, agent: str | None = None, system: str | None = None) -> list[LearningPlanRecord]:
    query = select(LearningPlanRecord).order_by(LearningPlanRecord.created_at.desc())
    if agent is not None:
        query = query.where(LearningPlanRecord.agent == agent)
    if system is not None:
        query = query.where(LearningPlanRecord.system == system)
    return list(session.scalars(query))


def edit_plan(session: Session, plan: LearningPlanRecord, changes: dict[str, Any]) -> LearningPlanRecord:
    for key, value in changes.items():
        setattr(plan, key, value)
    plan.revision += 1
    plan.updated_at = utcnow()
    session.flush()
    return plan


def plan_json(plan: LearningPlanRecord) -> dict[str, Any]:
    return {"id": plan.id, "agent": plan.agent, "system": plan.system, "source": plan.source,
            "objectives": plan.objectives, "tasks": plan.tasks, "rubric": plan.rubric, "threshold": plan.threshold,
            "budget": plan.budget, "revision": plan.revision, "created_at": plan.created_at.isoformat(),
            "updated_at": plan.updated_at.isoformat()}


# -- runs, iterations, attempts --------------------------------------------------------------------------


def add_run(session: Session, plan: LearningPlanRecord, budget: dict[str, Any]) -> LearningRunRecord:
    run = LearningRunRecord(plan_id=plan.id, agent=plan.agent, system=plan.system, status="running", budget=budget,
                            spent={}, started_at=utcnow())
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: str) -> LearningRunRecord | None:
    return session.get(LearningRunRecord, run_id)


def list_runs(session: Session, plan_id: str) -> list[LearningRunRecord]:
    query = select(LearningRunRecord).where(LearningRunRecord.plan_id == plan_id)
    return list(session.scalars(query.order_by(LearningRunRecord.started_at.desc())))


def finish_run(session: Session, run_id: str, *, status: str, reason: str, spent: dict[str, Any],
               result: dict[str, Any] | None, start_version: str | None, final_version: str | None) -> None:
    run = session.get(LearningRunRecord, run_id)
    if run is None:
        return
    run.status, run.reason, run.spent, run.result = status, reason, spent, result
    run.start_version, run.final_version = start_version, final_version
    run.finished_at = utcnow()


def interrupt_unfinished(session: Session) -> int:
    """Runs a previous registry process left "running" ended with it; say so (called at start)."""
    result = session.execute(update(LearningRunRecord).where(LearningRunRecord.status == "running")
                             .values(status="interrupted", reason="the registry stopped during the run",
                                     finished_at=utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


def add_iteration(session: Session, run_id: str, metrics: dict[str, Any]) -> None:
    columns = {key: metrics[key] for key in ("number", "prompt_version", "attempted", "passed", "success_rate",
                                             "retries", "lm_calls", "tool_calls", "tokens", "seconds", "analysis",
                                             "lessons")}
    session.add(LearningIterationRecord(run_id=run_id, created_at=utcnow(), **columns))


def iterations(session: Session, run_id: str) -> list[LearningIterationRecord]:
    query = select(LearningIterationRecord).where(LearningIterationRecord.run_id == run_id)
    return list(session.scalars(query.order_by(LearningIterationRecord.number)))


def iteration_json(record: LearningIterationRecord) -> dict[str, Any]:
    return {"number": record.number, "prompt_version": record.prompt_version, "attempted": record.attempted,
            "passed": record.passed, "success_rate": record.success_rate, "retries": record.retries,
            "lm_calls": record.lm_calls, "tool_calls": record.tool_calls, "tokens": record.tokens,
            "seconds": record.seconds, "analysis": record.analysis, "lessons": record.lessons}


def run_json(session: Session, run: LearningRunRecord) -> dict[str, Any]:
    return {"id": run.id, "plan_id": run.plan_id, "agent": run.agent, "system": run.system, "status": run.status,
            "reason": run.reason, "budget": run.budget, "spent": run.spent, "result": run.result,
            "start_version": run.start_version, "final_version": run.final_version,
            "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "iterations": [iteration_json(i) for i in iterations(session, run.id)]}


def add_attempt(session: Session, run_id: str, agent: str, system: str, record: dict[str, Any]) -> str:
    columns = {key: record.get(key) for key in ("kind", "iteration", "task_id", "input", "params", "tool_calls",
                                                "output", "error", "passed", "check_detail", "prompt_version",
                                                "lm_calls", "tokens", "seconds")}
    attempt = LearningAttemptRecord(run_id=run_id, agent=agent, system=system, started_at=utcnow(), **columns)
    session.add(attempt)
    session.flush()
    return attempt.id


def attempts(session: Session, run_id: str, *, limit: int = 500) -> list[LearningAttemptRecord]:
    query = select(LearningAttemptRecord).where(LearningAttemptRecord.run_id == run_id)
    return list(session.scalars(query.order_by(LearningAttemptRecord.started_at).limit(limit)))


def attempt_json(record: LearningAttemptRecord) -> dict[str, Any]:
    return {"id": record.id, "run_id": record.run_id, "kind": record.kind, "iteration": record.iteration,
            "task_id": record.task_id, "input": record.input, "params": record.params,
            "tool_calls": record.tool_calls, "output": record.output, "error": record.error,
            "passed": record.passed, "check_detail": record.check_detail, "prompt_version": record.prompt_version,
            "lm_calls": record.lm_calls, "tokens": record.tokens, "seconds": record.seconds,
            "started_at": record.started_at.isoformat()}


# -- prompt versions ---------------------------------------------------------------------------------------


def add_version(session: Session, agent: str, system: str, version_id: str, program: str, *, lessons: list[str],
                demos: int, parent_id: str | None, plan_id: str | None, run_id: str | None,
                iteration: int | None, metrics: dict[str, Any]) -> PromptVersionRecord:
    """Keep a version; the same content twice is one version (its id is the content's hash)."""
    record = session.get(PromptVersionRecord, (agent, version_id))
    if record is not None:
        return record
    record = PromptVersionRecord(agent=agent, id=version_id, system=system, program=program, lessons=lessons,
                                 demos=demos, metrics=metrics, parent_id=parent_id, plan_id=plan_id, run_id=run_id,
                                 iteration=iteration, created_at=utcnow())
    session.add(record)
    session.flush()
    return record


def set_version_metrics(session: Session, agent: str, version_id: str, metrics: dict[str, Any]) -> None:
    record = session.get(PromptVersionRecord, (agent, version_id))
    if record is not None:
        record.metrics = {**(record.metrics or {}), **metrics}


def get_version(session: Session, agent: str, version_id: str) -> PromptVersionRecord | None:
    """A version by its id or a unique prefix of it (8 hex digits or more)."""
    record = session.get(PromptVersionRecord, (agent, version_id))
    if record is not None or len(version_id) < 8 or version_id.strip("0123456789abcdef"):
        return record
    query = select(PromptVersionRecord).where(PromptVersionRecord.agent == agent,
                                              PromptVersionRecord.id.startswith(version_id)).limit(2)
    found = list(session.scalars(query))
    return found[0] if len(found) == 1 else None


def list_versions(session: Session, agent: str, system: str | None = None) -> list[PromptVersionRecord]:
    query = select(PromptVersionRecord).where(PromptVersionRecord.agent == agent)
    if system is not None:
        query = query.where(PromptVersionRecord.system == system)
    return list(session.scalars(query.order_by(PromptVersionRecord.created_at, PromptVersionRecord.id)))


def activate(session: Session, agent: str, system: str, version_id: str, by: str) -> ActivePromptRecord:
    record = session.get(ActivePromptRecord, (agent, system))
    if record is None:
        record = ActivePromptRecord(agent=agent, system=system)
        session.add(record)
    record.version_id, record.activated_at, record.activated_by = version_id, utcnow(), by
    session.flush()
    return record


def active_versions(session: Session, agent: str) -> dict[str, str]:
    query = select(ActivePromptRecord).where(ActivePromptRecord.agent == agent)
    return {record.system: record.version_id for record in session.scalars(query)}


def active_version(session: Session, agent: str, system: str) -> PromptVersionRecord | None:
    pointer = session.get(ActivePromptRecord, (agent, system))
    return session.get(PromptVersionRecord, (agent, pointer.version_id)) if pointer else None


def version_json(record: PromptVersionRecord, *, active: bool = False, program: bool = False) -> dict[str, Any]:
    document = {"id": record.id, "agent": record.agent, "system": record.system, "active": active,
                "lessons": record.lessons, "demos": record.demos, "metrics": record.metrics,
                "parent_id": record.parent_id, "plan_id": record.plan_id, "run_id": record.run_id,
                "iteration": record.iteration, "created_at": record.created_at.isoformat()}
    if program:
        document["program"] = record.program
    return document


# -- assessments --------------------------------------------------------------------------------------------


def add_assessment(session: Session, **columns: Any) -> CapabilityAssessmentRecord:
    record = CapabilityAssessmentRecord(created_at=utcnow(), **columns)
    session.add(record)
    session.flush()
    return record


def assessments(session: Session, agent: str, system: str | None = None) -> list[CapabilityAssessmentRecord]:
    query = select(CapabilityAssessmentRecord).where(CapabilityAssessmentRecord.agent == agent)
    if system is not None:
        query = query.where(CapabilityAssessmentRecord.system == system)
    return list(session.scalars(query.order_by(CapabilityAssessmentRecord.created_at.desc())))


def assessment_json(record: CapabilityAssessmentRecord) -> dict[str, Any]:
    return {"id": record.id, "agent": record.agent, "system": record.system, "plan_id": record.plan_id,
            "prompt_version": record.prompt_version, "score": record.score, "level": record.level,
            "criteria": record.criteria, "evidence": record.evidence, "created_at": record.created_at.isoformat()}


def proficiency(session: Session, agent: str) -> dict[str, dict[str, Any]]:
    """The latest assessment per target system: ``{system: {score, level, assessed_at, assessment}}``."""
    latest: dict[str, dict[str, Any]] = {}
    for record in assessments(session, agent):
        latest.setdefault(record.system, {"score": record.score, "level": record.level,
                                          "assessed_at": record.created_at.isoformat(), "assessment": record.id})
    return latest


def proficiency_by_agent(session: Session) -> dict[str, dict[str, dict[str, Any]]]:
    """``proficiency`` of every assessed agent in one query: ``{agent: {system: {...}}}``."""
    latest: dict[str, dict[str, dict[str, Any]]] = {}
    table = CapabilityAssessmentRecord
    newest = (select(table.agent, table.system, func.max(table.created_at).label("at"))
              .group_by(table.agent, table.system).subquery())
    query = (select(table).join(newest, and_(table.agent == newest.c.agent, table.system == newest.c.system,
                                             table.created_at == newest.c.at))
             .order_by(table.created_at.desc()))
    for record in session.scalars(query):
        latest.setdefault(record.agent, {}).setdefault(record.system, {
            "score": record.score, "level": record.level, "assessed_at": record.created_at.isoformat(),
            "assessment": record.id})
    return latest


def proficiency_score(session: Session, agent: str, system: str) -> float | None:
    """The agent's latest assessed score on ``system``, None when never assessed (for ranking and policy)."""
    return store.proficiency(session, agent, system)
