"""The ``mesh`` command.

Every subcommand reads one workspace (``--workspace DIR``, default: the current folder). Problems the user
can act on end with one clear line and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import anyio
import httpx

from mesh import telemetry
from mesh.keys import DEFAULT_OVERLAP_SECONDS, KID_PATTERN, KeyProblem, KeyRing, check_kid
from mesh.login import LoginProblem
from mesh.manifest import ManifestProblem
from mesh.names import NameProblem, check_name
from mesh.registry.policy import PolicyError
from mesh.sandbox.commands import CommandProblem
from mesh.signing import (
    SigningProblem,
    code_differences,
    holds_published_key,
    resign_after_key_change,
    sign_agent,
    verify_manifest_file,
)
from mesh.workspace import Workspace, WorkspaceProblem


class RegistryProblem(Exception):
    """The registry answered a command with an error, or did not answer properly."""


USER_ERRORS = (WorkspaceProblem, SigningProblem, ManifestProblem, KeyProblem, PolicyError, NameProblem,
               RegistryProblem, CommandProblem, LoginProblem)
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return register


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- workspace and signing ----------------------------------------------------------------------------


@command("init")
def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    if target.exists() and any(target.iterdir()):
        raise WorkspaceProblem(f"{target} exists and is not empty; choose a new folder")
    shutil.copytree(Path(__file__).parent / "scaffold", target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (target / "gitignore").rename(target / ".gitignore")
    print(f"New mesh workspace in {target}. Next:\n  cd {target}\n  mesh sign\n  mesh agent run hello")
    return 0


@command("sign")
def cmd_sign(args: argparse.Namespace) -> int:
    ws = Workspace(args.workspace)
    for name in args.names:
        check_name(name, "agent name")
    for name in args.names or ws.agent_names():
        changed = anyio.run(lambda n=name: sign_agent(ws, n, replace_keys=args.replace_keys))
        path = ws.manifest_path(name).relative_to(ws.root)
        print(f"{name}: {'signed' if changed else 'unchanged'} {path}")
    return 0


@command("verify")
def cmd_verify(args: argparse.Namespace) -> int:
    ws = Workspace(args.workspace)
    targets = []
    if args.target and args.target.endswith(".json"):
        path = Path(args.target)
        targets.append((path, path.with_name(path.name.replace(".manifest.json", ".jwks.json"))))
    else:
        names = [check_name(args.target, "agent name")] if args.target else sorted(
            p.name.removesuffix(".manifest.json") for p in ws.manifests_dir.glob("*.manifest.json")
        )
        if not names:
            raise WorkspaceProblem(f"no manifests in {ws.manifests_dir} (run `mesh sign`)")
        targets = [(ws.manifest_path(n), ws.jwks_path(n)) for n in names]
    changed = 0
    for manifest_path, jwks_path in targets:
        manifest = verify_manifest_file(manifest_path, jwks_path)
        signed = f"{len(manifest.tools)} tools, signed by {', '.join(k[:12] + '…' for k in manifest.kids())}"
        # The signature holds; does the agent's code still serve what it signs?
        differences = []
        if (ws.agents_dir / f"{manifest.agent}.py").is_file():
            differences = anyio.run(code_differences, ws, manifest)
        if differences:
            changed += 1
            say(f"CHANGED {manifest_path}: agents/{manifest.agent}.py no longer serves what it signs:\n  "
                + "\n  ".join(differences) + f"\n  (`mesh sign {manifest.agent}` signs what changed)")
        else:
            print(f"ok  {manifest_path}: {manifest.agent} {manifest.body.get('version')}, {signed}")
    return 1 if changed else 0


@command("keys")
def cmd_keys(args: argparse.Namespace) -> int:
    ws = Workspace(args.workspace)
    check_name(args.name, "agent name")
    ring = KeyRing.open(ws.keys_dir(args.name))
    now = time.time()
    if args.keys_command == "rotate":
        published = holds_published_key(ws, args.name)
        new = ring.rotate(int(args.overlap * 86400))
        anyio.run(lambda: resign_after_key_change(ws, args.name))
        where = "manifests/" if published else ".mesh/manifests/"
        print(f"{args.name}: new active key {new.kid}; previous key valid for {args.overlap:g} more days. "
              f"Re-signed {where}{args.name}.manifest.json")
    elif args.keys_command == "revoke":
        return revoke_own_key(ws, ring, args)
    else:
        for record in ring.records:
            until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(record.not_after)) if record.not_after else ""
            print(f"{record.kid}  {record.status(now):8}  {until}")
    return 0


def revoke_own_key(ws: Workspace, ring: KeyRing, args: argparse.Namespace) -> int:
    """``mesh keys revoke``: revoke locally, re-sign, then hand the signed statement to the registry."""
    check_kid(args.kid)
    already = ring.record(args.kid).revoked is not None
    replacement = ring.revoke(args.kid, args.name)
    done = "was already revoked" if already else "revoked"
    print(f"{args.name}: {args.kid} {done}" + (f"; new active key {replacement.kid}" if replacement else ""))
    # The registry hears it first, by the statement signed by the revoked key itself (its own proof, no
    # token needed); then the manifests are re-signed, and the new JWKS publishes the revocation too.
    url = local_registry_url(ws, args.registry)
    answer = post_json(f"{url}/v1/agents/{args.name}/revocations", {"statement": ring.revocation_for(args.kid)})
    anyio.run(lambda: resign_after_key_change(ws, args.name))
    if answer is None:
        print(f"no registry at {url}; it learns of the revocation when {args.name} next registers")
    else:
        print(f"registry at {url}: key {args.kid} of {args.name} {answer_status(answer)}")
    return 0


def local_registry_url(ws: Workspace, given: str | None) -> str:
    """``--registry`` if given, else this workspace's registry on loopback (the port of registry.toml)."""
    if given:
        return given.rstrip("/")
    from mesh.registry.config import RegistryConfig

    try:
        port = RegistryConfig.from_workspace(ws).port
    except ValueError as exc:  # unknown or ill-typed settings in registry.toml
        raise WorkspaceProblem(str(exc)) from exc
    return f"http://127.0.0.1:{port}"


