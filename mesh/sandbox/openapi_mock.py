"""Mock APIs served from OpenAPI 3.0/3.1 documents.

So that agents and people can develop against an API before it exists, a ``MockAPI`` answers each
operation of a spec the way the real service would promise to: it checks path parameters, query
parameters and the request body against their schemas (with ``jsonschema``; errors name the field),
then returns the first 2xx response, taken from the spec's ``example``/``examples`` when it has one
and otherwise generated from the response schema. Generation is seeded from the operation id and the
arguments, so the same call on a fresh mock always gives the same answer.

A small in-memory store keeps the mock coherent across calls: a resource created by ``POST /pets`` is
what ``GET /pets/{id}`` and ``GET /pets`` then return, ``PUT``/``PATCH`` change it, and after a
``DELETE`` it answers 404. Stored data is only returned when it still validates against the response
schema, so every answer keeps the spec's promise.

    >>> api = MockAPI.from_file("docs/openapi/petstore.yaml")        # doctest: +SKIP
    >>> api.call("getPet", path_params={"petId": 7}).to_dict()       # doctest: +SKIP
    {'status': 200, 'headers': {'content-type': 'application/json'}, 'body': {...}}

Only local ``$ref``s (``#/...``) are followed; header and cookie parameters are described but not
checked, since a call carries neither.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import math
import random
import re
import re._parser as re_parser  # the stdlib's own regex parser: turns a `pattern` into a matching string
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, UnknownType, ValidationError
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

Schema = dict[str, Any]

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
BASE_URI = "urn:mcpmesh:openapi"  # where the whole document lives in the validators' registry
MAX_DEPTH = 12  # generation gives up below this depth (only reached by required recursion)
ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
WORDS = (
    "amber", "brisk", "cedar", "delta", "ember", "fable", "garnet", "harbor", "ivory", "juniper",
    "kestrel", "lumen", "maple", "nimbus", "onyx", "pebble", "quartz", "raven", "sierra", "tundra",
)  # fmt: skip


class OpenAPIError(ValueError):
    """A spec that cannot be served, or a call the spec does not allow; the message names the problem."""


@dataclass(frozen=True)
class Parameter:
    """A path, query, header or cookie parameter; ``schema`` may still hold ``$ref``s."""

    name: str
    location: str
    required: bool
    schema: Schema
    description: str = ""


@dataclass(frozen=True)
class Operation:
    """One method on one path, with its parameters merged from the path item and the operation."""

    operation_id: str
    method: str
    path: str
    summary: str
    description: str
    parameters: tuple[Parameter, ...]
    body_schema: Schema | None
    body_required: bool
    body_content_type: str | None
    responses: dict[str, dict[str, Any]]
    deprecated: bool = False
    # Security requirements, the operation's own or else the document's: alternatives, each naming the
    # schemes that must all be satisfied; an empty alternative makes credentials optional.
    security: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class MockResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "headers": self.headers, "body": self.body}


# -- loading ---------------------------------------------------------------------------------------


def load_spec(path: Path | str, name: str | None = None) -> MockAPI:
    """Read an OpenAPI 3.x document (JSON or YAML) into a ``MockAPI`` named after the file."""
    return MockAPI.from_file(path, name)


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OpenAPIError(f"{path}: cannot read: {exc}") from exc
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise OpenAPIError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    return _jsonable(raw)


def _jsonable(node: Any) -> Any:
    """YAML turns ``200:`` into an int key and ``2024-01-01`` into a date; JSON has neither."""
    if isinstance(node, dict):
        return {str(key): _jsonable(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_jsonable(item) for item in node]
    if isinstance(node, dt.date | dt.datetime):
        return node.isoformat()
    return node


_LITERAL_KEYWORDS = ("example", "examples", "default", "enum", "const")  # values are data, not schemas
_SCHEMA_MAPS = ("properties", "patternProperties", "schemas", "$defs")  # every value is a schema


def _normalize_30(node: Any, *, schema_map: bool = False) -> Any:
    """Rewrite OpenAPI 3.0's schema dialect into JSON Schema 2020-12 (``nullable``, boolean exclusives)."""
    if isinstance(node, list):
        return [_normalize_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    if schema_map:
        return {key: _normalize_30(value) for key, value in node.items()}
    out = {
        key: value if key in _LITERAL_KEYWORDS else _normalize_30(value, schema_map=key in _SCHEMA_MAPS)
        for key, value in node.items()
    }
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if out.get(exclusive) is True and bound in out:
            out[exclusive] = out.pop(bound)
        elif out.get(exclusive) is False:
            del out[exclusive]
    return out


class _Document:
    """The spec as one JSON value, and the way to follow its local ``$ref``s."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    def lookup(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise OpenAPIError(f"only local $refs (#/...) are supported, not {ref!r}")
        node: Any = self.data
        for token in filter(None, ref[1:].split("/")):
            key = unquote(token).replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(key)] if isinstance(node, list) else node[key]
            except (KeyError, IndexError, ValueError, TypeError):
                raise OpenAPIError(f"$ref {ref!r} points at nothing") from None
        return node

    def resolve(self, node: Any) -> Any:
        """Follow a chain of ``$ref``s; sibling keywords of a ``$ref`` (allowed in 3.1) are kept."""
        seen: set[str] = set()
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in seen:
                raise OpenAPIError(f"$ref {ref!r} refers to itself")
            seen.add(ref)
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            node = self.lookup(ref)
            if siblings and isinstance(node, dict):
                node = {**node, **siblings}
        return node

    def inline(self, node: Any, stack: tuple[str, ...] = ()) -> Any:
        """A copy with every ``$ref`` replaced by its target; a recursive one becomes a ``$comment``."""
        if isinstance(node, list):
            return [self.inline(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in stack:
                return {"$comment": f"recursive: same as {ref}"}
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            target = self.inline(self.lookup(ref), (*stack, ref))
            return {**target, **self.inline(siblings, stack)} if isinstance(target, dict) else target
        return {key: self.inline(value, stack) for key, value in node.items()}


# -- the mock --------------------------------------------------------------------------------------


class MockAPI:
    """Every operation of one OpenAPI document, answered with validated, deterministic mock responses."""

    def __init__(
        self, document: dict[str, Any], name: str = "api", *, stateful: bool = True, source: str | None = None
    ):
        try:
            self._load(document, name)
        except OpenAPIError as exc:
            raise OpenAPIError(f"{source or name}: {exc}") from exc
        self.stateful = stateful
        self._store = _ResourceStore()
        self._lock = threading.Lock()

    def _load(self, document: dict[str, Any], name: str) -> None:
        version = str(document.get("openapi", ""))
        if not version.startswith("3."):
            found = f"found swagger {document['swagger']}" if "swagger" in document else "no 'openapi' field"
            raise OpenAPIError(f"not an OpenAPI 3.x document ({found})")
        if version.startswith("3.0"):
            document = _normalize_30(document)
        self.name = name
        self.openapi_version = version
        self.doc = _Document(document)
        info = document.get("info") or {}
        self.title: str = info.get("title", name)
        self.version: str = str(info.get("version", ""))
        self.description: str = info.get("description", "")
        self._operations = {op.operation_id: op for op in self._read_operations()}
        self._registry = Registry().with_resource(BASE_URI, Resource(document, specification=DRAFT202012))
        self._validators: dict[str, Draft202012Validator] = {}

    @classmethod
    def from_file(cls, path: Path | str, name: str | None = None, *, stateful: bool = True) -> MockAPI:
        path = Path(path)
        document = _read_document(path)
        if not isinstance(document, dict):
            raise OpenAPIError(f"{path}: the document is not a mapping")
        return cls(document, name or path.stem, stateful=stateful, source=str(path))

    # -- reading the spec --------------------------------------------------------------------------

    def _read_operations(self) -> Iterable[Operation]:
        seen: dict[str, str] = {}
        for path, item in (self.doc.data.get("paths") or {}).items():
            item = self.doc.resolve(item)
            shared = item.get("parameters", [])
            for method in METHODS:
                if method not in item:
                    continue
                op = self._read_operation(path, method, item[method], shared)
                where = f"{method.upper()} {path}"
                if op.operation_id in seen:
                    raise OpenAPIError(
                        f"operationId {op.operation_id!r} is used by both {seen[op.operation_id]} and {where}"
                    )
                seen[op.operation_id] = where
                yield op

    def _read_operation(self, path: str, method: str, raw: dict[str, Any], shared: list[Any]) -> Operation:
        params: dict[tuple[str, str], Parameter] = {}
        for entry in [*shared, *raw.get("parameters", [])]:  # the operation's own override the path's
            param = self.doc.resolve(entry)
            schema = param.get("schema")
            if schema is None and param.get("content"):
                schema = next(iter(param["content"].values())).get("schema")
            params[(param["name"], param["in"])] = Parameter(
                name=param["name"],
                location=param["in"],
                required=bool(param.get("required", param["in"] == "path")),
                schema=schema if isinstance(schema, dict) else {},
                description=param.get("description", ""),
            )
        body = self.doc.resolve(raw["requestBody"]) if "requestBody" in raw else None
        content_type, media = _pick_media(body.get("content") if body else None)
        responses = {code: self.doc.resolve(resp) for code, resp in (raw.get("responses") or {}).items()}
        return Operation(
            operation_id=raw.get("operationId") or _derived_id(method, path),
            method=method.upper(),
            path=path,
            summary=raw.get("summary", ""),
            description=raw.get("description", ""),
            parameters=tuple(params.values()),
            body_schema=media.get("schema") if media else None,
            body_required=bool(body and body.get("required")),
            body_content_type=content_type,
            responses=responses,
            deprecated=bool(raw.get("deprecated")),
            security=_requirements(raw.get("security", self.doc.data.get("security"))),
        )

    def operations(self) -> list[Operation]:
        return list(self._operations.values())

    def operation(self, operation_id: str) -> Operation:
        try:
            return self._operations[operation_id]
        except KeyError:
            known = ", ".join(self._operations) or "none"
            raise OpenAPIError(f"{self.name} has no operation {operation_id!r} (known: {known})") from None

    def describe(self, operation_id: str) -> dict[str, Any]:
        """The operation with every schema inlined, so a caller needs nothing else to build a call."""
        op = self.operation(operation_id)
        responses = {}
        for code, response in op.responses.items():
            content_type, media = _pick_media(response.get("content"))
            responses[code] = {"description": response.get("description", "")}
            if media is not None:
                responses[code] |= {"content_type": content_type, "schema": self.doc.inline(media.get("schema", {}))}
        body = None
        if op.body_schema is not None:
            body = {
                "required": op.body_required,
                "content_type": op.body_content_type,
                "schema": self.doc.inline(op.body_schema),
            }
        return {
            "operation_id": op.operation_id,
            "method": op.method,
            "path": op.path,
            "summary": op.summary,
            "description": op.description,
            "deprecated": op.deprecated,
            "parameters": [
                {
                    "name": p.name,
                    "in": p.location,
                    "required": p.required,
                    "description": p.description,
                    "schema": self.doc.inline(p.schema),
                }
                for p in op.parameters
            ],
            "request_body": body,
            "responses": responses,
        }

    # -- calling -----------------------------------------------------------------------------------

    def call(
        self,
        operation_id: str,
        path_params: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        body: Any = None,
    ) -> MockResponse:
        """Validate the arguments, then answer with the operation's first 2xx response."""
        op = self.operation(operation_id)
        path_params = self._check_params(op, "path", path_params or {})
        query = self._check_params(op, "query", query or {})
        self._check_body(op, body)
        with self._lock:
            return self._respond(op, path_params, query, body)

    def reset(self) -> None:
        """Forget what earlier calls created, changed or deleted."""
        with self._lock:
            self._store = _ResourceStore()

    def _check_params(self, op: Operation, location: str, given: dict[str, Any]) -> dict[str, Any]:
        declared = {p.name: p for p in op.parameters if p.location == location}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            known = ", ".join(declared) or "none"
            raise OpenAPIError(f"{op.operation_id}: unknown {location} parameter {unknown[0]!r} (declared: {known})")
        checked = {}
        for name, param in declared.items():
            if name not in given:
                if param.required:
                    raise OpenAPIError(f"{op.operation_id}: missing required {location} parameter {name!r}")
                continue
            value = self._coerce(given[name], param.schema)
            self._validate(param.schema, value, f"{location} parameter {name!r}", op)
            checked[name] = value
        return checked

    def _check_body(self, op: Operation, body: Any) -> None:
        if body is None:
            if op.body_required:
                raise OpenAPIError(f"{op.operation_id}: a request body is required")
        elif op.body_content_type is None:
            raise OpenAPIError(f"{op.operation_id}: {op.method} {op.path} takes no request body")
        elif op.body_schema is not None:
            self._validate(op.body_schema, body, "body", op)

    def _coerce(self, value: Any, schema: Schema) -> Any:
        """Accept parameters as an HTTP server sees them (strings), turning ``"10"`` into 10."""
        schema = self.doc.resolve(schema)
        kind = _kind(schema)
        if kind == "array":
            items = value.split(",") if isinstance(value, str) else value
            items = items if isinstance(items, list) else [items]
            return [self._coerce(item, schema.get("items") or {}) for item in items]
        if not isinstance(value, str):
            return value
        try:
            if kind == "integer" and re.fullmatch(r"[-+]?\d+", value.strip()):
                return int(value)
            if kind == "number":
                return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
        if kind == "boolean" and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value

    def _validator(self, schema: Schema) -> Draft202012Validator:
        key = json.dumps(schema, sort_keys=True, default=str)  # a spec has finitely many distinct schemas
        if key not in self._validators:
            self._validators[key] = Draft202012Validator(
                _absolute_refs(schema),
                registry=self._registry,
                format_checker=Draft202012Validator.FORMAT_CHECKER,
            )
        return self._validators[key]

    def _errors(self, schema: Schema, instance: Any) -> list[ValidationError]:
        try:
            return list(self._validator(schema).iter_errors(instance))
        except (SchemaError, UnknownType, Unresolvable) as exc:
            raise OpenAPIError(f"{self.name}: the spec has a schema that cannot be used: {exc}") from exc

    def _validate(self, schema: Schema, instance: Any, where: str, op: Operation) -> None:
        errors = sorted(self._errors(schema, instance), key=lambda e: _field(where, e.absolute_path))
        if errors:
            problems = "; ".join(f"{_field(where, e.absolute_path)}: {e.message}" for e in errors[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            raise OpenAPIError(f"{op.operation_id}: invalid {problems}{more}")

    def _valid(self, schema: Schema | None, instance: Any) -> bool:
        return schema is None or not self._errors(schema, instance)

    # -- answering ---------------------------------------------------------------------------------

    def _respond(self, op: Operation, path_params: dict[str, Any], query: dict[str, Any], body: Any) -> MockResponse:
        concrete = _fill(op.path, path_params)
        target = _item_target(op.path, concrete)
        if target and target in self._store.deleted and op.method != "PUT":
            return self._not_found(op, concrete, path_params, query)
        if self.stateful and op.method == "POST" and target is None and isinstance(body, dict):
            return self._create(op, concrete, path_params, query, body)
        status, response = _success(op)
        rng = _seeded(op.operation_id, path_params, query, body)
        answer = self._answer(status, response, rng)
        if not self.stateful:
            return answer
        schema = _response_schema(response)
        store = self._store
        if op.method == "GET" and target is None and store.items(concrete):
            listed = store.items(concrete)
            if isinstance(query.get("limit"), int):
                listed = listed[: max(query["limit"], 0)]
            if self._valid(schema, listed):
                return MockResponse(status, listed, answer.headers)
        if target is None:
            return answer
        collection, key = target
        current = store.get(collection, key)
        if op.method == "GET" and current is not None and self._valid(schema, current):
            return MockResponse(status, copy.deepcopy(current), answer.headers)
        if op.method in ("PUT", "PATCH") and isinstance(body, dict) and isinstance(answer.body, dict):
            base = current if op.method == "PATCH" and current is not None else answer.body
            record = self._overlay(base, body, schema)
            store.put(collection, key, record)
            return MockResponse(status, copy.deepcopy(record), answer.headers)
        if op.method == "DELETE":
            store.delete(collection, key)
        return answer

    def _create(
        self, op: Operation, collection: str, path_params: dict[str, Any], query: dict[str, Any], body: dict[str, Any]
    ) -> MockResponse:
        """POST to a collection: the created resource is the generated answer with the body laid over it."""
        status, response = _success(op)
        schema = _response_schema(response)
        size = len(self._store.items(collection))
        identity = ("id", self._item_param(op.path))
        for attempt in range(8):  # a fresh identity when the seeded one is taken; examples would repeat it
            rng = _seeded(op.operation_id, path_params, query, body, size, attempt)
            answer = self._answer(status, response, rng, use_examples=attempt == 0)
            if not isinstance(answer.body, dict):
                return answer
            record = self._overlay(answer.body, body, schema)
            key = next((str(record[f]) for f in identity if isinstance(record.get(f), str | int)), None)
            if key is None:
                return MockResponse(status, record, answer.headers)
            if self._store.get(collection, key) is None:
                self._store.put(collection, key, record)
                return MockResponse(status, copy.deepcopy(record), answer.headers)
        return MockResponse(status, record, answer.headers)

    def _item_param(self, collection: str) -> str:
        """``petId`` for ``/pets``, when the spec also has ``/pets/{petId}``."""
        for path in self.doc.data.get("paths") or {}:
            found = re.fullmatch(re.escape(collection.rstrip("/")) + r"/\{([^}/]+)\}", path)
            if found:
                return found.group(1)
        return "id"

    def _overlay(self, base: dict[str, Any], patch: dict[str, Any], schema: Schema | None) -> dict[str, Any]:
        """``base`` with the caller's fields where the response schema has them; ``base`` if that breaks it."""
        resolved = self.doc.resolve(schema) if schema else {}
        properties = resolved.get("properties")
        merged = dict(base)
        for name, value in patch.items():
            prop = self.doc.resolve(properties.get(name, {})) if properties else {}
            if (properties is None or name in properties) and not prop.get("readOnly"):
                merged[name] = copy.deepcopy(value)
        return merged if self._valid(schema, merged) else base

    def _answer(
        self, status: int, response: dict[str, Any] | None, rng: random.Random, *, use_examples: bool = True
    ) -> MockResponse:
        if response is None:
            return MockResponse(status, None, {})
        content_type, media = _pick_media(response.get("content"))
        headers = {}
        for name, header in (response.get("headers") or {}).items():
            header = self.doc.resolve(header)
            value = self._generate(header.get("schema") or {"type": "string"}, rng, use_examples)
            headers[name.lower()] = value if isinstance(value, str) else json.dumps(value)
        if content_type:
            headers["content-type"] = content_type
        body = self._example(media, rng, use_examples) if media is not None else None
        return MockResponse(status, body, headers)

    def _example(self, media: dict[str, Any], rng: random.Random, use_examples: bool) -> Any:
        """The spec's own example when it has one, else one generated from the schema."""
        if use_examples and "example" in media:
            return copy.deepcopy(media["example"])
        for example in (media.get("examples") or {}).values() if use_examples else ():
            example = self.doc.resolve(example)
            if isinstance(example, dict) and "value" in example:
                return copy.deepcopy(example["value"])
        schema = media.get("schema")
        return self._generate(schema, rng, use_examples) if schema is not None else None

    def _generate(self, schema: Schema, rng: random.Random, use_examples: bool = True) -> Any:
        return _Generator(self.doc, rng, self._valid, use_examples=use_examples).value(schema)

    def _not_found(
        self, op: Operation, concrete: str, path_params: dict[str, Any], query: dict[str, Any]
    ) -> MockResponse:
        response = op.responses.get("404")
        if response is not None and response.get("content"):
            return self._answer(404, response, _seeded(op.operation_id, path_params, query, "404"))
        return MockResponse(404, {"message": f"{concrete} was deleted"}, {"content-type": "application/json"})


# -- the resource store ----------------------------------------------------------------------------


class _ResourceStore:
    """Resources by concrete collection path and identity, and the ones deleted since."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[str, Any]] = {}
        self.deleted: set[tuple[str, str]] = set()

    def items(self, collection: str) -> list[Any]:
        return [copy.deepcopy(record) for record in self.collections.get(collection, {}).values()]

    def get(self, collection: str, key: str) -> Any:
        return self.collections.get(collection, {}).get(key)

    def put(self, collection: str, key: str, record: Any) -> None:
        self.collections.setdefault(collection, {})[key] = copy.deepcopy(record)
        self.deleted.discard((collection, key))

    def delete(self, collection: str, key: str) -> None:
        self.collections.get(collection, {}).pop(key, None)
        self.deleted.add((collection, key))


# -- example generation ----------------------------------------------------------------------------


class _Generator:
    """Builds one value that satisfies a schema: types, formats, enums, bounds, lengths, patterns.

    All choices come from ``rng``, so a seeded generator is deterministic. Once a ``$ref`` recurs, the
    generator switches to minimal values (required properties only, the fewest array items) so that
    recursive schemas end.
    """

    def __init__(
        self, doc: _Document, rng: random.Random, valid: Callable[[Schema, Any], bool], *, use_examples: bool = True
    ):
        self.doc = doc
        self.rng = rng
        self.valid = valid
        self.use_examples = use_examples

    def value(self, schema: Any, refs: tuple[str, ...] = (), minimal: bool = False) -> Any:
        if not isinstance(schema, dict) or len(refs) > MAX_DEPTH:
            return None
        ref = schema.get("$ref")
        if isinstance(ref, str):
            minimal = minimal or ref in refs
            refs = (*refs, ref)
            schema = self.doc.resolve(schema)
        if schema.get("allOf"):
            schema = self._merge([{k: v for k, v in schema.items() if k != "allOf"}, *schema["allOf"]])
        if self.use_examples and "example" in schema:
            return copy.deepcopy(schema["example"])
        if self.use_examples and isinstance(schema.get("examples"), list) and schema["examples"]:
            return copy.deepcopy(schema["examples"][0])
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            choices = [v for v in schema["enum"] if v is not None] or schema["enum"]
            return copy.deepcopy(self.rng.choice(choices))
        if "default" in schema:
            return copy.deepcopy(schema["default"])
        for keyword in ("oneOf", "anyOf"):
            if schema.get(keyword):
                return self._choice(schema, keyword, refs, minimal)
        kind = _kind(schema)
        if kind == "object":
            return self._object(schema, refs, minimal)
        if kind == "array":
            return self._array(schema, refs, minimal)
        if kind in ("integer", "number"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _merge(self, schemas: list[Any]) -> Schema:
        """``allOf`` as one schema: properties and required lists are united, other keywords overlaid."""
        merged: Schema = {}
        for part in schemas:
            part = self.doc.resolve(part)
            if part.get("allOf"):
                part = self._merge([{k: v for k, v in part.items() if k != "allOf"}, *part["allOf"]])
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
                else:
                    merged[key] = value
        return merged

    def _choice(self, schema: Schema, keyword: str, refs: tuple[str, ...], minimal: bool) -> Any:
        """The first branch whose value the whole schema accepts (a oneOf value must match only one)."""
        rest = {k: v for k, v in schema.items() if k != keyword}
        branches = sorted(schema[keyword], key=lambda b: self.doc.resolve(b).get("type") == "null")
        first = None
        for index, branch in enumerate(branches):
            candidate = self.value(self._merge([rest, branch]) if rest else branch, refs, minimal)
            if index == 0:
                first = candidate
            if self.valid(schema, candidate):
                return candidate
        return first

    def _object(self, schema: Schema, refs: tuple[str, ...], minimal: bool) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties") or {}
        required = [name for name in schema.get("required", []) if isinstance(name, str)]
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if name not in required and (minimal or self.doc.resolve(sub).get("writeOnly")):
                continue
            out[name] = self.value(sub, refs, minimal)
        for name in required:
            if name not in out:
                out[name] = self.value(extra if isinstance(extra, dict) else {"type": "string"}, refs, minimal)
        wanted = schema.get("minProperties", 0 if properties or minimal else 1)
        if isinstance(extra, dict):
            while len(out) < wanted:
                out[f"key{len(out) + 1}"] = self.value(extra, refs, minimal)
        return out

    def _array(self, schema: Schema, refs: tuple[str, ...], minimal: bool) -> list[Any]:
        low = schema.get("minItems", 0)
        high = schema.get("maxItems")
        prefix = schema.get("prefixItems") or []
        count = max(low, 0 if minimal else max(self.rng.randint(1, 2), len(prefix)))
        if schema.get("items") is False:  # a tuple: nothing after the prefix
            count = min(count, len(prefix))
        if high is not None:
            count = min(count, high)
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        out: list[Any] = []
        seen: set[str] = set()
        for _ in range(count * 5 if schema.get("uniqueItems") else count):
            if len(out) == count:
                break
            sub = prefix[len(out)] if len(out) < len(prefix) else items
            item = self.value(sub, refs, minimal)
            key = json.dumps(item, sort_keys=True)
            if schema.get("uniqueItems") and key in seen:
                continue
            seen.add(key)
            out.append(item)
        return out

    def _number(self, schema: Schema, *, integer: bool) -> int | float:
        low, high = schema.get("minimum"), schema.get("maximum")
        ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        step = schema.get("multipleOf")
        if integer:
            bounds_low = [b for b in (low, None if ex_low is None else math.floor(ex_low) + 1) if b is not None]
            bounds_high = [b for b in (high, None if ex_high is None else math.ceil(ex_high) - 1) if b is not None]
            lo = math.ceil(max(bounds_low)) if bounds_low else None
            hi = math.floor(min(bounds_high)) if bounds_high else None
        else:
            lo = max(b for b in (low, ex_low) if b is not None) if low is not None or ex_low is not None else None
            hi = min(b for b in (high, ex_high) if b is not None) if high is not None or ex_high is not None else None
        if lo is None:
            lo = 1 if hi is None or hi >= 1 else hi - 100
        if hi is None:
            hi = max(lo + 100, 1000)
        if step:
            multiples = range(math.ceil(lo / step), math.floor(hi / step) + 1)
            tries = [self.rng.choice(multiples) for _ in range(5)] + list(multiples[:5]) if multiples else []
            for k in tries:  # float steps: k * 0.1 is not always a multiple of 0.1 for jsonschema
                candidate = k * step if isinstance(step, int) else round(k * step, 10)
                if self.valid({k: v for k, v in schema.items() if k in _NUMBER_KEYWORDS}, candidate):
                    return int(candidate) if integer else candidate
            return lo
        if integer:
            return self.rng.randint(lo, hi)
        candidate = round(self.rng.uniform(lo, hi), 2)
        if not lo <= candidate <= hi or candidate in (ex_low, ex_high):
            candidate = (lo + hi) / 2
        return candidate

    def _string(self, schema: Schema) -> str:
        rng = self.rng
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            made = _from_pattern(pattern, rng)
            if made is not None:
                return made
        fmt = schema.get("format")
        if fmt in _FORMATS:
            return _FORMATS[fmt](rng)
        text = f"{rng.choice(WORDS)} {rng.choice(WORDS)}"
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if len(text) < low:
            text += "x" * (low - len(text))
        return text[:high] if high is not None else text


_NUMBER_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def _datetime(rng: random.Random) -> dt.datetime:
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return start + dt.timedelta(seconds=rng.randrange(366 * 86400))


_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date-time": lambda rng: _datetime(rng).isoformat().replace("+00:00", "Z"),
    "date": lambda rng: _datetime(rng).date().isoformat(),
    "time": lambda rng: _datetime(rng).strftime("%H:%M:%SZ"),
    "email": lambda rng: f"{rng.choice(WORDS)}{rng.randint(1, 99)}@example.com",
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "uri": lambda rng: f"https://example.com/{rng.choice(WORDS)}",
    "url": lambda rng: f"https://example.com/{rng.choice(WORDS)}",
    "hostname": lambda rng: f"{rng.choice(WORDS)}.example.com",
    "ipv4": lambda rng: f"192.0.2.{rng.randint(1, 254)}",
    "ipv6": lambda rng: f"2001:db8::{rng.randint(1, 0xFFFF):x}",
    "byte": lambda rng: base64.b64encode(rng.choice(WORDS).encode()).decode(),
    "binary": lambda rng: rng.choice(WORDS),
    "password": lambda rng: "".join(rng.choice(ALNUM) for _ in range(12)),
}


def _from_pattern(pattern: str, rng: random.Random) -> str | None:
    """A string matching ``pattern``, built from the stdlib's parse of it; None when that fails."""
    try:
        made = _emit(re_parser.parse(pattern), rng)
        return made if re.search(pattern, made) else None
    except (re.error, RecursionError, ValueError, TypeError):
        return None


def _emit(items: Any, rng: random.Random) -> str:
    parts: list[str] = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            parts.append(chr(arg))
        elif name == "NOT_LITERAL":
            parts.append("a" if arg != ord("a") else "b")
        elif name == "ANY":
            parts.append(rng.choice(ALNUM))
        elif name == "IN":
            allowed = [ch for ch in ALNUM + "-_ ." if _in_set(ch, arg)]
            parts.append(rng.choice(allowed) if allowed else _first_in_set(arg))
        elif name == "CATEGORY":
            parts.append(_category(arg, rng))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = arg
            parts.extend(_emit(sub, rng) for _ in range(rng.randint(low, min(high, low + 3))))
        elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
            parts.append(_emit(arg[-1], rng))
        elif name == "BRANCH":
            parts.append(_emit(rng.choice(arg[1]), rng))
    return "".join(parts)


def _in_set(ch: str, items: list[tuple[Any, Any]]) -> bool:
    negate = any(str(op) == "NEGATE" for op, _ in items)
    hit = False
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            hit = hit or ord(ch) == arg
        elif name == "RANGE":
            hit = hit or arg[0] <= ord(ch) <= arg[1]
        elif name == "CATEGORY":
            hit = hit or re.fullmatch(_CATEGORY_CLASSES.get(str(arg), "(?!)"), ch) is not None
    return hit != negate


def _first_in_set(items: list[tuple[Any, Any]]) -> str:
    for op, arg in items:
        if str(op) == "LITERAL":
            return chr(arg)
        if str(op) == "RANGE":
            return chr(arg[0])
    return "a"


_CATEGORY_CLASSES = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
}


def _category(category: Any, rng: random.Random) -> str:
    pool = [ch for ch in ALNUM + " -" if re.fullmatch(_CATEGORY_CLASSES.get(str(category), "(?!)"), ch)]
    return rng.choice(pool) if pool else "a"


# -- small helpers ---------------------------------------------------------------------------------


def _kind(schema: Schema) -> str:
    """The JSON type to produce: the first non-null declared type, else one inferred from keywords."""
    declared = schema.get("type")
    if isinstance(declared, list):
        declared = next((t for t in declared if t != "null"), "null" if declared else None)
    if isinstance(declared, str):
        return declared
    if "properties" in schema or "additionalProperties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if "minimum" in schema or "maximum" in schema or "multipleOf" in schema:
        return "number"
    return "string"


def _pick_media(content: dict[str, Any] | None) -> tuple[str | None, dict[str, Any] | None]:
    """JSON when offered (``application/json``, then any ``+json``), else the first media type."""
    if not content:
        return None, None
    ranked = sorted(content, key=lambda t: (t.split(";")[0] != "application/json", not t.endswith("+json")))
    media = content[ranked[0]]
    return ranked[0], media if isinstance(media, dict) else {}


def _success(op: Operation) -> tuple[int, dict[str, Any] | None]:
    """The lowest explicit 2xx response, else ``2XX``, else ``default`` (answered as 200)."""
    explicit = sorted(code for code in op.responses if code.isdigit() and 200 <= int(code) < 300)
    if explicit:
        return int(explicit[0]), op.responses[explicit[0]]
    for code, response in op.responses.items():
        if code.upper() == "2XX":
            return 200, response
    return 200, op.responses.get("default")


def _response_schema(response: dict[str, Any] | None) -> Schema | None:
    _, media = _pick_media(response.get("content") if response else None)
    return media.get("schema") if media else None


def _absolute_refs(node: Any) -> Any:
    """A copy whose local ``$ref``s point into the registry's copy of the whole document."""
    if isinstance(node, list):
        return [_absolute_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: BASE_URI + value if key == "$ref" and isinstance(value, str) and value.startswith("#")
        else _absolute_refs(value)
        for key, value in node.items()
    }  # fmt: skip


def _field(where: str, path: Iterable[Any]) -> str:
    """``body.tags[0].name``: where in the input a validation error sits."""
    return where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _seeded(*parts: Any) -> random.Random:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _requirements(security: Any) -> tuple[tuple[str, ...], ...]:
    if not isinstance(security, list):
        return ()
    return tuple(tuple(alternative) for alternative in security if isinstance(alternative, dict))


def _derived_id(method: str, path: str) -> str:
    """An operationId for operations without one: ``get_pets_petId`` for ``GET /pets/{petId}``."""
    words = re.findall(r"[A-Za-z0-9]+", path)
    return "_".join([method.lower(), *words])


def _fill(template: str, path_params: dict[str, Any]) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: str(path_params.get(m.group(1), m.group(0))), template)


def _item_target(template: str, concrete: str) -> tuple[str, str] | None:
    """For a path ending in ``/{param}``: its collection's concrete path and the item's identity."""
    if not re.search(r"/\{[^}/]+\}$", template):
        return None
    collection, _, key = concrete.rpartition("/")
    return collection or "/", key
