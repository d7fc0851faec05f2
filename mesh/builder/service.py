"""The builder inside the registry: what ``POST /v1/builder``, the ``build_agent`` MCP tool and ``mesh build`` do.

The registry is where a build has what it needs: the configured model, discovery over the verified tools
with their pinned schemas, reputation and proficiency, the prompt versions of the learning tables, and the
workspace it serves (``agents/`` to write into, the keys to sign with). Three steps, each its own call:

- ``draft``: the brief read into a blueprint (or questions), and the kit it would get: nothing written;
- ``build``: from a reviewed (maybe edited) blueprint, the pack made and optimised, the agent written and
  signed, its prompt version kept and activated, its definition kept as a compressed record;
- ``validate``: once the agent is admitted, the comparison with a generic agent, stored with the agent.

Model calls run in worker threads, never on the registry's event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio

from mesh.builder import module
from mesh.builder.blueprint import BlueprintProblem, Draft, read_brief
from mesh.builder.kit import Kit, select_kit, workspace_kit_tools
from mesh.builder.pack import PROMPT_SYSTEM, ROLE_TOOL, make_pack
from mesh.builder.tasks import RoleTasks, generate_tasks
from mesh.builder.validation import compare
from mesh.knowledge import AgentDefinition, ContextBudgeter, RecordStore
from mesh.learning import records as learning_records
from mesh.lm.settings import NoModelConfigured
from mesh.registry import proxy
from mesh.registry.auth import Caller
from mesh.registry.problems import Problem
from mesh.signing import SigningProblem
from mesh.workspace import Workspace, WorkspaceProblem

CONTEXT_TOKENS = 1200  # what the records may add to a builder prompt
T = TypeVar("T")


class BuilderService:
    """The builder's steps on one registry."""

    def __init__(self, registry: Any):
        self.registry = registry
        self._store: RecordStore | None = None
        self._opening = threading.Lock()  # builds' worker threads may ask for the store at once

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.registry.config.workspace.root)

    def store(self) -> RecordStore:
        """The workspace's records (agent definitions, optimization examples), opened on first use."""
        with self._opening:
            if self._store is None:
                self._store = RecordStore.open(self.registry.config.workspace.state_dir)
        return self._store

    def context(self, text: str) -> str:
        """Agents this mesh already defined that resemble ``text``, projected and within the token budget."""
        return ContextBudgeter(self.store()).build(text, kinds=["agent_definition"], budget_tokens=CONTEXT_TOKENS).text

    def lm(self) -> Any:
        from mesh.lm.model import build_lm

        try:
            return build_lm(self.registry.config.lm)
        except NoModelConfigured as exc:
            raise Problem("lm-not-configured", str(exc)) from None

    async def ask_model(self, step: Callable[[], T]) -> T:
        """Run a step that asks the model, in a worker thread. A brief it cannot use is the caller's problem
        (400); a model that fails, or answers what cannot be used, is the model's (502, its key never shown)."""
        try:
            return await anyio.to_thread.run_sync(step)
        except BlueprintProblem as exc:
            raise Problem("bad-request", str(exc)) from None
        except Problem:
            raise
        except Exception as exc:
            settings = self.registry.config.lm
            message = " ".join(str(exc).split())[:300]
            if settings.api_key is not None:
                message = message.replace(settings.api_key.get_secret_value(), "***")
            raise Problem("target-error", f"the model ({settings.describe()}) failed: {type(exc).__name__}: "
                                          f"{message}") from None

    # -- draft: brief -> blueprint -> kit, nothing written ---------------------------------------------------

    async def charge(self, requester: Caller, lm: Any) -> None:
        """The tokens a step's model calls spent count against the budgets of the organisation the requester
        acts in (``[budgets] token_cost`` units each), as a learning run's do."""
        from mesh.lm.model import usage_since

        tokens = usage_since(lm).tokens
        if tokens:
            org = self.registry.tenancy.of_caller(requester).org
            await anyio.to_thread.run_sync(self.registry.budgets.spend_tokens, org, None, tokens)

    async def draft(self, requester: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """Read the brief (or take the reviewed blueprint) and choose the kit; write nothing."""
        draft = await self.reading(requester, body)
        if draft.ambiguous:
            return {"stage": "questions", "questions": draft.questions, "draft": draft.to_json()}
        kit = await anyio.to_thread.run_sync(self.kit, draft)
        return {"stage": "review", "draft": draft.to_json(), "kit": kit.model_dump(mode="json"),
                "exists": module.files_of(self.workspace, draft.name)["module"].exists()}

    async def reading(self, requester: Caller, body: dict[str, Any]) -> Draft:
        """``blueprint``: a reviewed draft document, used as it is; else ``brief`` (with ``answers``) read
        by the model."""
        if body.get("blueprint") is not None:
            try:
                draft = Draft.from_json(body["blueprint"])
            except BlueprintProblem as exc:
                raise Problem("bad-request", str(exc)) from None
            # A person reviewed it: questions left in it are theirs to have settled by editing.
            name = body["name"] if isinstance(body.get("name"), str) else draft.name
            return Draft.from_json({**draft.to_json(), "name": name, "questions": []})
        brief, answers, name = body.get("brief"), body.get("answers") or {}, body.get("name")
        if not isinstance(brief, str) or not brief.strip():
            raise Problem("bad-request", "the builder needs brief (what the agent should be, in words) or blueprint "
                                         "(a draft it returned, maybe edited)")
        if not (isinstance(answers, dict) and all(isinstance(v, str) for v in answers.values())):
            raise Problem("bad-request", "answers must map each question to its answer (strings)")
        if name is not None and not isinstance(name, str):
            raise Problem("bad-request", "name must be a string")
        lm = self.lm()

        def read() -> Draft:  # in a worker thread: the records' search and the model both take time
            return read_brief(brief, lm, context=self.context(brief), answers=answers, name=name)

        try:
            return await self.ask_model(read)
        finally:
            await self.charge(requester, lm)

    def kit(self, draft: Draft) -> Kit:
        registry = self.registry

        def discover(query: str, k: int) -> list[dict[str, Any]]:
            return registry.discover(query, k=k)

        def pinned(agent: str, tool: str) -> tuple[dict[str, Any], list[str]]:
            found = registry.tools.get((agent, tool))
            if found is None:
                return {}, []
            return dict(found.wire.get("inputSchema") or {}), list(found.scopes)

        try:
            kits = workspace_kit_tools(self.workspace)
        except WorkspaceProblem as exc:
            raise Problem("bad-request", f"a workspace tool kit does not load: {exc}") from None
        return select_kit(draft.blueprint, discover=discover, pinned=pinned, workspace_kits=kits,
                          exclude_agents=[draft.name])

    # -- build: pack, module, signature, prompt version, record ------------------------------------------------

    async def build(self, requester: Caller, body: dict[str, Any]) -> dict[str, Any]:
        draft = await self.reading(requester, body)
        if draft.ambiguous:
            return {"stage": "questions", "questions": draft.questions, "draft": draft.to_json()}
        ws, force = self.workspace, bool(body.get("force", False))
        if module.files_of(ws, draft.name)["module"].exists() and not force:
            raise Problem("agent-exists", f"agents/{draft.name}.py exists; pass force to overwrite it")
        lm = self.lm()
        kit = await anyio.to_thread.run_sync(self.kit, draft)
        try:
            tasks = await self.ask_model(lambda: generate_tasks(draft.blueprint, lm, context=self.context(draft.brief)))
            pack = await self.ask_model(partial(make_pack, draft.name, draft.blueprint, kit, tasks, lm,
                                                store=self.store()))
        finally:
            await self.charge(requester, lm)
        try:
            files = module.write_agent(ws, draft, kit, pack, tasks, force=force)
        except module.AgentExists as exc:
            raise Problem("agent-exists", str(exc)) from None
        try:
            await module.sign(ws, draft.name)
        except (SigningProblem, WorkspaceProblem) as exc:
            raise Problem("bad-request", f"agents/{draft.name}.py is written but not signed: {exc}") from None
        with self.registry.sessions.begin() as session:
            learning_records.add_version(session, draft.name, PROMPT_SYSTEM, pack.version, pack.program_text,
                                         lessons=[], demos=len(pack.examples), parent_id=None, plan_id=None,
                                         run_id=None, iteration=None, metrics=pack.metrics)
            learning_records.activate(session, draft.name, PROMPT_SYSTEM, pack.version, requester.id)
        await anyio.to_thread.run_sync(self.store().put, AgentDefinition(
            name=draft.name, brief=draft.brief, blueprint=draft.blueprint, instructions=pack.instructions))
        return {"stage": "written", "name": draft.name, "draft": draft.to_json(), "kit": kit.model_dump(mode="json"),
                "files": {kind: str(path.relative_to(ws.root)) for kind, path in files.items()},
                "manifest": str(ws.manifest_path(draft.name).relative_to(ws.root)),
                "prompt_version": pack.version, "pack": {"metrics": pack.metrics, "demos": len(pack.examples)},
                "grants": {"needed": kit.scopes(), "granted": self.registry.caller_scopes(draft.name)},
                "lm": usage_json(lm),
                "tasks": {"training": len(tasks.training), "held_out": len(tasks.held_out),
                          "rubric": [c.name for c in tasks.rubric]}}

    # -- validate: built vs generic on held-out tasks ----------------------------------------------------------

    async def validate(self, requester: Caller, name: str) -> dict[str, Any]:
        ws = self.workspace
        build = module.read_build(ws, name)
        if build is None:
            raise Problem("unknown-agent", f"{name!r} was not made by the builder (no agents/{name}.build.json)")
        if name not in self.registry.endpoints:
            raise Problem("target-unavailable", f"{name} is not registered: start it (mesh build --up, mesh up) "
                                                "before validating")
        tasks = RoleTasks.model_validate(build["tasks"])
        lm = self.lm()
        registry = self.registry

        async def ask_built(task: str) -> str:
            outcome = (await proxy.invoke(registry, requester, name, ROLE_TOOL, {"task": task})).to_json()
            result = outcome.get("result") or {}
            if result.get("isError"):
                raise Problem("target-error", f"{name}.{ROLE_TOOL} failed: {result.get('content')}")
            structured = result.get("structuredContent") or {}
            return str(structured.get("result", "")) if structured else \
                " ".join(c.get("text", "") for c in result.get("content", []))

        try:
            report = await compare(tasks, lm, ask_built, model=self.registry.config.lm.describe())
        except ValueError as exc:
            raise Problem("bad-request", str(exc)) from None
        finally:
            await self.charge(requester, lm)
        report["lm"] = usage_json(lm)
        module.save_validation(ws, name, report)
        return report


def usage_json(lm: Any) -> dict[str, int]:
    """The model calls and tokens a step spent (the server's own counts)."""
    from mesh.lm.model import usage_since

    usage = usage_since(lm)
    return {"calls": usage.calls, "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
