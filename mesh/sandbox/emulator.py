"""The services of a sandbox, answering as a real API would: the sandbox agent runs these.

A ``Service`` is one OpenAPI spec inside one sandbox, answering every call with ``{status, headers,
body}`` the way an HTTP API answers, errors included:

- **mock** mode: spec-driven answers (examples, or data generated from the schemas), remembering nothing.
- **emulated** mode: a closed world (``EmulatedAPI``): only what was seeded or created exists; a created
  resource can be read back, listed (filtered by its fields, a page at a time), updated and deleted,
  and anything else is a 404.

In both modes, in this order: injected failures (a share of calls answered 429 or another status,
latency added to every call), credentials (where the spec asks for security and the sandbox lists
``credentials``, a call without an accepted one is a 401), fixed responses configured for an operation,
then the arguments checked against the spec — a bad one is answered 422 (or 400) with a body that names
the field — and finally the answer. Nothing here opens a socket: no attempt leaves the machine.

``SandboxHost`` keeps the services of every sandbox the agent has seen, per (id, revision): a reset
(a new revision) starts again from the seed data.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import random
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from mesh.sandbox.config import SandboxRef, ServiceConfig
from mesh.sandbox.openapi_mock import (
    MockAPI,
    MockResponse,
    OpenAPIError,
    Operation,
    _fill,
    _Generator,
    _item_target,
    _read_document,
    _response_schema,
    _seeded,
    _success,
)

PAGE_SIZE_PARAMS = ("limit", "page_size", "pageSize", "per_page", "perPage")
CURSOR_PARAMS = ("cursor", "page_token", "pageToken", "after", "starting_after")
OFFSET_PARAMS = ("offset", "skip")
PAGE_PARAMS = ("page",)
SEARCH_PARAMS = ("q", "search", "query")
NEXT_FIELDS = ("next_cursor", "nextCursor", "next_page_token", "nextPageToken", "next")
TOTAL_FIELDS = ("total", "total_count", "totalCount", "count")
MESSAGE_FIELDS = ("message", "detail", "error_description", "error")
_PAGING = frozenset(PAGE_SIZE_PARAMS + CURSOR_PARAMS + OFFSET_PARAMS + PAGE_PARAMS)


class EmulatedAPI(MockAPI):
    """A stateful, closed-world mock: only what was seeded or created exists (a ``MockAPI`` invents
    answers for what it never saw)."""

    def seed(self, collection: str, records: list[dict[str, Any]]) -> None:
        """Put records into a collection (``/pets``), keyed like created ones (``id``, or ``petId``)."""
        identity = ("id", self._item_param(collection))
        for index, record in enumerate(records):
            key = next((str(record[f]) for f in identity if isinstance(record.get(f), str | int)), str(index + 1))
            self._store.put(collection, key, record)

    def state(self) -> dict[str, list[Any]]:
        """Every collection that holds something, by its concrete path: what a task's check reads."""
        with self._lock:
            return {path: self._store.items(path) for path in sorted(self._store.collections)
                    if self._store.collections[path]}

    def _respond(self, op: Operation, path_params: dict[str, Any], query: dict[str, Any], body: Any) -> MockResponse:
        concrete = _fill(op.path, path_params)
        missing = self._missing_parent(op, path_params)
        if missing is not None:
            return self._not_found(op, missing, path_params, query)
        status, response = _success(op)
        target = _item_target(op.path, concrete)
        if target is None:
            if op.method == "POST" and isinstance(body, dict):
                return self._create(op, concrete, path_params, query, body)
            if op.method == "GET" and self._array_of(self.doc.resolve(_response_schema(response) or {}))[1]:
                return self._list(op, concrete, query, status, response)
            return super()._respond(op, path_params, query, body)
        collection, key = target
        current = self._store.get(collection, key)
        if current is None and op.method in ("GET", "PATCH", "DELETE", "HEAD"):
            return self._not_found(op, concrete, path_params, query)
        if op.method == "GET":
            headers = self._answer(status, response, _seeded(op.operation_id, path_params)).headers
            return MockResponse(status, copy.deepcopy(current), headers)
        return super()._respond(op, path_params, query, body)

    def _generate(self, schema: dict[str, Any], rng: random.Random, use_examples: bool = True) -> Any:
        """Only what a schema requires: a created resource holds what the caller gave, not invented extras."""
        return _Generator(self.doc, rng, self._valid, use_examples=False).value(schema, (), True)

    def _create(self, op: Operation, collection: str, path_params: dict[str, Any], query: dict[str, Any],
                body: dict[str, Any]) -> MockResponse:
        """As the real service would: the body's defaults applied, and a nested resource linked to its
        parent (``taskId`` in the path fills a ``task_id`` or ``taskId`` field)."""
        filled = dict(body)
        schema = self.doc.resolve(op.body_schema or {})
        for name, sub in (schema.get("properties") or {}).items():
            sub = self.doc.resolve(sub)
            if name not in filled and "default" in sub:
                filled[name] = copy.deepcopy(sub["default"])
        for name, value in path_params.items():
            for field in (name, re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()):
                filled.setdefault(field, value)
        return super()._create(op, collection, path_params, query, filled)

    def _missing_parent(self, op: Operation, path_params: dict[str, Any]) -> str | None:
        """For ``/tasks/{taskId}/comments``: ``/tasks/7`` when task 7 does not exist (a 404 then)."""
        segments = op.path.rstrip("/").split("/")
        for end in range(len(segments) - 1, 1, -1):
            parent = "/".join(segments[:end])
            if not parent.endswith("}") or not any(other.path == parent for other in self.operations()):
                continue
            target = _item_target(parent, _fill(parent, path_params))
            if target is not None and self._store.get(*target) is None:
                return _fill(parent, path_params)
        return None

    def _list(self, op: Operation, collection: str, query: dict[str, Any], status: int,
              response: dict[str, Any] | None) -> MockResponse:
        """The stored items of a collection, filtered by query parameters that name their fields, a page at
        a time (limit, cursor / offset / page), shaped as the spec's response (a bare array, or an object
        holding the array with the next cursor and a total)."""
        schema = self.doc.resolve(_response_schema(response) or {})
        array_field, item_schema = self._array_of(schema)
        fields = set((self.doc.resolve(item_schema).get("properties") or {}) if item_schema else ())
        items = self._store.items(collection)
        for name, value in query.items():
            if name in _PAGING:
                continue
            if name in SEARCH_PARAMS and name not in fields:
                items = [item for item in items if _mentions(item, str(value))]
            elif name in fields or any(isinstance(item, dict) and name in item for item in items):
                items = [item for item in items if isinstance(item, dict) and _matches(item.get(name), value)]
        size = self._page_size(op, query)
        offset = _offset(query, size)
        page = items[offset:offset + size] if size is not None else items[offset:]
        next_cursor = _cursor(offset + len(page)) if size is not None and offset + len(page) < len(items) else None
        answer = self._answer(status, response, _seeded(op.operation_id, collection, "list"))
        headers = dict(answer.headers)
        if "x-total-count" in headers:
            headers["x-total-count"] = str(len(items))
        if array_field is None:
            return MockResponse(status, page, headers)
        body = answer.body if isinstance(answer.body, dict) else {}
        body[array_field] = page
        properties = schema.get("properties") or {}
        for name in NEXT_FIELDS:
            if name in properties:
                body[name] = next_cursor
        for name in TOTAL_FIELDS:
            if name in properties and _kind_of(self.doc.resolve(properties[name])) in ("integer", "number"):
                body[name] = len(items)
        return MockResponse(status, body, headers)

    def _array_of(self, schema: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
        """(None, item schema) for an array answer; (field, item schema) for an object holding one array."""
        if _kind_of(schema) == "array":
            return None, schema.get("items") if isinstance(schema.get("items"), dict) else None
        for name, sub in (schema.get("properties") or {}).items():
            sub = self.doc.resolve(sub)
            if _kind_of(sub) == "array":
                return name, sub.get("items") if isinstance(sub.get("items"), dict) else None
        return None, None

    def _page_size(self, op: Operation, query: dict[str, Any]) -> int | None:
        for param in op.parameters:
            if param.location == "query" and param.name in PAGE_SIZE_PARAMS:
                given = query.get(param.name, self.doc.resolve(param.schema).get("default"))
                return max(int(given), 0) if isinstance(given, int | float) else None
        return None


class BadCursor(ValueError):
    """A pagination cursor this service never gave out."""


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _offset(query: dict[str, Any], size: int | None) -> int:
    for name in CURSOR_PARAMS:
        if query.get(name):
            try:
                text = base64.urlsafe_b64decode(str(query[name]) + "=" * (-len(str(query[name])) % 4)).decode()
                prefix, _, number = text.partition(":")
                if prefix != "offset" or not number.isdigit():
                    raise ValueError(text)
                return int(number)
            except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
                raise BadCursor(f"{name} {str(query[name])[:40]!r} is not a cursor this service gave out") from exc
    for name in OFFSET_PARAMS:
        if isinstance(query.get(name), int):
            return max(query[name], 0)
    if isinstance(query.get("page"), int) and size:
        return max(query["page"] - 1, 0) * size
    return 0


def _matches(field: Any, wanted: Any) -> bool:
    if isinstance(field, list):
        return any(_matches(item, wanted) for item in field)
    if isinstance(wanted, list):
        return any(_matches(field, item) for item in wanted)
    if isinstance(field, bool) or isinstance(wanted, bool):
        return str(field).lower() == str(wanted).lower()
    return field == wanted or str(field) == str(wanted)


def _mentions(item: Any, text: str) -> bool:
    needle = text.lower()
    return needle in json.dumps(item, ensure_ascii=False).lower()


def _kind_of(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None and "items" in schema:
        return "array"
    if kind is None and "properties" in schema:
        return "object"
    return kind


# -- one service of one sandbox ----------------------------------------------------------------------


class Service:
    """One spec inside one sandbox: its API (mock or emulated) and the sandbox's configuration for it."""

    def __init__(self, api: MockAPI, config: ServiceConfig, seed_key: str):
        self.api = api
        self.config = config
        self.seed_key = seed_key  # failure injection draws from it: the same sandbox fails the same way
        self.calls = 0
        self._lock = threading.Lock()
        if isinstance(api, EmulatedAPI):
            for collection, records in config.seed.items():
                api.seed(collection, records)

    def latency(self, operation_id: str) -> float:
        """Seconds to wait before answering (failure injection's latency)."""
        failures = self.config.failures
        if failures is None or (failures.operations is not None and operation_id not in failures.operations):
            return 0.0
        return failures.latency_ms / 1000

    def answer(self, operation_id: str, path_params: dict[str, Any] | None = None, query: dict[str, Any] | None = None,
               body: Any = None, headers: dict[str, str] | None = None) -> MockResponse:
        """Answer one call as the service would; an unknown operation raises ``OpenAPIError``."""
        op = self.api.operation(operation_id)
        path_params, query = dict(path_params or {}), dict(query or {})
        headers = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        with self._lock:
            self.calls += 1
            draw = random.Random(f"{self.seed_key}:{self.calls}").random()
        failures = self.config.failures
        if failures and failures.rate and draw < failures.rate and (
                failures.operations is None or operation_id in failures.operations):
            return self._injected(op, failures.status, failures.retry_after)
        refused = self._credentials(op, headers, query)
        if refused is not None:
            return error_answer(self.api, op, 401, refused)
        for fixed in self.config.responses:
            if fixed.operation_id == operation_id and _wanted(fixed.when, {**query, **path_params}):
                return MockResponse(fixed.status, copy.deepcopy(fixed.body),
                                    {"content-type": "application/json", **fixed.headers})
        try:
            return self.api.call(operation_id, path_params, query, body)
        except BadCursor as exc:
            return error_answer(self.api, op, 400, str(exc))
        except OpenAPIError as exc:  # the arguments break the spec: answered as the API would, field named
            status = 422 if "422" in op.responses else 400
            return error_answer(self.api, op, status, str(exc))

    def _injected(self, op: Operation, status: int, retry_after: int | None) -> MockResponse:
        answer = error_answer(self.api, op, status, f"injected failure: {status}")
        if retry_after is not None and status in (429, 503):
            answer.headers["retry-after"] = str(retry_after)
        return answer

    def _credentials(self, op: Operation, headers: dict[str, str], query: dict[str, Any]) -> str | None:
        """Why a call lacks an accepted credential (None when it has one, or none is asked for). API keys
        sent as query parameters are taken out of ``query`` here, before the parameters are checked."""
        schemes = (self.api.doc.data.get("components") or {}).get("securitySchemes") or {}
        if not self.config.credentials or not op.security or any(not alt for alt in op.security):
            for name in {name for alternative in op.security for name in alternative}:
                scheme = self.api.doc.resolve(schemes.get(name) or {})
                if scheme.get("type") == "apiKey" and scheme.get("in") == "query":
                    query.pop(scheme.get("name"), None)
            return None
        presented = False
        for alternative in op.security:
            results = [self._presents(self.api.doc.resolve(schemes.get(name) or {}), headers, query)
                       for name in alternative]
            if all(result is True for result in results):
                return None
            presented = presented or any(result is not None for result in results)
        return "invalid credentials" if presented else "no credentials: this operation needs authentication"

    def _presents(self, scheme: dict[str, Any], headers: dict[str, str], query: dict[str, Any]) -> bool | None:
        """True: an accepted credential; False: a credential, not accepted; None: no credential at all."""
        accepted = set(self.config.credentials)
        kind = scheme.get("type")
        if kind == "apiKey":
            where, name = scheme.get("in"), str(scheme.get("name", ""))
            given = query.pop(name, None) if where == "query" else headers.get(name.lower())
            return None if given is None else str(given) in accepted
        if kind in ("http", "oauth2", "openIdConnect"):
            given = headers.get("authorization")
            if given is None:
                return None
            method, _, token = given.partition(" ")
            if kind == "http" and str(scheme.get("scheme", "bearer")).lower() == "basic":
                return method.lower() == "basic" and token.strip() in accepted
            return method.lower() == "bearer" and token.strip() in accepted
        return None


def _wanted(when: dict[str, Any] | None, given: dict[str, Any]) -> bool:
    return when is None or all(name in given and str(given[name]) == str(value) for name, value in when.items())


def error_answer(api: MockAPI, op: Operation, status: int, message: str) -> MockResponse:
    """An error as the spec describes it for ``status`` (its schema, example or generated), with the
    message put where the body says why; ``{"message": ...}`` when the spec describes none."""
    code = str(status)
    response = op.responses.get(code) or op.responses.get(f"{code[0]}XX") or op.responses.get("default")
    answer = api._answer(status, response, _seeded(op.operation_id, code)) if response else None
    body = answer.body if answer is not None else None
    headers = dict(answer.headers) if answer is not None else {}
    headers.setdefault("content-type", "application/json")
    if not isinstance(body, dict):
        return MockResponse(status, {"message": message}, headers)
    body = copy.deepcopy(body)
    for field in MESSAGE_FIELDS:
        if isinstance(body.get(field), str):
            body[field] = message
            break
    else:
        body["message"] = message
    if isinstance(body.get("code"), int) and not isinstance(body.get("code"), bool):
        body["code"] = status
    if isinstance(body.get("status"), int) and not isinstance(body.get("status"), bool):
        body["status"] = status
    return MockResponse(status, body, headers)


# -- every sandbox the agent serves ------------------------------------------------------------------


class SandboxHost:
    """The services of each sandbox, per (id, revision, configuration): the agent's only state.

    Bounded (least recently used sandboxes go first) and forgetful by design: a sandbox past its
    ``expires_at`` is dropped and refused, and an older revision of one seen again is dropped.
    """

    def __init__(self, specs: dict[str, Path], capacity: int = 128, clock: Any = time.time):
        self.specs = specs
        self.capacity = capacity
        self.clock = clock
        self._documents: dict[str, dict[str, Any]] = {}
        self._sandboxes: OrderedDict[tuple[str, int, str], dict[str, Service]] = OrderedDict()
        self._lock = threading.Lock()

    def known(self) -> list[str]:
        return sorted(self.specs)

    def services(self, ref: SandboxRef) -> dict[str, Service]:
        """The services of ``ref``, made (from the seed data) the first time its revision is seen."""
        if ref.expires_at <= self.clock():
            self.forget(ref.id)
            raise OpenAPIError(f"sandbox {ref.id} has expired")
        digest = hashlib.sha256(ref.model_dump_json(include={"mode", "services", "required_services"}).encode())
        key = (ref.id, ref.revision, digest.hexdigest())
        with self._lock:
            for other in [k for k in self._sandboxes if k[0] == ref.id and k != key]:
                del self._sandboxes[other]  # a reset or a change: the old state goes
            found = self._sandboxes.get(key)
            if found is None:
                found = self._sandboxes[key] = self._build(ref)
            self._sandboxes.move_to_end(key)
            while len(self._sandboxes) > self.capacity:
                self._sandboxes.popitem(last=False)
        return found

    def forget(self, sandbox_id: str) -> None:
        with self._lock:
            for key in [k for k in self._sandboxes if k[0] == sandbox_id]:
                del self._sandboxes[key]

    def service(self, ref: SandboxRef, name: str) -> Service:
        services = self.services(ref)
        if name not in services:
            raise OpenAPIError(f"sandbox {ref.id} has no service {name!r} (its services: {', '.join(services)})")
        return services[name]

    def _build(self, ref: SandboxRef) -> dict[str, Service]:
        built = {}
        for name in ref.required_services:
            if name not in self.specs:
                raise OpenAPIError(f"no spec {name!r} here (known: {', '.join(self.known()) or 'none'})")
            document = self._document(name)
            config = ref.services.get(name) or ServiceConfig()
            api: MockAPI = (EmulatedAPI(document, name, source=str(self.specs[name])) if ref.mode == "emulated"
                            else MockAPI(document, name, stateful=False, source=str(self.specs[name])))
            built[name] = Service(api, config, f"{ref.id}:{ref.revision}:{name}")
        return built

    def _document(self, name: str) -> dict[str, Any]:
        if name not in self._documents:
            self._documents[name] = _read_document(self.specs[name])
        return copy.deepcopy(self._documents[name])

    def state(self, ref: SandboxRef) -> dict[str, Any]:
        """What each emulated service holds now, by collection path ({} for a mock service)."""
        return {name: service.api.state() if isinstance(service.api, EmulatedAPI) else {}
                for name, service in self.services(ref).items()}
