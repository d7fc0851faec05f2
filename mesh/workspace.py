"""A mesh workspace: the folder whose ``agents/``, ``tools/``, ``registry/`` and ``manifests/`` make a mesh.

Agent modules and tool kits are loaded by file path under private module names, never as the
top-level packages ``agents`` or ``tools`` (those names belong to other libraries). Private state —
keys, local manifests, the registry database — lives under ``.mesh/``, which git ignores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tomllib
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from mesh.agent import Agent, AgentContext, ToolKit
from mesh.names import check_name


class WorkspaceProblem(Exception):
    """The workspace cannot give what was asked (missing agent, module that fails to import...)."""


class Workspace:
    """Paths and loaders for one workspace folder."""

    def __init__(self, root: Path | str = "."):
        self.root = Path(root).resolve()
        self._package = "mesh_workspace_" + hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        self._agents: dict[str, Agent] = {}
        self._kits: dict[str, ToolKit] = {}

    # -- folders ----------------------------------------------------------------------------------

    @property
    def agents_dir(self) -> Path:
        return self.root / "agents"

    @property
    def tools_dir(self) -> Path:
        return self.root / "tools"

    @property
    def manifests_dir(self) -> Path:
        """Committed: signed manifests and published JWKS, reviewed like a lock file."""
        return self.root / "manifests"

    @property
    def state_dir(self) -> Path:
        """Private and git-ignored: keys, local manifests, databases."""
        return self.root / ".mesh"

    # Every path below holds an agent's name: ``check_name`` runs first, so no name such as
    # ``../../x`` ever reaches the file system.

    def keys_dir(self, agent: str) -> Path:
        return self.state_dir / "keys" / check_name(agent, "agent name")

    def manifest_path(self, agent: str, *, local: bool = False) -> Path:
        folder = self.state_dir / "manifests" if local else self.manifests_dir
        return folder / f"{check_name(agent, 'agent name')}.manifest.json"

    def jwks_path(self, agent: str, *, local: bool = False) -> Path:
        folder = self.state_dir / "manifests" if local else self.manifests_dir
        return folder / f"{check_name(agent, 'agent name')}.jwks.json"

    def agent_state_dir(self, agent: str) -> Path:
        path = self.state_dir / "state" / check_name(agent, "agent name")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def require(self) -> None:
        if not self.agents_dir.is_dir():
            raise WorkspaceProblem(
                f"{self.root} is not a mesh workspace (no agents/ folder); `mesh init DIR` makes one"
            )

    # -- configuration ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """``registry/registry.toml`` as a dict ({} when absent)."""
        path = self.root / "registry" / "registry.toml"
        if not path.is_file():
            return {}
        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise WorkspaceProblem(f"{path}: not valid TOML ({exc})") from exc

    def agent_context(self, agent: str) -> AgentContext:
        settings = self.config().get("agents", {}).get(agent, {})
        return AgentContext(agent, self.root, self.agent_state_dir(agent), dict(settings))

    # -- loading --------------------------------------------------------------------------------------

    def agent_names(self) -> list[str]:
        self.require()
        return sorted(p.stem for p in self.agents_dir.glob("*.py") if not p.name.startswith("_"))

    def agent(self, name: str) -> Agent:
        """Import ``agents/NAME.py`` and return its Agent, with mounted tool kits resolved."""
        check_name(name, "agent name")
        if name in self._agents:
            return self._agents[name]
        self.require()
        path = self.agents_dir / f"{name}.py"
        if not path.is_file():
            known = ", ".join(self.agent_names()) or "none"
            raise WorkspaceProblem(f"no agent {name!r} in {self.agents_dir} (agents here: {known})")
        module = self._import(path, f"agents.{name}")
        agents = [value for value in vars(module).values() if isinstance(value, Agent)]
        if len(agents) != 1:
            raise WorkspaceProblem(f"{path} must build exactly one mesh.Agent (found {len(agents)})")
        agent = agents[0]
        if agent.name != name:
            raise WorkspaceProblem(f"{path} builds Agent({agent.name!r}); its name must match the file: {name!r}")
        agent.mounts = [self.toolkit(kit) if isinstance(kit, str) else kit for kit in agent.mounts]
        self._agents[name] = agent
        return agent

    def toolkit(self, name: str) -> ToolKit:
        """Import ``tools/NAME.py`` and return its ToolKit."""
        check_name(name, "tool kit name")
        if name in self._kits:
            return self._kits[name]
        path = self.tools_dir / f"{name}.py"
        if not path.is_file():
            raise WorkspaceProblem(f"no tool kit {name!r}: {path} does not exist")
        module = self._import(path, f"tools.{name}")
        kits = [value for value in vars(module).values() if type(value) is ToolKit]
        if len(kits) != 1:
            raise WorkspaceProblem(f"{path} must build exactly one mesh.ToolKit (found {len(kits)})")
        self._kits[name] = kits[0]
        return kits[0]

    def _import(self, path: Path, dotted: str) -> ModuleType:
        module_name = f"{self._package}.{dotted}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            where = _innermost_frame_in(exc, path)
            raise WorkspaceProblem(
                f"{path.relative_to(self.root)} failed to import{where}: {type(exc).__name__}: {exc}"
            ) from exc
        return module


def _innermost_frame_in(exc: BaseException, path: Path) -> str:
    """' (line N)' for the deepest frame of ``exc`` inside ``path``, so the message points at the bug."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    return f" (line {frames[-1].lineno})" if frames else ""
