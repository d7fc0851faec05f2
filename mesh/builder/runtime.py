"""What a built agent imports: its instructions pack, answered with the configured model, and kit results.

``RolePack.answer`` runs the optimised program (instructions and demonstrations, as ``program.save`` wrote
them) with the workspace's model (``mesh.lm``, ``[lm]`` in registry.toml or ``MESH_LM_*``), in a worker
thread so the agent keeps serving while the model thinks. The program is the prompt version the registry
says the agent serves for ``role`` (the learning loop's versions: ``mesh prompts rollback`` applies), and
the pack's own when the registry cannot say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio


def result_of(answer: dict[str, Any]) -> Any:
    """The result of a kit tool called through the registry (``agent.mesh.invoke``), or its error raised."""
    result = answer.get("result") or {}
    if result.get("isError"):
        text = " ".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))
        raise ValueError(f"the tool failed: {text}")
    structured = result.get("structuredContent")
    if isinstance(structured, dict):
        return structured.get("result", structured)
    return " ".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))


class RolePack:
    """The instructions pack beside an agent module (``agents/NAME.pack.json``)."""

    def __init__(self, path: Path):
        self.path = path
        self._data: dict[str, Any] | None = None
        self._lm: Any = None

    @classmethod
    def beside(cls, module_file: str) -> RolePack:
        return cls(Path(module_file).with_suffix(".pack.json"))

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = json.loads(self.path.read_text())
        return self._data

    @property
    def version(self) -> str:
        return self.data["version"]

    def program(self, state: dict[str, Any] | None = None) -> Any:
        """A fresh program with ``state`` (default: the pack's); a program is not shared between calls."""
        from mesh.builder.pack import role_program

        program = role_program(self.data["instructions"])
        program.load_state(state or self.data["program"])
        return program

    async def served_state(self, agent: Any) -> dict[str, Any] | None:
        """The program of the prompt version the registry has active for this agent's role, if it can say."""
        from mesh.builder.pack import PROMPT_SYSTEM

        try:
            version = await agent.active_prompt(PROMPT_SYSTEM)
            return json.loads(version["program"]) if version.get("id") != self.version else None
        except Exception:  # no registry, no version kept: the pack beside the module is the version
            return None

    def lm(self) -> Any:
        """The workspace's model: the workspace is the folder above ``agents/``."""
        if self._lm is None:
            from mesh.lm.model import build_lm
            from mesh.registry.config import lm_settings
            from mesh.workspace import Workspace

            self._lm = build_lm(lm_settings(Workspace(self.path.parent.parent).config()))
        return self._lm

    def answer_now(self, task: str, state: dict[str, Any] | None = None) -> str:
        from mesh.lm.model import load_dspy

        with load_dspy().context(lm=self.lm()):
            return str(self.program(state)(task=task).answer)

    async def answer(self, task: str, agent: Any = None) -> str:
        """Answer ``task`` as the role, with the version the registry serves for ``agent`` (else the pack)."""
        if not task.strip():
            raise ValueError("the task is empty: say what to do")
        state = await self.served_state(agent) if agent is not None else None
        return await anyio.to_thread.run_sync(self.answer_now, task, state)
