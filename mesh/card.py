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
"""

from __future__ import annotations

from typing import Any

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


class CardProblem(Exception):
    """An agent card that is malformed or whose signatures must not be trusted."""


# -- building ---------------------------------------------------------------------------------------


def build_card(
    *, name: str, description: str, version: str, base_url: str, tools: list[dict[str, Any]]
) -> dict[str, Any]:
    """An unsigned A2A v1.0 AgentCard for an agent serving ``tools`` (wire tool dicts, optional "scopes")."""
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
        "defaultInputModes": INPUT_MODES,
        "defaultOutputModes": STRUCTURED_OUTPUT_MODES,
        "skills": [skill(tool) for tool in sorted(tools, key=lambda tool: tool["name"])],
    }
    return normal_form(draft)


def skill(tool: dict[str, Any]) -> dict[str, Any]:
    """The AgentSkill for one MCP tool: its id is the tool name a caller puts in the data part."""
    name = tool["name"]
    annotations = tool.get("annotations") or {}
    entry: dict[str, Any] = {
        "id": name,
        "name": tool.get("title") or annotations.get("title") or name,
        "description": tool.get("description") or f"MCP tool {name}",
        "tags": _tags(annotations, tool.get("scopes") or []),
        "inputModes": INPUT_MODES,
        "outputModes": STRUCTURED_OUTPUT_MODES if tool.get("outputSchema") else TEXT_OUTPUT_MODES,
    }
    examples = (tool.get("inputSchema") or {}).get("examples") or []
    if examples:
        # A2A examples are strings: show the exact data part that calls the tool.
        entry["examples"] = [canonical({"tool": name, "arguments": ex}).decode() for ex in examples]
    return entry


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

