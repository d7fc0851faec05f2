"""The learning loop: attempt every training task, analyse the failures, refine the program, try again.

One iteration attempts each training task of the plan with the current program (a DSPy ReAct agent over
the target's tools) and checks each attempt against the system's state. If the success rate reaches the
plan's threshold the learner is proficient and the loop ends. Otherwise the failures are analysed
(``analysis.py``) into lessons for the instructions, a DSPy optimizer turns what happened into prompt text
(``BootstrapFewShot``: successful attempts become demonstrations; ``GEPA``, when the budget allows: the
model rewrites the instructions from the attempts and their analysis), and the refined program becomes a
new prompt version, used by the next iteration. The budget (iterations, calls, tokens) is checked before
every attempt and inside every tool call; cancelling works the same way. Every attempt goes to the ``Recorder``.

It is synchronous (DSPy's natural mode) and made to run in a worker thread: the registry runs it there,
with the target's calls carried back to the registry's event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh.learning.analysis import Finding, analyse_attempt, lessons_from
from mesh.learning.budget import Budget, Spent
from mesh.learning.checks import Verdict, clean_up, evaluate
from mesh.learning.curriculum import instantiate
from mesh.learning.program import (
    Stopped,
    Toolbox,
    build_program,
    demos_count,
    lessons_of,
    saved,
    state_of,
    with_lessons,
)
from mesh.learning.target import Target
from mesh.lm.model import load_dspy, usage_since

OPTIMIZERS = ("bootstrap", "gepa", "none")
GEPA_CALLS_PER_TASK = 4  # metric calls (attempts) GEPA may spend per training task and iteration


@dataclass(frozen=True)
class LoopSettings:
    threshold: float = 1.0  # success rate over the training tasks that counts as proficient
    attempts_per_task: int = 1
    optimizer: str = "bootstrap"  # "bootstrap" (BootstrapFewShot over successful attempts), "gepa", or "none"
    lessons: bool = True  # turn the error analysis into instructions
    max_demos: int = 2
    reset_between_iterations: bool = False  # start every iteration from the sandbox's seed data (target.reset)


class Recorder(Protocol):
    """Where the loop keeps what it does (the registry's database, or memory in tests and benches)."""

    def attempt(self, record: dict[str, Any]) -> str: ...

    def iteration(self, metrics: dict[str, Any]) -> None: ...

    def version(self, version_id: str, program: str, *, lessons: list[str], demos: int, parent_id: str | None,
                iteration: int | None, metrics: dict[str, Any]) -> None: ...

    def measured(self, version_id: str, metrics: dict[str, Any]) -> None: ...


class MemoryRecorder:
    """Keeps everything in lists: for tests, benches and dry runs."""

    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []
        self.iterations: list[dict[str, Any]] = []
        self.versions: dict[str, dict[str, Any]] = {}

    def attempt(self, record: dict[str, Any]) -> str:
        self.attempts.append(record)
        return f"attempt-{len(self.attempts)}"

    def iteration(self, metrics: dict[str, Any]) -> None:
        self.iterations.append(metrics)

    def version(self, version_id: str, program: str, **details: Any) -> None:
        self.versions.setdefault(version_id, {"program": program, **details})

    def measured(self, version_id: str, metrics: dict[str, Any]) -> None:
        self.versions[version_id]["metrics"] = metrics


@dataclass
class LoopResult:
    status: str  # "proficient", "budget-spent", "cancelled", "failed"
    reason: str
    spent: Spent
    iterations: list[dict[str, Any]] = field(default_factory=list)
    start_version: str | None = None
    last_version: str | None = None
    best_version: str | None = None  # the measured version with the highest success rate
    to_proficiency: dict[str, Any] | None = None


class LearningLoop:
    """One run of the loop over a plan's training tasks; ``run()`` returns how it ended."""

    def __init__(self, plan: dict[str, Any], target: Target, lm: Any, recorder: Recorder, *,
                 budget: Budget | None = None, settings: LoopSettings | None = None,
                 start_state: dict[str, Any] | None = None,
                 progress: Callable[[dict[str, Any]], None] | None = None,
                 cancel: threading.Event | None = None, run_id: str | None = None):
        self.plan = plan
        self.target = target
        self.lm = lm
        self.recorder = recorder
        self.budget = budget or Budget()
        self.settings = settings or LoopSettings()
        if self.settings.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        self.start_state = start_state
        self.progress = progress or (lambda event: None)
        self.cancel = cancel or threading.Event()
        self.run_id = run_id
        self.spent = Spent()
        self.toolbox = Toolbox(target, self._stop_reason)
        self._history_mark = len(lm.history)
        self._started = time.perf_counter()
        self.version_id: str | None = None
        self._passed_tasks: list[dict[str, Any]] = []  # of the current iteration: what the optimizer learns from

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def _stop_reason(self) -> str | None:
        if self.cancel.is_set():
            return "cancelled"
        self._account()
        return self.spent.over(self.budget)

    def _account(self) -> None:
        usage = usage_since(self.lm, self._history_mark)
        self.spent.lm_calls, self.spent.tokens = usage.calls, usage.tokens
        self.spent.seconds = time.perf_counter() - self._started

    def record_version(self, program: Any, parent: str | None, iteration: int | None) -> str:
        """Save ``program`` as a version (its id the hash of its saved JSON) and return the id."""
        version_id, text = saved(program)
        self.recorder.version(version_id, text, lessons=lessons_of(program), demos=demos_count(program),
                              parent_id=parent, iteration=iteration, metrics={})
        return version_id

    # -- attempts ------------------------------------------------------------------------------------------

    def attempt(self, program: Any, task: dict[str, Any], *, kind: str, iteration: int) -> tuple[bool, dict[str, Any]]:
        """Run ``program`` on one instance of ``task``, check it, record it; ``Stopped`` ends the loop."""
        dspy = load_dspy()
        text, values = instantiate(task)
        self.target.label = f"{(self.run_id or 'local')[:8]}/{kind}-{iteration}/{task['id']}"
        self.toolbox.take_calls()
        mark, started = len(self.lm.history), time.perf_counter()
        answer, error, stopped = None, None, None
        try:
            with dspy.context(lm=self.lm):
                answer = str(program(task=text).answer)
        except Stopped as exc:
            stopped = exc
            error = f"stopped: {exc}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
        return self._finish(task, text, values, answer, error, kind=kind, iteration=iteration, mark=mark,
                            started=started, stopped=stopped)

    def _finish(self, task: dict[str, Any], text: str, values: dict[str, str], answer: str | None,
                error: str | None, *, kind: str, iteration: int, mark: int, started: float,
                stopped: BaseException | None = None) -> tuple[bool, dict[str, Any]]:
        calls = self.toolbox.take_calls()
        verdict = evaluate(task["check"], values, calls, answer or "", self.target) if error is None else \
            Verdict(False, error)
        cleaned = clean_up(task.get("cleanup"), calls, self.target)
        usage = usage_since(self.lm, mark)
        self.spent.tool_calls += len(calls) + len(verdict.observed) + len(cleaned)
        record = {
            "kind": kind, "iteration": iteration, "task_id": task["id"], "input": text, "params": values,
            "tool_calls": [c.to_json() for c in calls + verdict.observed + cleaned], "output": answer, "error": error,
            "passed": verdict.passed, "check_detail": verdict.detail, "prompt_version": self.version_id,
            "lm_calls": usage.calls, "tokens": usage.tokens, "seconds": round(time.perf_counter() - started, 3),
        }
        record["id"] = self.recorder.attempt(record)
        record["_calls"] = calls
        if stopped is not None:
            raise stopped
        return verdict.passed, record

    # -- the loop ------------------------------------------------------------------------------------------

    def training_tasks(self) -> list[dict[str, Any]]:
        return [t for t in self.plan.get("tasks", []) if not t.get("held_out")]

    def run(self) -> LoopResult:
        tasks = self.training_tasks()
        tools = {spec.name: spec for spec in self.target.tools()}
        program = build_program(self.toolbox, self.target.system, self.start_state)
        self.version_id = start = self.record_version(program, None, None)
        result = LoopResult("budget-spent", "", self.spent, start_version=start)
        measured: dict[str, float] = {}
        failed_before: set[str] = set()
        try:
            for number in range(1, self.budget.iterations + 1):
                if not tasks:
                    result.status, result.reason = "failed", "the plan has no training tasks"
                    break
                if number > 1 and self.settings.reset_between_iterations:
                    self.target.reset()  # a sandbox keeps its runs through a reset
                metrics, failures = self._iteration(number, program, tasks, failed_before)
                result.iterations.append(metrics)
                measured[self.version_id] = metrics["success_rate"]
                self.recorder.measured(self.version_id, {"success_rate": metrics["success_rate"],
                                                         "iteration": number, "run_id": self.run_id})
                if metrics["success_rate"] >= self.settings.threshold:
                    result.status = "proficient"
                    result.reason = f"success rate {metrics['success_rate']:.2f} reached {self.settings.threshold:.2f}"
                    result.to_proficiency = {"iterations": number, "seconds": round(self.spent.seconds, 3),
                                             "calls": self.spent.calls, "tokens": self.spent.tokens}
                    self.recorder.iteration(metrics)
                    break
                if number == self.budget.iterations:
                    result.reason = f"iteration budget spent ({number} of {self.budget.iterations})"
                    self.recorder.iteration(metrics)
                    break
                program = self._refine(program, failures, metrics, tools, number)
                self.recorder.iteration(metrics)
        except Stopped as stop:
            reason = str(stop)
            result.status = "cancelled" if reason == "cancelled" else "budget-spent"
            result.reason = reason
        self._account()
        result.last_version = self.version_id
        if measured:
            best = max(measured.values())
            result.best_version = [v for v, rate in measured.items() if rate == best][-1]
        return result

    def _iteration(self, number: int, program: Any, tasks: list[dict[str, Any]],
                   failed_before: set[str]) -> tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]]:
        self.spent.iterations = number
        before = self.spent.to_json()
        started = time.perf_counter()
        passed = attempted = retries = 0
        failures: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._passed_tasks = []
        total = len(tasks) * self.settings.attempts_per_task
        for task in tasks:
            for _ in range(self.settings.attempts_per_task):
                reason = self._stop_reason()
                if reason:
                    raise Stopped(reason)
                self.progress({"phase": "attempt", "iteration": number, "done": attempted, "of": total,
                               "task": task["id"], "success_so_far": passed})
                ok, record = self.attempt(program, task, kind="train", iteration=number)
                attempted += 1
                retries += task["id"] in failed_before
                if ok:
                    passed += 1
                    self._passed_tasks.append(task)
                else:
                    failed_before.add(task["id"])
                    failures.append((task, record))
        self._account()
        after = self.spent.to_json()
        metrics = {
            "number": number, "prompt_version": self.version_id, "attempted": attempted, "passed": passed,
            "success_rate": round(passed / attempted, 4) if attempted else 0.0, "retries": retries,
            "lm_calls": after["lm_calls"] - before["lm_calls"],
            "tool_calls": after["tool_calls"] - before["tool_calls"],
            "tokens": after["tokens"] - before["tokens"], "seconds": round(time.perf_counter() - started, 3),
            "analysis": [], "lessons": [],
        }
        self.progress({"phase": "iteration", "iteration": number, "done": attempted, "of": total,
                       "success_rate": metrics["success_rate"]})
        return metrics, failures

    def _refine(self, program: Any, failures: list[tuple[dict[str, Any], dict[str, Any]]], metrics: dict[str, Any],
                tools: dict[str, Any], number: int) -> Any:
        """Error analysis into lessons, successful attempts into demos: the next prompt version."""
        findings: list[Finding] = [
            analyse_attempt(task, record["_calls"], record["check_detail"] or "", record["error"], tools)
            for task, record in failures]
        metrics["analysis"] = [f.to_json() for f in findings]
        lessons = lessons_of(program)
        if self.settings.lessons:
            lessons = lessons_from(findings, lessons)
        metrics["lessons"] = lessons
        parent = self.version_id
        _, text = saved(program)
        refined = with_lessons(build_program(self.toolbox, self.target.system, state_of(text)), lessons)
        if self.settings.optimizer == "bootstrap" and self._passed_tasks:
            self.progress({"phase": "optimize", "iteration": number})
            refined = self._bootstrap(refined, number)
        elif self.settings.optimizer == "gepa" and self._gepa_affordable():
            self.progress({"phase": "optimize", "iteration": number})
            refined = self._gepa(refined, number, tools)
        self.version_id = self.record_version(refined, parent, number)
        return refined

    def _bootstrap(self, program: Any, number: int) -> Any:
        """``BootstrapFewShot`` over the tasks that passed: their successful traces become demonstrations."""
        dspy = load_dspy()
        chosen: dict[str, dict[str, Any]] = {}
        for task in self._passed_tasks:
            chosen.setdefault(task["id"], task)
        ordered = sorted(chosen.values(), key=lambda t: -t["level"])
        examples = []
        for task in ordered:
            text, values = instantiate(task)
            examples.append(dspy.Example(task=text, task_id=task["id"], slots=values).with_inputs("task"))
        by_id = {t["id"]: t for t in ordered}
        marks: dict[str, Any] = {"mark": len(self.lm.history), "started": time.perf_counter()}

        def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
            passed, _ = self._finish(by_id[example.task_id], example.task, dict(example.slots),
                                     str(getattr(prediction, "answer", "")), None, kind="bootstrap",
                                     iteration=number, mark=marks["mark"], started=marks["started"])
            marks.update(mark=len(self.lm.history), started=time.perf_counter())
            return passed

        self.toolbox.take_calls()
        optimizer = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=self.settings.max_demos,
                                          max_labeled_demos=0, max_rounds=1, max_errors=len(examples) + 1)
        with dspy.context(lm=self.lm):
            return optimizer.compile(program, trainset=examples)

    def _gepa_affordable(self) -> bool:
        """GEPA evaluates many attempts: only when the budget has room for them (else lessons alone)."""
        self._account()
        calls_per_attempt = max(1, self.spent.calls // max(1, self.spent.iterations * len(self.training_tasks())))
        needed = GEPA_CALLS_PER_TASK * len(self.training_tasks()) * calls_per_attempt
        return self.spent.calls + needed < self.budget.calls

    def _gepa(self, program: Any, number: int, tools: dict[str, Any]) -> Any:
        """``dspy.GEPA``: an LM reflects on attempts and their error analysis (the metric's feedback) and
        rewrites the instructions; the best candidate on the training tasks is kept."""
        dspy = load_dspy()
        tasks = {task["id"]: task for task in self.training_tasks()}
        examples = []
        for task in tasks.values():
            text, values = instantiate(task)
            examples.append(dspy.Example(task=text, task_id=task["id"], slots=values).with_inputs("task"))
        verdicts: dict[int, tuple[float, str]] = {}
        marks: dict[str, Any] = {"mark": len(self.lm.history), "started": time.perf_counter()}

        def metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
            if id(pred) not in verdicts:  # GEPA asks again for feedback on a run it already scored
                task = tasks[gold.task_id]
                passed, record = self._finish(task, gold.task, dict(gold.slots), str(getattr(pred, "answer", "")),
                                              None, kind="gepa", iteration=number, mark=marks["mark"],
                                              started=marks["started"])
                marks.update(mark=len(self.lm.history), started=time.perf_counter())
                feedback = "The attempt passed its check."
                if not passed:
                    finding = analyse_attempt(task, record["_calls"], record["check_detail"] or "", None, tools)
                    feedback = (f"The attempt failed: {finding.said}. What to change: {finding.change}."
                                + "".join(f"\n- {lesson}" for lesson in finding.lessons))
                verdicts[id(pred)] = (float(passed), feedback)
            score, feedback = verdicts[id(pred)]
            return dspy.Prediction(score=score, feedback=feedback)

        self.toolbox.take_calls()
        optimizer = dspy.GEPA(metric=metric, max_metric_calls=GEPA_CALLS_PER_TASK * len(examples),
                              reflection_lm=self.lm, num_threads=1, use_merge=False, seed=0,
                              warn_on_score_mismatch=False)
        with dspy.context(lm=self.lm):
            return optimizer.compile(program, trainset=examples, valset=examples)