def post_json(url: str, body: dict[str, object]) -> httpx.Response | None:
    """POST ``body`` to a registry; the answer if it succeeded, None if nothing listens at ``url``.

    An error answer (RFC 9457 problem details) becomes a ``RegistryProblem`` carrying its title and detail.
    """
    try:
        response = httpx.post(url, json=body, timeout=10)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        return None
    except httpx.HTTPError as exc:
        raise RegistryProblem(f"the registry at {url} did not answer properly ({type(exc).__name__}: {exc})") from exc
    if response.is_error:
        raise RegistryProblem(f"the registry refused: {problem_summary(response)}")
    return response


def answer_status(response: httpx.Response) -> str:
    """The ``status`` a registry reports for a revocation ("revoked" or "already revoked")."""
    try:
        status = response.json().get("status")
    except (ValueError, AttributeError):
        status = None
    return status if isinstance(status, str) and status else "revoked"


def problem_summary(response: httpx.Response) -> str:
    """One line from a problem+json answer: its title and detail, else the HTTP status."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return f"HTTP {response.status_code}"
    parts = [str(problem[field]) for field in ("title", "detail") if problem.get(field)]
    return " ".join(": ".join(parts).split()) or f"HTTP {response.status_code}"


# -- running agents -----------------------------------------------------------------------------------


@command("agent")
def cmd_agent(args: argparse.Namespace) -> int:
    ws = Workspace(args.workspace)
    if args.agent_command == "list":
        for name in ws.agent_names():
            print(name)
        return 0
    check_name(args.name, "agent name")
    from mesh.serving import SignedAgent, serve_http, serve_stdio

    telemetry.configure_from_env(f"mesh-agent-{args.name}")

    async def run() -> None:
        signed = await SignedAgent.prepare(ws, args.name, strict=args.strict, dev=args.dev)
        if signed.identity.note:
            say(signed.identity.note)
        if args.stdio:
            await serve_stdio(signed)
        else:
            await serve_http(signed, args.host, args.port, registry_url=args.registry)

    anyio.run(run)
    return 0


@command("registry")
def cmd_registry(args: argparse.Namespace) -> int:
    if args.registry_command == "revoke":
        return revoke_for_operator(args)
    import uvicorn

    from mesh.registry.app import build_app
    from mesh.registry.config import RegistryConfig
    from mesh.registry.node import Registry

    ws = Workspace(args.workspace)
    config = RegistryConfig.from_workspace(ws, host=args.host, port=args.port, strict=args.strict or None,
                                           trust_local_keys=args.trust_local_keys or None)
    if args.workers != 1:
        from mesh.registry import replicas

        try:
            replicas.run_workers(config, args.workers, announce=say)
        except replicas.WorkersProblem as exc:
            raise WorkspaceProblem(str(exc)) from None
        return 0
    telemetry.configure_from_env("mesh-registry", scrape=True)  # /metrics, whatever the exporter
    registry = Registry.open(config)
    say(f"registry: HTTP API {config.base_url}/v1  MCP {config.base_url}/mcp  "
        f"({len(registry.endpoints)} agents known)")
    telemetry.observe_reputation(registry.agent_scores)
    uvicorn.run(build_app(registry), host=config.host, port=config.port, log_level="warning")
    return 0


def revoke_for_operator(args: argparse.Namespace) -> int:
    """``mesh registry revoke``: the running registry refuses a key at once; with none running, its
    database records the revocation, which it reads when it next starts."""
    ws = Workspace(args.workspace)
    agent, kid = check_name(args.agent, "agent name"), check_kid(args.kid)
    ws.require()
    url = local_registry_url(ws, args.registry)
    body = {"reason": args.reason} if args.reason else {}
    answer = post_json(f"{url}/v1/agents/{agent}/keys/{kid}/revoke", body)
    if answer is not None:
        print(f"registry at {url}: key {kid} of {agent} {answer_status(answer)}")
        return 0
    from mesh.registry.config import RegistryConfig
    from mesh.registry.node import Registry

    registry = Registry.open(RegistryConfig.from_workspace(ws))
    new = registry.revoke(agent, kid, by="operator:cli", reason=args.reason)
    print(f"no registry at {url}; in the workspace's registry database, key {kid} of {agent} "
          + ("is now revoked" if new else "was already revoked"))
    return 0


@command("up")
def cmd_up(args: argparse.Namespace) -> int:
    from mesh.supervisor import run_up

    return run_up(Path(args.workspace).resolve(), args.host, args.port, agent_flags=["--dev"] if args.dev else [],
                  workers=args.workers)


def registry_url(args: argparse.Namespace) -> str:
    return args.registry.rstrip("/")


@command("ls")
def cmd_ls(args: argparse.Namespace) -> int:
    from mesh.tables import print_agents

    return print_agents(registry_url(args))


@command("discover")
def cmd_discover(args: argparse.Namespace) -> int:
    from mesh.tables import print_discover

    return print_discover(registry_url(args), " ".join(args.text), args.k)


@command("call")
def cmd_call(args: argparse.Namespace) -> int:
    from mesh.tables import print_call

    return print_call(registry_url(args), args.target, args.pairs)


@command("runs")
def cmd_runs(args: argparse.Namespace) -> int:
    from mesh.tables import print_runs

    if args.agent is not None:
        check_name(args.agent, "agent name")

    if args.runs_command == "show":
        from mesh.tables import print_run

        return print_run(registry_url(args), args.run_id)
    if args.runs_command == "verify":
        from mesh.tables import verify_run

        return verify_run(registry_url(args), args.run_id)
    return print_runs(registry_url(args), args.limit, args.agent, log=None if args.both_logs else "caller")


@command("approve")
def cmd_approve(args: argparse.Namespace) -> int:
    """``mesh approve ID``: a call waiting for approval; ``mesh approve AGENT SERVICE``: connected sandboxes."""
    if len(args.target) == 1:
        if args.base_url is not None:
            raise RegistryProblem("--base-url goes with `mesh approve AGENT SERVICE` (a sandbox), not a request ID")
        from mesh.tables import decide_approval

        return decide_approval(registry_url(args), args.target[0], "approve", args.note)
    if len(args.target) != 2:
        raise RegistryProblem("mesh approve takes a request ID (a waiting call), or AGENT SERVICE (connected "
                              "sandboxes), not more")
    from mesh.sandbox import commands

    agent, service = args.target
    return commands.approve(registry_url(args), agent, service, args.note, args.base_url)


@command("deny")
def cmd_deny(args: argparse.Namespace) -> int:
    from mesh.tables import decide_approval

    return decide_approval(registry_url(args), args.request_id, "deny", args.note)


@command("approvals")
def cmd_approvals(args: argparse.Namespace) -> int:
    from mesh.tables import print_approvals

    return print_approvals(registry_url(args), args.status)


@command("sandbox")
def cmd_sandbox(args: argparse.Namespace) -> int:
    from mesh.sandbox import commands

    url = registry_url(args)
    if args.sandbox_command == "create":
        return commands.create(url, args.agent, args.services, args.mode, args.ttl, args.config)
    if args.sandbox_command in ("show", "reset", "rm"):
        method, action = {"show": ("GET", ""), "reset": ("POST", "/reset"), "rm": ("DELETE", "")}[
            args.sandbox_command]
        return commands.show(url, method, args.agent, args.sandbox_id, action)
    return commands.listing(url, args.agent, args.removed)


@command("audit")
def cmd_audit(args: argparse.Namespace) -> int:
    from mesh.registry import audit

    ws = Workspace(args.workspace)
    try:
        if args.audit_command == "verify":
            return audit.command_verify(ws, file=args.file, jwks=args.jwks, registry_url=args.registry)
        return audit.command_export(ws, output=args.output, registry_url=args.registry)
    except audit.AuditCommandProblem as exc:
        raise RegistryProblem(str(exc)) from exc


@command("secrets")
def cmd_secrets(args: argparse.Namespace) -> int:
    from mesh.registry import credentials

    try:
        return credentials.command(Workspace(args.workspace), args)
    except credentials.CredentialProblem as exc:
        raise RegistryProblem(str(exc)) from exc


# -- signing in ----------------------------------------------------------------------------------------


@command("login")
def cmd_login(args: argparse.Namespace) -> int:
    from mesh.login import login

    me = login(Workspace(Path(args.workspace)), registry_url(args), client_id=args.client_id,
               device=not args.no_device, open_browser=not args.no_browser)
    user = me.get("user") or {}
    say(f"signed in to {registry_url(args)} as {user.get('email') or user.get('name') or me['id']} ({me['id']}), "
        f"{me.get('role') or 'no role'} in {me.get('org') or 'no organisation'}; the token is in {me['saved_to']}")
    return 0


@command("whoami")
def cmd_whoami(args: argparse.Namespace) -> int:
    from mesh.login import whoami

    return whoami(Workspace(Path(args.workspace)), registry_url(args))


@command("tokens")
def cmd_tokens(args: argparse.Namespace) -> int:
    from mesh import login

    workspace, registry = Workspace(Path(args.workspace)), registry_url(args)
    if args.tokens_command == "create":
        return login.tokens_create(workspace, registry, args.name, args.scope, args.days, args.org)
    if args.tokens_command == "revoke":
        return login.tokens_revoke(workspace, registry, args.token_id)
    return login.tokens_list(workspace, registry)


@command("project")
def cmd_project(args: argparse.Namespace) -> int:
    from mesh import projects

    workspace = Workspace(Path(args.workspace))
    if args.project_command == "use":
        try:
            path = projects.use(workspace, None if args.project == "-" else args.project)
        except ValueError as exc:
            raise RegistryProblem(str(exc)) from exc
        say(f"acting in {args.project if args.project != '-' else 'the default project'} ({path})")
        return 0
    print(projects.current(workspace) or "(none: the default project of your organisation)")
    return 0


# -- argument parsing ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", "-w", default=".", help="the workspace folder (default: current folder)")

    top = argparse.ArgumentParser(prog="mesh", description="A mesh of MCP agents with signed tools.")
    top.add_argument("--version", action="version", version=f"mesh {version('mcpmesh')}")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="scaffold a new workspace")
    p.add_argument("dir", help="the new workspace's folder (must not exist, or be empty)")

    p = sub.add_parser("sign", help="sign agents' manifests into manifests/", parents=[common])
    p.add_argument("names", nargs="*", help="agents to sign (default: all)")
    p.add_argument("--replace-keys", action="store_true", help="sign with new keys even if others are published")

    p = sub.add_parser("verify", help="check committed manifests against their published keys", parents=[common])
    p.add_argument("target", nargs="?", help="agent name or manifest path (default: every manifest)")

    keys = sub.add_parser("keys", help="list, rotate or revoke an agent's keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    p = keys_sub.add_parser("list", parents=[common], help="an agent's keys, their state and end")
    p.add_argument("name", help="the agent")
    p = keys_sub.add_parser("rotate", parents=[common], help="make a new active key; the old one verifies a while")
    p.add_argument("name", help="the agent")
    p.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP_SECONDS / 86400,
                   help="days the previous key stays valid (default 7)")
    p = keys_sub.add_parser("revoke", parents=[common], help="revoke a key now and tell the local registry")
    p.add_argument("name", help="the agent")
    p.add_argument("kid", help="the key id, as `mesh keys list` shows it")
    p.add_argument("--registry", default=None,
                   help="registry to notify (default: http://127.0.0.1:PORT, PORT from registry.toml, else 7300)")

    agent = sub.add_parser("agent", help="run or list agents")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True)
    agent_sub.add_parser("list", parents=[common], help="the agents of this workspace")
    p = agent_sub.add_parser("run", parents=[common], help="serve one agent over streamable HTTP or stdio")
    p.add_argument("name", help="the agent (agents/NAME.py)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.add_argument("--stdio", action="store_true", help="serve MCP over stdin/stdout (for IDE clients)")
    p.add_argument("--dev", action="store_true", help="re-sign on start instead of refusing changed tools")
    p.add_argument("--strict", action="store_true", help="serve only manifests signed by published keys")
    p.add_argument("--registry", default=os.environ.get("MESH_REGISTRY_URL"),
                   help="register with this registry and call other agents through it")

    registry = sub.add_parser("registry", help="run the registry node, or revoke a key as its operator")
    registry_sub = registry.add_subparsers(dest="registry_command", required=True)
    p = registry_sub.add_parser("run", parents=[common], help="serve the registry: HTTP API, MCP, JWKS")
    p.add_argument("--host", default=None, help="default: registry.toml, else 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: registry.toml, else 7300")
    p.add_argument("--strict", action="store_true", help="trust only keys published in manifests/")
    p.add_argument("--trust-local-keys", action="store_true",
                   help="also trust this workspace's local keys under .mesh/ (what `mesh up` does)")
    p.add_argument("--workers", type=int, default=1,
                   help="registry processes sharing the port (default 1; more than 1 needs PostgreSQL)")
    p = registry_sub.add_parser("revoke", parents=[common],
                                help="operator: refuse an agent's key (the running registry, else its database)")
    p.add_argument("agent", help="the agent")
    p.add_argument("kid", help="the key id to refuse")
    p.add_argument("--reason", default=None, help="why, kept in the registry's audit log")
    p.add_argument("--registry", default=None,
                   help="registry URL (default: http://127.0.0.1:PORT, PORT from registry.toml, else 7300)")

    p = sub.add_parser("up", parents=[common], help="run the registry and every agent of the workspace")
    p.add_argument("--host", default=None, help="default: registry.toml, else 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: registry.toml, else 7300")
    p.add_argument("--dev", action="store_true", help="agents re-sign on start instead of refusing changed tools")
    p.add_argument("--workers", type=int, default=1,
                   help="registry processes sharing the port (default 1; more than 1 needs PostgreSQL)")

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--registry", default=os.environ.get("MESH_REGISTRY_URL", "http://127.0.0.1:7300"),
                        help="registry URL (default: $MESH_REGISTRY_URL or http://127.0.0.1:7300)")
    sub.add_parser("ls", parents=[client], help="list agents, their status and reputation")
    p = sub.add_parser("discover", parents=[client], help="find tools by meaning")
    p.add_argument("text", nargs="+", help="what you want done, in words")
    p.add_argument("-k", type=int, default=10, help="how many tools (default 10)")
    p = sub.add_parser("call", parents=[client], help="call AGENT.TOOL key=value ... through the registry",
                       description="Arguments are read as HTTPie reads them: key=value gives a parameter that "
                                   "takes a string the text as typed (topic=1 is \"1\"), and any other parameter "
                                   "the value as JSON when it reads as JSON (k=3, tags=[1]); key:=json is "
                                   "always JSON (k:=3, name:='\"007\"').")
    p.add_argument("target", metavar="AGENT.TOOL", help="the tool, as `mesh ls` and `mesh discover` name it")
    p.add_argument("pairs", nargs="*", metavar="key=value|key:=json")
    p = sub.add_parser("runs", parents=[client], help="recent runs through the registry; show or verify one")
    p.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    p.add_argument("--agent", help="only calls to this agent")
    p.add_argument("--both-logs", action="store_true", help="show each call from both sides (caller and target)")
    runs_sub = p.add_subparsers(dest="runs_command")
    # --registry after the subcommand too; SUPPRESS keeps one given before it from being reset to the default.
    late_client = argparse.ArgumentParser(add_help=False)
    late_client.add_argument("--registry", default=argparse.SUPPRESS, help="registry URL")
    show = runs_sub.add_parser("show", parents=[late_client], help="one run in full, both sides of the call")
    show.add_argument("run_id", metavar="ID", help="the run's id, or its first 8 characters or more")
    verify = runs_sub.add_parser("verify", parents=[late_client],
                                 help="check a run's provenance against the registry's published key")
    verify.add_argument("run_id", metavar="ID", help="the run's id, or its first 8 characters or more")

    p = sub.add_parser("approve", parents=[client],
                       help="approve a waiting call (ID, from `mesh approvals`), or, as an operator, let AGENT's "
                            "connected sandboxes reach SERVICE (AGENT SERVICE)")
    p.add_argument("target", nargs="+", metavar="ID | AGENT SERVICE",
                   help="a request ID; or an agent and an OpenAPI spec of the workspace, by name")
    p.add_argument("--base-url", default=None, help="AGENT SERVICE only: the real endpoint it may reach "
                                                     "(default: the spec's server)")
    p.add_argument("--note", default=None, help="why, kept with the approval and in the audit log")
    p = sub.add_parser("deny", parents=[client], help="refuse a call waiting for approval")
    p.add_argument("request_id", metavar="ID", help="the request's id, from `mesh approvals`")
    p.add_argument("--note", default=None, help="why, told to the caller and kept in the audit log")
    p = sub.add_parser("approvals", parents=[client], help="calls waiting for a person's approval")
    p.add_argument("--status", default="requested",
                   choices=["requested", "approved", "denied", "expired", "executed", "all"],
                   help="requests in another state (default: those waiting)")
    sandbox = sub.add_parser("sandbox", help="list, create, show, reset or remove sandboxes")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    p = sandbox_sub.add_parser("ls", parents=[client], help="active sandboxes (--removed: expired, deleted too)")
    p.add_argument("--agent", default=None, help="only this agent's")
    p.add_argument("--removed", action="store_true")
    p = sandbox_sub.add_parser("create", parents=[client], help="a sandbox for AGENT with the named services")
    p.add_argument("agent", metavar="AGENT")
    p.add_argument("services", nargs="+", metavar="SERVICE")
    p.add_argument("--mode", choices=["mock", "emulated", "connected"], default="emulated")
    p.add_argument("--ttl", type=int, default=3600, help="seconds it lives (default 3600)")
    p.add_argument("--config", default=None, help="a JSON file with the rest of the body (services, secret_ref)")
    for name, text in (("show", "one sandbox"), ("reset", "start its services again from their seed data"),
                       ("rm", "remove it (its runs stay)")):
        p = sandbox_sub.add_parser(name, parents=[client], help=text)
        p.add_argument("agent", metavar="AGENT")
        p.add_argument("sandbox_id", metavar="ID")

    audit = sub.add_parser("audit", help="verify or export the registry's hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    p = audit_sub.add_parser("verify", parents=[common],
                             help="check the chain and its signed checkpoints (an export, a registry, or the "
                                  "workspace's database)")
    p.add_argument("--file", default=None, help="an export (JSON lines, `mesh audit export`) to check")
    p.add_argument("--jwks", default=None, help="the registry's JWKS, a file or URL (default: the registry's "
                                                "/.well-known/jwks.json, or the workspace's registry key)")
    p.add_argument("--registry", default=None, help="check a running registry's export (URL)")
    p = audit_sub.add_parser("export", parents=[common], help="write the log as JSON lines, with its checkpoints")
    p.add_argument("--output", "-o", default=None, help="file to write (default: standard output)")
    p.add_argument("--registry", default=None, help="export from a running registry (URL) instead of the database")

    secrets = sub.add_parser("secrets", help="credentials stored by reference (secret_ref): set, list, rotate")
    secrets_sub = secrets.add_subparsers(dest="secrets_command", required=True)
    p = secrets_sub.add_parser("set", parents=[common], help="store a new credential (value read from stdin)")
    p.add_argument("ref", help="the secret_ref that names it")
    p.add_argument("--agent", required=True, help="the agent it may be attached for ('*': any agent)")
    p.add_argument("--system", required=True, help="the target system it opens (e.g. github, warehouse-db)")
    p.add_argument("--description", default="", help="what it is, for people")
    p.add_argument("--from-env", default=None, metavar="VAR", help="read the value from this environment variable")
    secrets_sub.add_parser("ls", parents=[common], help="the credentials, their scope and versions (no values)")
    p = secrets_sub.add_parser("rotate", parents=[common],
                               help="store a new version (value from stdin); the previous stays until cutover")
    p.add_argument("ref", help="the secret_ref")
    p.add_argument("--from-env", default=None, metavar="VAR", help="read the value from this environment variable")
    p.add_argument("--cutover", action="store_true", help="destroy the previous version at once")
    p = secrets_sub.add_parser("cutover", parents=[common], help="destroy the version kept since the last rotation")
    p.add_argument("ref", help="the secret_ref")
    p = secrets_sub.add_parser("rm", parents=[common], help="remove a credential and every version of it")
    p.add_argument("ref", help="the secret_ref")

    from mesh.builder.cli import add_commands as add_builder_commands
    from mesh.learning.cli import add_commands as add_learning_commands
    from mesh.lm.cli import add_commands as add_lm_commands

    add_lm_commands(sub, common, COMMANDS)
    add_learning_commands(sub, common, client, COMMANDS)
    from mesh.registry.budgets_cli import add_commands as add_budget_commands

    add_budget_commands(sub, client, late_client, COMMANDS)
    add_builder_commands(sub, common, client, COMMANDS)

    p = sub.add_parser("login", parents=[client, common], help="sign in to a registry with its OpenID provider")
    p.add_argument("--no-device", action="store_true", help="use a loopback redirect even if a device code works")
    p.add_argument("--no-browser", action="store_true", help="print the sign-in address instead of opening it")
    p.add_argument("--client-id", default=None, help="the provider's client (default: what the registry names)")
    sub.add_parser("whoami", parents=[client, common], help="who the registry takes you for, and your roles")
    tokens = sub.add_parser("tokens", help="personal API tokens: create (shown once), list, revoke")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    p = tokens_sub.add_parser("create", parents=[client, common], help="a new token; its secret is printed once")
    p.add_argument("name", help="what the token is for, e.g. 'nightly report'")
    p.add_argument("--scope", action="append", help="registry:read, registry:invoke, registry:admin, a tool "
                                                    "scope, or * (repeat; default *)")
    p.add_argument("--days", type=float, default=None, help="how long it lives (default: [auth] token_days)")
    p.add_argument("--org", default=None, help="the organisation it acts in (default: the one you act in)")
    tokens_sub.add_parser("ls", parents=[client, common], help="your tokens (never their secrets)")
    project = sub.add_parser("project", help="the project (ORG/PROJECT) mesh commands act in")
    project_sub = project.add_subparsers(dest="project_command", required=True)
    p = project_sub.add_parser("use", parents=[common], help="act in ORG/PROJECT from now on ('-': the default)")
    p.add_argument("project", metavar="ORG/PROJECT")
    project_sub.add_parser("show", parents=[common], help="the current project")
    p = tokens_sub.add_parser("revoke", parents=[client, common], help="revoke a token now")
    p.add_argument("token_id", metavar="ID", help="the token's id, as `mesh tokens ls` shows it")
    return top


def _kids_as_values(argv: list[str]) -> list[str]:
    """A kid is base64url and may begin with '-' (about one in 32 does), which argparse would read as an
    option. Such a word goes last, after '--', so it stays the positional value it is (a kid is always
    the last positional of the commands that take one)."""
    if "--" in argv:
        return argv
    kids = [word for word in argv if word.startswith("-") and re.fullmatch(KID_PATTERN, word)]
    if not kids:
        return argv
    return [word for word in argv if word not in kids] + ["--", *kids]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(_kids_as_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        say(f"mesh: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

