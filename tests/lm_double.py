"""A model double: a small OpenAI-compatible chat server on loopback for the LM features' tests.

It speaks real HTTP (``POST /v1/chat/completions``, ``GET /v1/models``), so the tests run the real client
path: ``dspy.LM`` -> LiteLLM (or DSPy's native engine) -> this server. What it answers is decided by a
``respond(messages) -> str`` function; ``curriculum_agent`` is one that plays a ReAct agent on the mock
APIs' curriculum and, on purpose, knows nothing it is not told: it fills a field the task does not name
only when the *prompt* holds that knowledge, as a lesson line in the instructions or as a demonstration
of an earlier successful call. That is what lets a test show the learning loop carrying what it learned
back into the prompt. It checks mechanics, not a model's intelligence.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[list[dict[str, Any]]], str]


class ModelDouble:
    """Serve ``respond`` as an OpenAI-compatible model until ``stop``; every request is kept in ``requests``."""

    def __init__(self, respond: Responder, model: str = "double"):
        self.respond = respond
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": double.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                double.requests.append(body)
                double.headers.append({k.lower(): v for k, v in self.headers.items()})
                try:
                    text = double.respond(body.get("messages", []))
                except Exception as exc:
                    self._send(500, {"error": {"message": f"{type(exc).__name__}: {exc}"}})
                    return
                prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
                completion = max(1, len(text) // 4)
                self._send(200, {
                    "id": f"chatcmpl-{len(double.requests)}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", double.model),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion},
                })

            def _send(self, status: int, document: dict[str, Any]) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def env(self, key: str = "double-key", engine: str = "litellm") -> dict[str, str]:
        """``MESH_LM_*`` variables that point the mesh at this double."""
        return {"MESH_LM_MODEL": f"openai/{self.model}", "MESH_LM_BASE_URL": self.base_url,
                "MESH_LM_API_KEY": key, "MESH_LM_ENGINE": engine}

    def start(self) -> ModelDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ModelDouble:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def pong(messages: list[dict[str, Any]]) -> str:
    """Answers ``mesh lm check``'s question."""
    return "pong"


# -- a ReAct agent that only knows what its prompt tells it ------------------------------------------------

FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)", re.S)
LESSON = re.compile(r"- (\w+): always set `body\.(\w+)`(?: to `([^`]+)`)?(?: \(one of: ([^)]+)\))?")
TOOL = re.compile(r"\(\d+\) (\w+), whose description is <desc>(.*?)</desc>", re.S)
NAMED = re.compile(r"\b(?:named|called) ([\w-]+)")
ATTRIBUTE = re.compile(r"\b(?:whose|its) (\w+) (?:is|must be) ([\w-]+)")
STATED = re.compile(r"\bwith (?!its\b|that\b|the\b)(\w+) ([\w-]+)")


def fields(text: str) -> dict[str, str]:
    """The ``[[ ## name ## ]]`` sections of a ChatAdapter message."""
    return {name: value.strip() for name, value in FIELD.findall(text)}


