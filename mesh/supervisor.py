"""``mesh up``: the registry and every agent of a workspace as child processes that start and stop together.

Each child runs in its own session (process group), so Ctrl-C in the terminal reaches only the supervisor,
which then stops the agents first and the registry last: SIGTERM to each group, SIGKILL after a grace
period. A child's output is forwarded line by line, prefixed with its name. An agent that fails to start
is reported with its last output line while the rest of the mesh comes up; the registry dying ends the mesh.
An agent that appears in ``agents/`` while the mesh runs (``mesh build`` writes one) is started once it is
signed. ``.mesh/up.json`` says, while the mesh runs, which process supervises it and at which registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx

from mesh.serving import free_port
from mesh.workspace import Workspace, WorkspaceProblem

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7300
TAIL_LINES = 20
STATE_FILE = "up.json"  # under the workspace's .mesh/: {"pid", "registry"} while `mesh up` runs
ADOPT_EVERY = 1.0  # seconds between looks for new agents in agents/


class Console:
    """Writes whole lines to a stream from several threads without interleaving them."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self.stream.write(text if text.endswith("\n") else text + "\n")
            self.stream.flush()


class Child:
    """One process the supervisor started: its command, where it answers, the tail of its output."""

    def __init__(self, name: str, args: list[str], base_url: str):
        self.name = name
        self.args = args
        self.base_url = base_url
        self.popen: subprocess.Popen[str] | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.ready = False
        self.failure: str | None = None
        self._reader: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, console: Console, env: dict[str, str]) -> None:
        # stdin is closed so a child never competes with the terminal; stderr joins stdout to keep order.
        self.popen = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1, env=env, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._forward, args=(console,), name=f"out-{self.name}", daemon=True)
        self._reader.start()

    def _forward(self, console: Console) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            console.write(f"[{self.name}] {line}")

    def exit_reason(self) -> str:
        """Why the process ended, in one line: the signal that killed it, or its last words and exit code."""
        assert self.popen is not None
        code = self.popen.wait()
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        self.flush_output(timeout=2)
        last = next((line.strip() for line in reversed(self.tail) if line.strip()), "")
        return f"{last.removeprefix('mesh: ')} (exit {code})" if last else f"exited with code {code}"

    def signal_group(self, signum: int) -> None:
        """Signal the child's whole process group, so workers it spawned stop too."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signum)

    def flush_output(self, timeout: float) -> None:
        if self._reader is not None:
            self._reader.join(timeout)


class Supervisor:
    """Runs one workspace's mesh: ``up()`` starts it, serves until a signal, and stops every child.

    ``registry_command`` and ``agent_command`` say what runs; override them to supervise other programs.
    """

    def __init__(
        self,
        workspace: Workspace,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        python: str = sys.executable,
        agent_flags: Sequence[str] = (),
        workers: int = 1,
        ready_timeout: float = 90.0,
        grace: float = 10.0,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ):
        self.workspace = workspace
        self.host = host
        self.port = port
        self.python = python
        self.agent_flags = list(agent_flags)
        self.workers = workers
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.out = out or sys.stdout
        self.console = Console(err or sys.stderr)
        self.registry: Child | None = None
        self.agents: list[Child] = []
        # Plain flags, not threading.Event: a signal handler that takes a lock can deadlock the main thread.
        self.stopping = False
        self.hurrying = False

    # -- what runs ------------------------------------------------------------------------------------

    @property
    def registry_url(self) -> str:
        return self.url(self.port)

    def url(self, port: int) -> str:
        return f"http://{_connect_host(self.host)}:{port}"

    def agent_names(self) -> list[str]:
        return self.workspace.agent_names()

    def registry_command(self) -> list[str]:
        return [self.python, "-m", "mesh.cli", "registry", "run", "--workspace", str(self.workspace.root),
                "--host", self.host, "--port", str(self.port), "--trust-local-keys",
                *(["--workers", str(self.workers)] if self.workers != 1 else [])]

    def agent_command(self, name: str, port: int) -> list[str]:
        return [self.python, "-m", "mesh.cli", "agent", "run", name, "--workspace", str(self.workspace.root),
                "--host", self.host, "--port", str(port), "--registry", self.registry_url, *self.agent_flags]

    # -- lifecycle ------------------------------------------------------------------------------------

    def up(self) -> int:
        """Start the mesh, print how to reach it, serve until SIGINT/SIGTERM or the registry dies; stop all."""
        previous = self._install_signal_handlers()
        try:
            if not self.start():
                return 0 if self.stopping else 1
            self.out.write(self.summary() + "\n")
            self.out.flush()
            self._write_state()
            return self.serve()
        finally:
            self._state_path().unlink(missing_ok=True)
            running = [c for c in self.children() if c.alive]
            if running:
                self.console.write(f"mesh: stopping {len(running)} processes (Ctrl-C again to stop them at once)")
            self.stop()
            self._restore_signal_handlers(previous)

    def start(self) -> bool:
        """Start the registry, then every agent; False when the registry could not come up."""
        names = self.agent_names()
        if _answers(f"{self.registry_url}/healthz"):
            self.console.write(f"mesh: something already answers at {self.registry_url} — is another `mesh up` "
                               f"running? Stop it or choose another --port")
            return False
        self.console.write(f"mesh: starting the registry at {self.registry_url} ...")
        self.registry = self._spawn("registry", self.registry_command(), self.registry_url)
        self._wait_ready([self.registry])
        if not self.registry.ready:
            if not self.stopping:
                self.console.write(f"mesh: the registry did not start: {self.registry.failure}")
            return False
        taken = {self.port}
        if names:
            self.console.write(f"mesh: starting {len(names)} agents: {', '.join(names)} ...")
        for name in names:
            port = _unused_port(self.host, taken)
            self.agents.append(self._spawn(name, self.agent_command(name, port), self.url(port)))
        if not names:
            self.console.write(f"mesh: no agents in {self.workspace.agents_dir}; the registry runs alone")
        self._wait_ready(self.agents)
        self._wait_admitted([agent for agent in self.agents if agent.ready])
        return not self.stopping

    def serve(self) -> int:
        """Block until asked to stop (0) or until the registry dies (1); report agents that exit meanwhile."""
        reported: set[str] = set()
        next_look = time.monotonic() + ADOPT_EVERY
        while not self.stopping:
            time.sleep(0.25)
            if time.monotonic() >= next_look:
                self.adopt_new_agents()
                next_look = time.monotonic() + ADOPT_EVERY
            for agent in self.agents:
                if agent.ready and not agent.alive and agent.name not in reported:
                    reported.add(agent.name)
                    self.console.write(f"mesh: agent {agent.name} stopped: {agent.exit_reason()}")
            if self.registry is not None and not self.registry.alive:
                self.console.write(f"mesh: the registry stopped ({self.registry.exit_reason()}); stopping the mesh")
                return 1
        return 0

    def adopt_new_agents(self) -> list[str]:
        """Start the agents that appeared in ``agents/`` since the mesh came up, once signed (or any, with
        ``--dev``, which signs on start); each is then admitted like the first ones. Their names."""
        known = {agent.name for agent in self.agents}
        try:
            names = [n for n in self.agent_names() if n not in known]
        except WorkspaceProblem:  # agents/ is gone for now: look again next time
            return []
        ready = [n for n in names if "--dev" in self.agent_flags or self.workspace.manifest_path(n).is_file()
                 or self.workspace.manifest_path(n, local=True).is_file()]
        taken = {self.port, *(int(a.base_url.rsplit(":", 1)[1]) for a in self.agents)}
        new = []
        for name in ready:
            self.console.write(f"mesh: new agent {name} in {self.workspace.agents_dir}: starting it ...")
            port = _unused_port(self.host, taken)
            new.append(self._spawn(name, self.agent_command(name, port), self.url(port)))
        self.agents.extend(new)
        self._wait_ready(new)
        self._wait_admitted([agent for agent in new if agent.ready])
        return [agent.name for agent in new]

    def request_stop(self) -> None:
        """Ask ``up()`` to stop; asking again skips the grace period."""
        if self.stopping:
            self.hurrying = True
        self.stopping = True

    def stop(self) -> None:
        """Stop the agents, then the registry: SIGTERM each process group, SIGKILL what outlives the grace."""
        self.stopping = True
        self._stop_children(self.agents)
        self._stop_children([self.registry] if self.registry else [])

    def children(self) -> list[Child]:
        return [*([self.registry] if self.registry else []), *self.agents]

    # -- reporting ------------------------------------------------------------------------------------

    def summary(self) -> str:
        """The URLs of the mesh and a ready-to-paste client configuration."""
        assert self.registry is not None
        mcp_url = f"{self.registry_url}/mcp"
        rows = [("registry", f"{self.registry_url}   MCP {mcp_url}")]
        rows += [(a.name, f"{a.base_url}/mcp" if a.ready else f"FAILED: {a.failure}") for a in self.agents]
        width = max(len(name) for name, _ in rows)
        lines = [f"mcpmesh is up — workspace {self.workspace.root}   (Ctrl-C stops every process)", ""]
        lines += [f"  {name:<{width}}  {where}" for name, where in rows]
        lines += ["", "Claude Desktop: add to claude_desktop_config.json (mcp-remote bridges it to HTTP)",
                  json.dumps(desktop_config(mcp_url), indent=2),
                  "VS Code: .vscode/mcp.json", json.dumps(vscode_config(mcp_url)),
                  f"Clients that speak streamable HTTP (Claude Code, Cursor, MCP Inspector): {mcp_url}"]
        ready = [a.name for a in self.agents if a.ready]
        if ready:
            lines += [f"Or one agent on its own, over stdio ({ready[0]} here):",
                      json.dumps(stdio_config(ready[0], self.workspace.root, self._mesh_executable()), indent=2)]
        return "\n".join(lines)

    def _mesh_executable(self) -> str:
        """The ``mesh`` script beside our interpreter: desktop apps do not see the shell's PATH."""
        script = Path(self.python).parent / "mesh"
        return str(script) if script.is_file() else "mesh"

    # -- internals ------------------------------------------------------------------------------------

    def _state_path(self) -> Path:
        return self.workspace.state_dir / STATE_FILE

    def _write_state(self) -> None:
        self.workspace.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_path().write_text(json.dumps({"pid": os.getpid(), "registry": self.registry_url}) + "\n")

    def _spawn(self, name: str, args: list[str], base_url: str) -> Child:
        child = Child(name, args, base_url)
        child.start(self.console, {**os.environ, "PYTHONUNBUFFERED": "1"})
        return child

    def _wait_ready(self, children: Iterable[Child]) -> None:
        """Poll every child's health at once until each answers, exits or runs out of time."""
        pending = [c for c in children if not c.ready and not c.failure]
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while pending and not self.stopping:
                for child in list(pending):
                    if not child.alive:
                        child.failure = child.exit_reason()
                        if child is not self.registry:
                            self.console.write(f"mesh: agent {child.name} FAILED: {child.failure}")
                    elif _answers(f"{child.base_url}/healthz", client):
                        child.ready = True
                    else:
                        continue
                    pending.remove(child)
                if pending and time.monotonic() > deadline:
                    for child in pending:
                        child.failure = f"no answer at {child.base_url}/healthz within {self.ready_timeout:g}s"
                        if child is not self.registry:
                            self.console.write(f"mesh: agent {child.name} FAILED: {child.failure}")
                    self._stop_children(pending)
                    return
                time.sleep(0.1)
        for child in pending:
            child.failure = "interrupted before it was ready"

    def _wait_admitted(self, agents: list[Child]) -> None:
        """Wait until the registry has admitted every serving agent (or it failed): only then is the mesh up,
        so an immediate `mesh ls` or `mesh call` finds every agent. Each is reported as it happens."""
        pending = list(agents)
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(base_url=self.registry_url, timeout=2.0, trust_env=False) as client:
            while pending and not self.stopping:
                try:
                    known = {a["name"]: a["status"] for a in client.get("/v1/agents").json()["agents"]}
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    known = {}
                for agent in list(pending):
                    if known.get(agent.name) == "active":
                        self.console.write(f"mesh: {agent.name} admitted ({agent.base_url}/mcp)")
                        pending.remove(agent)
                    elif not agent.alive:
                        agent.failure = agent.exit_reason()
                        self.console.write(f"mesh: agent {agent.name} FAILED: {agent.failure}")
                        pending.remove(agent)
                if pending and time.monotonic() > deadline:
                    for agent in pending:
                        agent.failure = (f"not admitted by the registry within {self.ready_timeout:g}s "
                                         "(its log above says why)")
                        self.console.write(f"mesh: agent {agent.name} FAILED: {agent.failure}")
                    return
                time.sleep(0.1)

    def _stop_children(self, children: Sequence[Child]) -> None:
        """SIGTERM every group, wait up to the grace period (cut short by a second Ctrl-C), then SIGKILL."""
        started = [c for c in children if c.popen is not None]
        for child in started:
            if child.alive:
                child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while any(c.alive for c in started) and time.monotonic() < deadline and not self.hurrying:
            time.sleep(0.05)
        for child in started:
            child.signal_group(signal.SIGKILL)  # also reaches anything the child left behind in its group
            assert child.popen is not None
            child.popen.wait()
            child.flush_output(timeout=2)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        return {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def desktop_config(mcp_url: str) -> dict[str, Any]:
    """Claude Desktop's config file starts stdio servers only, so mcp-remote bridges it to the registry."""
    return {"mcpServers": {"mcpmesh": {"command": "npx", "args": ["-y", "mcp-remote", mcp_url]}}}


def vscode_config(mcp_url: str) -> dict[str, Any]:
    """VS Code speaks streamable HTTP itself: the registry's URL is enough."""
    return {"servers": {"mcpmesh": {"type": "http", "url": mcp_url}}}


def running_up(workspace: Workspace) -> dict[str, Any] | None:
    """``{"pid", "registry"}`` of the `mesh up` supervising ``workspace`` now, or None."""
    try:
        state = json.loads((workspace.state_dir / STATE_FILE).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def stdio_config(agent: str, workspace: Path, mesh: str = "mesh") -> dict[str, Any]:
    return {"mcpServers": {agent: {"command": mesh,
                                   "args": ["agent", "run", agent, "--stdio", "--workspace", str(workspace)]}}}


def run_up(workspace: Path, host: str | None = None, port: int | None = None, *,
           agent_flags: Sequence[str] = (), workers: int = 1) -> int:
    """``mesh up``: host and port default to ``[registry]`` in registry/registry.toml, then 127.0.0.1:7300."""
    from mesh.registry.config import RegistryConfig

    ws = Workspace(workspace)
    ws.require()
    config = RegistryConfig.from_workspace(ws, host=host, port=port)  # a bad registry.toml: one line, at once
    if workers > 1:  # refused here, at once, rather than by the registry process after it starts
        from mesh.registry import replicas, store

        engine = store.connect(store.database_url(ws.root, config.database_url))
        try:
            replicas.check_workers(engine, workers)
        except replicas.WorkersProblem as exc:
            raise WorkspaceProblem(str(exc)) from None
        finally:
            engine.dispose()
    return Supervisor(ws, host=config.host, port=config.port, agent_flags=agent_flags, workers=workers).up()


def _answers(url: str, client: httpx.Client | None = None) -> bool:
    try:
        if client is None:
            return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _unused_port(host: str, taken: set[int]) -> int:
    while (port := free_port("127.0.0.1" if ":" in host else host)) in taken:
        pass
    taken.add(port)
    return port


def _connect_host(host: str) -> str:
    """Where to reach a server bound to ``host``: a wildcard address is reached on loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
