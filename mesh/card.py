"""The A2A agent card: what an agent offers, in A2A v1.0 terms, signed as the specification §8.4 says.

Each tool becomes a skill. The card names one interface, the A2A JSON-RPC binding that ``mesh.a2a``
serves, so a client is never sent to an endpoint that does not answer.

Signatures follow §8.4: the payload is the RFC 8785 canonical JSON of the card without ``signatures``;
each signature is a detached JWS ``{"protected", "signature"}`` whose protected header holds ``alg``,
``kid``, ``typ: "JOSE"`` and ``jku``, one per key that is still valid (so verifiers keep working through
a rotation). Two kinds of verifier must agree on the payload: ones that canonicalize the JSON as
received, and a2a-sdk, which first parses the card into its protobuf ``AgentCard`` and serializes it
back. ``build_card`` therefore returns the card in that round-tripped form, and ``sign_card`` refuses a
card that is not in it.

A plain text message (no data part) calls the agent's text tool, if it has one: its only tool, when that
tool takes a single string and cannot destroy anything (``text_tool``). Its skill and the card then list
``text/plain`` among their input modes. Otherwise the agent asks for input, naming its tools (``mesh.a2a``).

A registry admits an agent only with a card that holds up (``fetch_verified_card``): signed by a key it
trusts for the agent, naming the agent, served from the agent's own origin, and offering exactly the
skills its signed tools give.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx
from a2a.types import AgentCard
from a2a.utils.errors import InvalidParamsError
from a2a.utils.proto_utils import validate_proto_required_fields
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError

from mesh.keys import KeyProblem, SigningKey, TrustStore
from mesh.manifest import canonical

CARD_PATH = "/.well-known/agent-card.json"
CARD_TYP = "JOSE"  # what §8.4 asks for in the protected header
PROTOCOL_VERSION = "1.0"
JSONRPC_BINDING = "JSONRPC"
INPUT_MODES = ["application/json"]  # a data part: {"tool": ..., "arguments": {...}}
STRUCTURED_OUTPUT_MODES = ["application/json", "text/plain"]  # structured content + text content
TEXT_OUTPUT_MODES = ["text/plain"]
TEXT_INPUT_MODES = [*INPUT_MODES, "text/plain"]  # the text tool's: a plain text message calls it too
MAX_CARD_BYTES = 1 << 20


class CardProblem(Exception):
    """An agent card that is malformed or whose signatures must not be trusted."""


class CardMissing(CardProblem):
    """The agent serves no card at all (HTTP 404): it offers no A2A binding."""


# -- building ---------------------------------------------------------------------------------------


def build_card(
    *, name: str, description: str, version: str, base_url: str, tools: list[dict[str, Any]]
) -> dict[str, Any]:
    """An unsigned A2A v1.0 AgentCard for an agent serving ``tools`` (wire tool dicts, optional "scopes")."""
    text = text_tool(tools)
    draft = {
        "name": name,
        "description": description,
        "version": version,
        "supportedInterfaces": [
            {
                "url": base_url.rstrip("/") + "/a2a",
                "protocolBinding": JSONRPC_BINDING,
                "protocolVersion": PROTOCOL_VERSION,
            }
        ],
        # One tool call is one result, and no push notifications are sent: say so.
        "capabilities": {"streaming": False, "pushNotifications": False},
        "defaultInputModes": TEXT_INPUT_MODES if text else INPUT_MODES,
        "defaultOutputModes": STRUCTURED_OUTPUT_MODES,
        "skills": [skill(tool, takes_text=text is not None and tool["name"] == text[0])
                   for tool in sorted(tools, key=lambda tool: tool["name"])],
    }
    return normal_form(draft)


def skill(tool: dict[str, Any], *, takes_text: bool = False) -> dict[str, Any]:
    """The AgentSkill for one MCP tool: its id is the tool name a caller puts in the data part."""
    name = tool["name"]
    annotations = tool.get("annotations") or {}
    entry: dict[str, Any] = {
        "id": name,
        "name": tool.get("title") or annotations.get("title") or name,
        "description": tool.get("description") or f"MCP tool {name}",
        "tags": _tags(annotations, tool.get("scopes") or []),
        "inputModes": TEXT_INPUT_MODES if takes_text else INPUT_MODES,
        "outputModes": STRUCTURED_OUTPUT_MODES if tool.get("outputSchema") else TEXT_OUTPUT_MODES,
    }
    examples = (tool.get("inputSchema") or {}).get("examples") or []
    if examples:
        # A2A examples are strings: show the exact data part that calls the tool.
        entry["examples"] = [canonical({"tool": name, "arguments": ex}).decode() for ex in examples]
    return entry


def text_argument(tool: dict[str, Any]) -> str | None:
    """The argument a plain text message fills: the tool's one string parameter that is required (or its only
    parameter), every other one optional. None when the tool takes no such single string."""
    schema = tool.get("inputSchema") or {}
    properties = schema.get("properties") or {}
    required = schema.get("required") or []
    if not required and len(properties) == 1:
        required = list(properties)  # its only parameter, though optional
    if len(required) != 1 or required[0] not in properties:
        return None
    return required[0] if (properties[required[0]] or {}).get("type") == "string" else None


def text_tool(tools: Iterable[dict[str, Any]]) -> tuple[str, str] | None:
    """(tool, argument) that a plain text message calls: the agent's only tool, when it takes a single string
    and cannot destroy anything (read-only, or declared not destructive). With several tools a text could
    mean any of them, so none is guessed; the agent asks which instead."""
    tools = list(tools)
    if len(tools) != 1:
        return None
    tool = tools[0]
    annotations = tool.get("annotations") or {}
    harmless = annotations.get("readOnlyHint") is True or annotations.get("destructiveHint") is False
    argument = text_argument(tool)
    return (tool["name"], argument) if harmless and argument else None


def _tags(annotations: dict[str, Any], scopes: list[str]) -> list[str]:
    tags = ["mcp-tool"]  # A2A requires at least one tag
    if annotations.get("readOnlyHint"):
        tags.append("read-only")
    elif annotations.get("destructiveHint"):
        tags.append("destructive")
    if annotations.get("idempotentHint"):
        tags.append("idempotent")
    tags.extend(f"scope:{scope}" for scope in sorted(scopes))
    return tags


def normal_form(card: dict[str, Any]) -> dict[str, Any]:
    """The card as a2a-sdk's ``AgentCard`` sees it: parsed (unknown fields rejected), checked, re-serialized.

    Raises ``CardProblem`` if the card is not a valid A2A v1.0 AgentCard.
    """
    try:
        message = ParseDict(card, AgentCard())
        validate_proto_required_fields(message)
    except ParseError as exc:
        raise CardProblem(f"not an A2A v1.0 AgentCard: {exc}") from exc
    except InvalidParamsError as exc:
        missing = ", ".join(error["field"] for error in (exc.data or {}).get("errors", []))
        raise CardProblem(f"agent card lacks required fields: {missing}") from exc
    return _without_empty(MessageToDict(message))


def _without_empty(value: Any) -> Any:
    """Drop empty strings, lists and objects, as a2a-sdk does before it canonicalizes a card."""
    if isinstance(value, dict):
        kept = {key: _without_empty(item) for key, item in value.items()}
        return {key: item for key, item in kept.items() if item not in ("", [], {})}
    if isinstance(value, list):
        return [item for item in map(_without_empty, value) if item not in ("", [], {})]
    return value


# -- signing and verifying --------------------------------------------------------------------------


def signed_payload(card: dict[str, Any]) -> bytes:
    """The bytes every card signature covers: RFC 8785 canonical JSON of the card without ``signatures``."""
    return canonical({key: value for key, value in card.items() if key != "signatures"})


def sign_card(card: dict[str, Any], keys: list[SigningKey], jku: str) -> dict[str, Any]:
    """The card with ``signatures``: one detached JWS per key, ``jku`` naming the JWKS that holds them."""
    if not keys:
        raise CardProblem("no valid key to sign the agent card with")
    unsigned = {key: value for key, value in card.items() if key != "signatures"}
    if normal_form(unsigned) != unsigned:
        raise CardProblem("agent card is not in a2a-sdk's normal form (build it with build_card)")
    payload = canonical(unsigned)
    signatures = []
    for key in keys:
        protected, _, signature = key.sign(payload, CARD_TYP, {"jku": jku}).split(".")
        signatures.append({"protected": protected, "signature": signature})
    return {**unsigned, "signatures": signatures}


def verify_card(card: dict[str, Any], trust: TrustStore, *, now: float | None = None) -> list[str]:
    """Check the card's signatures against ``trust``; return the kids that verified.

    As with manifests: every signature by a usable trusted key must verify, at least one must exist,
    and signatures by unknown, revoked or expired keys are tolerated beside a good one.
    """
    try:
        return trust.verify_signatures(signed_payload(card), card.get("signatures"), typ=CARD_TYP, now=now)
    except KeyProblem as exc:
        raise CardProblem(f"agent card: {exc}") from exc



# -- admitting an agent's card ------------------------------------------------------------------------


def agent_base_url(endpoint: str) -> str:
    """Where an agent serves its card and A2A binding, from its MCP endpoint: a mesh agent serves MCP at
    ``BASE/mcp``, so BASE; any other endpoint, its origin."""
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    base = path.removesuffix("/mcp") if path.endswith("/mcp") else ""
    return f"{parts.scheme}://{parts.netloc}{base}"


def card_url(endpoint: str) -> str:
    """The URL of the agent card of the agent whose MCP endpoint is ``endpoint``."""
    return agent_base_url(endpoint) + CARD_PATH


def verify_agent_card(
    card: Any, trust: TrustStore, *, agent: str, endpoint: str, tools: Iterable[dict[str, Any]],
    now: float | None = None,
) -> list[str]:
    """Check the card an agent serves before admitting it; return the kids whose signatures verified.

    ``trust`` holds the keys the registry admits the agent's manifest with; ``tools`` are its signed tools
    (e.g. ``manifest.tools.values()``: wire tool dicts with their scopes). The card must be an A2A v1.0
    AgentCard, verify under ``trust`` (§8.4), name ``agent``, send clients only to the origin it is served
    from, and offer exactly the skills those tools give. Raises ``CardProblem`` saying what is wrong.
    """
    if not isinstance(card, dict):
        raise CardProblem("the agent card is not a JSON object")
    normal_form({key: value for key, value in card.items() if key != "signatures"})
    kids = verify_card(card, trust, now=now)
    if card.get("name") != agent:
        raise CardProblem(f"the agent card names agent {str(card.get('name'))[:80]!r}, not {agent!r}")
    origin = _origin(endpoint)
    interfaces = card.get("supportedInterfaces", [])
    foreign = [i.get("url", "") for i in interfaces if _origin(i.get("url", "")) != origin]
    if foreign:
        raise CardProblem(f"the agent card sends clients to {foreign[0][:200]!r}, not to {origin}")
    if not any(i.get("protocolBinding") == JSONRPC_BINDING for i in interfaces):
        raise CardProblem(f"the agent card names no {JSONRPC_BINDING} interface")
    tools = list(tools)
    expected = {s["id"]: s for s in build_card(name=agent, description="-", version="-", base_url=origin,
                                                tools=tools)["skills"]}
    offered = {s.get("id"): s for s in card.get("skills", [])}
    problems = [f"skill {sid!r} is not a signed tool" for sid in sorted(set(offered) - set(expected), key=str)]
    problems += [f"signed tool {sid!r} has no skill" for sid in sorted(set(expected) - set(offered))]
    problems += [f"skill {sid!r} differs from its signed tool in {', '.join(_differences(offered[sid], spec))}"
                 for sid, spec in sorted(expected.items()) if sid in offered and offered[sid] != spec]
    if problems:
        raise CardProblem("the agent card's skills do not match its signed tools: " + "; ".join(problems[:5]))
    return kids


async def fetch_agent_card(endpoint: str, *, client: Any = None, timeout: float = 10.0) -> dict[str, Any]:
    """GET the card of the agent whose MCP endpoint is ``endpoint`` (redirects are not followed).

    ``client`` is an httpx-style ``AsyncClient`` (httpx or httpx2, e.g. the registry's pooled one); without
    one, a client is made for this request. Raises ``CardMissing`` for a 404, ``CardProblem`` otherwise."""
    url = card_url(endpoint)
    try:
        if client is None:
            async with httpx.AsyncClient() as own:
                response = await own.get(url, timeout=timeout, follow_redirects=False)
        else:
            response = await client.get(url, timeout=timeout, follow_redirects=False)
    except Exception as exc:  # httpx and httpx2 errors alike: the card could not be fetched
        raise CardProblem(f"cannot fetch the agent card at {url}: {exc!r}") from exc
    if response.status_code == 404:
        raise CardMissing(f"no agent card at {url} (HTTP 404)")
    if response.status_code != 200:
        raise CardProblem(f"the agent card at {url} answered HTTP {response.status_code}")
    if len(response.content) > MAX_CARD_BYTES:
        raise CardProblem(f"the agent card at {url} is larger than {MAX_CARD_BYTES} bytes")
    try:
        return response.json()
    except ValueError as exc:
        raise CardProblem(f"the agent card at {url} is not JSON: {exc}") from exc


async def fetch_verified_card(
    endpoint: str, trust: TrustStore, *, agent: str, tools: Iterable[dict[str, Any]], client: Any = None,
) -> dict[str, Any]:
    """Fetch the card of the agent at ``endpoint`` and check it (``verify_agent_card``); return the card.

    Raises ``CardProblem`` (``CardMissing`` when there is no card) with the reason to refuse the agent."""
    card = await fetch_agent_card(endpoint, client=client)
    try:
        verify_agent_card(card, trust, agent=agent, endpoint=endpoint, tools=tools)
    except CardProblem as exc:
        raise CardProblem(f"{exc} (card at {card_url(endpoint)})") from exc
    return card


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _differences(offered: Any, expected: dict[str, Any]) -> list[str]:
    if not isinstance(offered, dict):
        return ["its form"]
    return sorted(key for key in set(offered) | set(expected) if offered.get(key) != expected.get(key))