def reply(**values: Any) -> str:
    parts = [f"[[ ## {name} ## ]]\n{json.dumps(v) if isinstance(v, dict) else v}" for name, v in values.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


def learned_fields(messages: list[dict[str, Any]], tool: str) -> dict[str, Any]:
    """What the prompt (instructions and demonstrations, not the current episode) says ``tool``'s body needs."""
    known: dict[str, Any] = {}
    system = messages[0].get("content", "") if messages else ""
    for name, field_name, value, choices in LESSON.findall(system):
        if name == tool:
            known[field_name] = value or choices.split(",")[0].strip()
    for message in messages[1:-1]:  # demonstrations: earlier turns of the conversation
        shown = fields(message.get("content", ""))
        calls = [(shown.get("next_tool_name"), shown.get("next_tool_args"))]
        calls += [(shown[key], shown.get(key.replace("tool_name", "tool_args"))) for key in shown
                  if key.startswith("tool_name_")]
        for name, args in calls:
            if name != tool or not args:
                continue
            try:
                body = json.loads(args).get("body") or {}
            except (ValueError, AttributeError):
                continue
            for field_name, value in body.items():
                known.setdefault(field_name, value)
    return known


def trajectory_steps(text: str) -> list[tuple[str, dict[str, Any], str]]:
    """(tool, args, observation) of each step of the current episode."""
    sections = fields(text)
    steps = []
    for index in range(50):
        if f"tool_name_{index}" not in sections:
            break
        try:
            args = json.loads(sections.get(f"tool_args_{index}", "{}"))
        except ValueError:
            args = {}
        steps.append((sections[f"tool_name_{index}"], args, sections.get(f"observation_{index}", "")))
    return steps


def pick_tool(tools: dict[str, str], verb: str) -> str | None:
    """The tool whose name starts with what the step asks for (create/get/delete/list)."""
    for name in tools:
        if name.lower().startswith(verb):
            return name
    return None


def plan(task: str) -> list[str]:
    """The steps a task's words ask for, in order."""
    lowered = task.lower()
    steps = []
    if re.search(r"\b(create|add|register)\b", lowered):
        steps.append("create")
    if re.search(r"\b(fetch|look it up|get it)\b", lowered):
        steps.append("get")
    if re.search(r"\b(delete|remove)\b", lowered):
        steps.append("delete")
    if re.search(r"\blist\b", lowered):
        steps.append("list")
    return steps


def observation_json(observation: str) -> Any:
    try:
        return json.loads(observation)
    except ValueError:
        return None


HEADING = "Lessons from earlier attempts (follow them):"


def reflect(prompt: str, as_json: bool) -> str:
    """GEPA's reflection (its ``new_instruction``): the current instructions plus the lesson lines its
    feedback carries, and nothing else."""
    current = fields(prompt).get("current_instruction", "")
    base = current.split("\n\n" + HEADING, 1)[0]
    known = [line for line in current.split(HEADING, 1)[-1].splitlines() if line.startswith("- ")] \
        if HEADING in current else []
    feedback = prompt.split("[[ ## examples_with_feedback ## ]]", 1)[-1]
    lines = list(dict.fromkeys(known + [m.group(0) for m in LESSON.finditer(feedback)]))
    instruction = base + ("\n\n" + HEADING + "\n" + "\n".join(lines) if lines else "")
    return json.dumps({"new_instruction": instruction}) if as_json else reply(new_instruction=instruction)


def curriculum_agent(messages: list[dict[str, Any]]) -> str:
    """Play the ReAct agent (and its answer extraction) for the curriculum's tasks, and GEPA's reflection."""
    system = messages[0].get("content", "") if messages else ""
    if "`new_instruction`" in system:
        return reflect(messages[-1].get("content", ""), "Outputs will be a JSON object" in system)
    current = fields(messages[-1].get("content", "")) if messages else {}
    task = current.get("task", "")
    steps = trajectory_steps(messages[-1].get("content", "")) if messages else []
    if "next_tool_name" not in system:  # the extraction step: answer from the trajectory
        return reply(reasoning="Read the answer off the trajectory.", answer=answer_of(task, steps))
    tools = dict(TOOL.findall(system))
    wanted = plan(task)
    done = len(steps)
    if steps and (steps[-1][2].startswith(("error", "Execution error")) or '"status": 4' in steps[-1][2]):
        return reply(next_thought="The call failed; I stop here.", next_tool_name="finish", next_tool_args={})
    if done >= len(wanted):
        return reply(next_thought="Done.", next_tool_name="finish", next_tool_args={})
    step = wanted[done]
    tool = pick_tool(tools, step) or "finish"
    arguments: dict[str, Any] = {}
    if step == "create":
        body: dict[str, Any] = {}
        named = NAMED.search(task)
        if named:
            body["name"] = named.group(1)
        for pattern in (ATTRIBUTE, STATED):
            for field_name, value in pattern.findall(task):
                body[field_name] = value
        for field_name, value in learned_fields(messages, tool).items():
            body.setdefault(field_name, value)
        arguments = {"body": body}
    elif step in ("get", "delete"):
        created = observation_json(steps[0][2]) if steps else None
        item = (created or {}).get("body") if isinstance(created, dict) else None
        parameter = re.search(r"path parameters?: (\w+)", tools.get(tool, ""))
        if isinstance(item, dict) and parameter:
            arguments = {"path_params": {parameter.group(1): item.get("id")}}
    elif step == "list":
        attribute = ATTRIBUTE.search(task)
        arguments = {"query": {attribute.group(1): attribute.group(2)}} if attribute else {}
    return reply(next_thought=f"Next: {step}.", next_tool_name=tool, next_tool_args=arguments)


def answer_of(task: str, steps: list[tuple[str, dict[str, Any], str]]) -> str:
    lowered = task.lower()
    bodies = [(observation_json(obs) or {}).get("body") for _, _, obs in steps if observation_json(obs)]
    if "how many" in lowered:
        listed = next((b for b in reversed(bodies) if isinstance(b, list)), None)
        return str(len(listed)) if listed is not None else "unknown"
    if " id" in lowered:
        named = NAMED.search(task)
        for body in bodies:
            items = body if isinstance(body, list) else [body]
            for item in items:
                if isinstance(item, dict) and (not named or item.get("name") == named.group(1)) and "id" in item:
                    return str(item["id"])
        return "unknown"
    return "done"


if __name__ == "__main__":  # serve the curriculum double, e.g. to run bench/bench_learning.py's mechanics
    import time

    with ModelDouble(curriculum_agent) as served:
        print(" ".join(f"{name}={value}" for name, value in served.env().items()), flush=True)
        while True:
            time.sleep(3600)
