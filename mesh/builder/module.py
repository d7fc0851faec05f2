"""The built agent on disk: ``agents/NAME.py``, its instructions pack and its build record beside it, signed.

``agents/NAME.py`` is code a person would keep: one wrapper per mesh tool of the kit, typed from the tool's
pinned input schema and calling it through ``agent.mesh.invoke``; the workspace kits it mounts; and the
role tool that answers with the pack. ``NAME.pack.json`` is the instructions pack; ``NAME.build.json`` is
the brief, blueprint, kit (taken and left, with why), role tasks and rubric, and the validation report:
committed with the agent, read by the registry for ``GET /v1/agents/NAME``. An existing agent is never
overwritten unless ``force`` says so. Signing is ``mesh sign NAME``'s.
"""

from __future__ import annotations

import json
import keyword
import sys
from pathlib import Path
from typing import Any

from mesh.builder.blueprint import Draft
from mesh.builder.kit import Kit
from mesh.builder.pack import RESERVED, ROLE_TOOL, Pack, docstring_text, environment, guides
from mesh.builder.tasks import RoleTasks
from mesh.names import check_name
from mesh.workspace import Workspace

JSON_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list",
              "object": "dict"}


class AgentExists(Exception):
    """The agent to write is there already and overwriting was not asked for."""


def files_of(ws: Workspace, name: str) -> dict[str, Path]:
    check_name(name, "agent name")
    return {"module": ws.agents_dir / f"{name}.py", "pack": ws.agents_dir / f"{name}.pack.json",
            "build": ws.agents_dir / f"{name}.build.json"}


def _python_type(schema: dict[str, Any]) -> tuple[str, bool]:
    """(Python annotation, whether null is allowed) for a property's JSON Schema."""
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    nullable = "null" in kinds
    named = [JSON_TYPES[k] for k in kinds if k in JSON_TYPES]
    return (named[0] if len(named) == 1 else "Any"), nullable


def signature_of(schema: dict[str, Any]) -> tuple[str, str]:
    """(parameter list, arguments expression) of a wrapper for a tool with this input schema. Properties
    that cannot be Python parameters make it take one ``arguments`` object instead."""
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    if any(not n.isidentifier() or keyword.iskeyword(n) or n in RESERVED | {"arguments"} for n in properties):
        return "arguments: dict[str, Any]", "dict(arguments)"
    first, rest, optional = [], [], []
    for name, prop in properties.items():
        annotation, nullable = _python_type(prop if isinstance(prop, dict) else {})
        if name in required:
            first.append(f"{name}: {annotation}")
        elif isinstance(prop, dict) and "default" in prop:
            rest.append(f"{name}: {annotation}{' | None' if nullable and annotation != 'Any' else ''} = "
                        f"{prop['default']!r}")
        else:
            rest.append(f"{name}: {annotation}{' | None' if annotation != 'Any' else ''} = None")
            optional.append(name)
    pairs = ", ".join(f"{n!r}: {n}" for n in properties)
    expression = "{" + pairs + "}"
    if optional:  # a parameter left out is not sent as null
        expression = "{key: value for key, value in " + expression + ".items() if value is not None}"
    return ", ".join(first + rest), expression


def agent_source(draft: Draft, kit: Kit, pack: Pack) -> str:
    """The text of ``agents/NAME.py``."""
    tools = []
    by_ref = {t.ref: t for t in kit.taken}
    for guide in guides(kit):
        if guide.source != "mesh":
            continue
        tool = by_ref[guide.ref]
        signature, arguments = signature_of(tool.input_schema)
        hints = tool.annotations
        tools.append({"name": guide.function, "function": guide.function, "signature": signature,
                      "arguments": arguments, "owner": tool.owner, "tool": tool.tool, "ref": tool.ref,
                      "description": docstring_text(tool.description) or f"{tool.ref} of the mesh.",
                      "read_only": bool(hints.get("readOnlyHint", False)),
                      "destructive": bool(hints.get("destructiveHint", not hints.get("readOnlyHint", False))),
                      "idempotent": bool(hints.get("idempotentHint", False)),
                      "open_world": bool(hints.get("openWorldHint", True))})
    kit_reasons = {name: next(t.why for t in kit.taken if t.owner == name and t.source == "workspace")
                   for name in kit.kits()}
    blueprint = draft.blueprint
    description = f"{blueprint.role}" + (f" ({blueprint.domain})" if blueprint.domain else "") + \
        (f": {blueprint.objectives[0]}" if blueprint.objectives else "")
    return environment().get_template("agent.py.j2").render(
        name=draft.name, brief=docstring_text(draft.brief), blueprint=blueprint, description=description,
        tools=tools, kits=kit.kits(), kit_reasons=kit_reasons, role_tool=ROLE_TOOL, version=pack.version)


def write_agent(ws: Workspace, draft: Draft, kit: Kit, pack: Pack, tasks: RoleTasks, *,
                force: bool = False) -> dict[str, Path]:
    """Write the module, pack and build record; ``AgentExists`` if the agent is there and not ``force``."""
    ws.require()
    files = files_of(ws, draft.name)
    if files["module"].exists() and not force:
        raise AgentExists(f"agents/{draft.name}.py exists; choose another name or pass force (--force) to "
                          "overwrite it")
    source = agent_source(draft, kit, pack)
    compile(source, str(files["module"]), "exec")  # a template bug shows here, before anything is written
    build = {"name": draft.name, "brief": draft.brief, "blueprint": draft.blueprint.model_dump(mode="json"),
             "answers": draft.answers, "kit": kit.model_dump(mode="json"), "prompt_version": pack.version,
             "tasks": tasks.model_dump(mode="json"), "validation": None}
    files["pack"].write_text(json.dumps(pack.model_dump(mode="json"), indent=2) + "\n")
    files["build"].write_text(json.dumps(build, indent=2) + "\n")
    files["module"].write_text(source)
    return files


async def sign(ws: Workspace, name: str) -> None:
    """Sign the agent as ``mesh sign NAME`` does, from the module just written (not one imported earlier)."""
    from mesh.signing import sign_agent

    fresh = Workspace(ws.root)
    sys.modules.pop(f"{fresh._package}.agents.{name}", None)
    await sign_agent(fresh, name)


def read_build(ws: Workspace, name: str) -> dict[str, Any] | None:
    """The build record of an agent the builder made (None for any other agent)."""
    path = files_of(ws, name)["build"]
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def save_validation(ws: Workspace, name: str, report: dict[str, Any]) -> None:
    build = read_build(ws, name)
    if build is None:
        raise FileNotFoundError(f"agents/{name}.build.json: {name} was not made by the builder")
    build["validation"] = report
    files_of(ws, name)["build"].write_text(json.dumps(build, indent=2) + "\n")


def summary(build: dict[str, Any] | None) -> dict[str, Any] | None:
    """What ``GET /v1/agents/NAME`` shows of a build: brief, blueprint, kit, prompt version, validation."""
    if build is None:
        return None
    kit = build.get("kit") or {}
    return {"brief": build.get("brief"), "blueprint": build.get("blueprint"),
            "kit": {"taken": [{"tool": f"{t['owner']}.{t['tool']}", "why": t["why"]} for t in kit.get("taken", [])],
                    "left": [{"tool": f"{t['owner']}.{t['tool']}", "why": t["why"]} for t in kit.get("left", [])]},
            "prompt_version": build.get("prompt_version"), "validation": build.get("validation")}
