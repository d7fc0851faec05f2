"""The OpenAPI mock: validation names the field, generated bodies honour their schemas, answers repeat."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from mesh.sandbox.openapi_mock import MockAPI, OpenAPIError

ROOT = Path(__file__).resolve().parents[1]
PETSTORE = ROOT / "docs" / "openapi" / "petstore.yaml"


@pytest.fixture
def petstore() -> MockAPI:
    return MockAPI.from_file(PETSTORE)


def _json_response(status: str, schema: dict[str, Any], **media: Any) -> dict[str, Any]:
    return {status: {"description": "ok", "content": {"application/json": {"schema": schema, **media}}}}


def _get(operation_id: str, responses: dict[str, Any]) -> dict[str, Any]:
    seed = {"name": "seed", "in": "query", "schema": {"type": "integer"}}
    return {"get": {"operationId": operation_id, "parameters": [seed], "responses": responses}}


# A 3.1 document whose schemas are plain JSON Schema 2020-12, so the test can check generated bodies
# against them with jsonschema alone, independently of the mock's own validation.
SHAPES: dict[str, Any] = {
    "Scalars": {
        "type": "object",
        "required": ["id", "when", "day", "email", "host", "ip", "code", "price", "count", "ratio", "state"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "when": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "email": {"type": "string", "format": "email"},
            "host": {"type": "string", "format": "ipv4"},
            "ip": {"type": "string", "format": "ipv6"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
            "short": {"type": "string", "minLength": 20, "maxLength": 25},
            "tiny": {"type": "string", "maxLength": 3},
            "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 5, "multipleOf": 0.25},
            "count": {"type": "integer", "minimum": -10, "exclusiveMaximum": -5},
            "ratio": {"type": "number", "minimum": 0.1, "maximum": 0.2},
            "state": {"enum": ["on", "off"]},
            "maybe": {"type": ["string", "null"], "minLength": 2},
            "flag": {"type": "boolean"},
            "fixed": {"const": 42},
        },
        "additionalProperties": False,
    },
    "Collections": {
        "type": "object",
        "required": ["few", "many", "distinct", "pair", "counts"],
        "properties": {
            "few": {"type": "array", "items": {"type": "integer"}, "maxItems": 1},
            "many": {"type": "array", "items": {"type": "string"}, "minItems": 4, "maxItems": 6},
            "distinct": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 2, "uniqueItems": True},
            "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
            "counts": {
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": 0},
                "minProperties": 2,
            },
        },
    },
    "Node": {
        "type": "object",
        "required": ["label", "children"],
        "properties": {
            "label": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
            "parent": {"$ref": "#/components/schemas/Node"},
        },
    },
    "Shape": {
        "oneOf": [
            {
                "type": "object",
                "required": ["kind", "radius"],
                "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0}},
            },
            {
                "type": "object",
                "required": ["kind", "side"],
                "properties": {"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0}},
            },
        ]
    },
    "Tagged": {
        "allOf": [
            {"$ref": "#/components/schemas/Scalars"},
            {"required": ["id"], "properties": {"id": {"type": "string", "format": "uuid"}}},
        ]
    },
}

SHAPES_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Shapes", "version": "2"},
    "paths": {
        **{
            f"/{name.lower()}": _get(f"get{name}", _json_response("200", {"$ref": f"#/components/schemas/{name}"}))
            for name in SHAPES
        },
        "/examples": _get(
            "getExamples",
            _json_response(
                "200",
                {"type": "object", "properties": {"n": {"type": "integer"}}},
                examples={"first": {"$ref": "#/components/examples/One"}, "second": {"value": {"n": 2}}},
            ),
        ),
        "/schema-example": _get(
            "getSchemaExample",
            _json_response("200", {"type": "object", "examples": [{"n": 7}], "properties": {"n": {}}}),
        ),
    },
    "components": {"schemas": SHAPES, "examples": {"One": {"value": {"n": 1}}}},
}


@pytest.fixture(scope="module")
def shapes() -> MockAPI:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shapes.json"
        path.write_text(json.dumps(SHAPES_SPEC))
        return MockAPI.from_file(path)


def _validator_for(name: str) -> Draft202012Validator:
    """A validator for one component schema, built from the raw document, not by the mock."""
    registry = Registry().with_resource("urn:shapes", Resource(SHAPES_SPEC, specification=DRAFT202012))
    return Draft202012Validator(
        {"$ref": f"urn:shapes#/components/schemas/{name}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


# -- reading the spec --------------------------------------------------------------------------------


def test_lists_the_petstore_operations(petstore: MockAPI) -> None:
    listed = {(op.operation_id, op.method, op.path) for op in petstore.operations()}
    assert listed == {
        ("listPets", "GET", "/pets"),
        ("createPet", "POST", "/pets"),
        ("getPet", "GET", "/pets/{petId}"),
        ("deletePet", "DELETE", "/pets/{petId}"),
        ("getInventory", "GET", "/store/inventory"),
    }
    get_pet = petstore.operation("getPet")
    assert [(p.name, p.location, p.required) for p in get_pet.parameters] == [("petId", "path", True)]


def test_describe_inlines_refs_and_parameters(petstore: MockAPI) -> None:
    described = petstore.describe("listPets")
    limit = next(p for p in described["parameters"] if p["name"] == "limit")
    assert limit["in"] == "query" and limit["schema"]["maximum"] == 100
    status = next(p for p in described["parameters"] if p["name"] == "status")
    assert status["schema"]["enum"] == ["available", "pending", "sold"]
    assert "$ref" not in json.dumps(described)
    body = petstore.describe("createPet")["request_body"]
    assert body["required"] is True and body["schema"]["required"] == ["name", "species"]


def test_recursive_schema_is_described_without_looping(shapes: MockAPI) -> None:
    node = shapes.describe("getNode")["responses"]["200"]["schema"]
    assert node["properties"]["children"]["items"] == {"$comment": "recursive: same as #/components/schemas/Node"}


def test_unknown_operation_names_it_and_the_known_ones(petstore: MockAPI) -> None:
    with pytest.raises(ValueError, match=r"no operation 'getPets' \(known: listPets, createPet, getPet"):
        petstore.call("getPets")


def test_swagger_2_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "old.yaml"
    spec.write_text("swagger: '2.0'\ninfo: {title: Old, version: '1'}\npaths: {}\n")
    with pytest.raises(OpenAPIError, match=r"old.yaml: .*not an OpenAPI 3.x document \(found swagger 2.0\)"):
        MockAPI.from_file(spec)


def test_yaml_integer_status_keys_and_dates_are_read_as_json(tmp_path: Path) -> None:
    spec = tmp_path / "plain.yaml"
    spec.write_text(
        "openapi: 3.0.0\ninfo: {title: Plain, version: 1}\npaths:\n  /today:\n    get:\n"
        "      operationId: today\n      responses:\n        200:\n          description: ok\n"
        "          content:\n            application/json:\n              schema: {type: object}\n"
        "              example: {day: 2024-05-01}\n"
    )
    answer = MockAPI.from_file(spec).call("today")
    assert answer.status == 200 and answer.body == {"day": "2024-05-01"}


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation_id", "arguments", "expected"),
    [
        ("listPets", {"query": {"limit": 500}}, "query parameter 'limit': 500 is greater than the maximum of 100"),
        ("listPets", {"query": {"limit": "many"}}, "query parameter 'limit': 'many' is not of type 'integer'"),
        ("listPets", {"query": {"status": "lost"}}, "query parameter 'status': 'lost' is not one of"),
        ("listPets", {"query": {"limt": 5}}, "unknown query parameter 'limt' (declared: limit, status)"),
        ("getPet", {}, "missing required path parameter 'petId'"),
        ("getPet", {"path_params": {"petId": 0}}, "path parameter 'petId': 0 is less than the minimum of 1"),
        ("createPet", {}, "a request body is required"),
        ("createPet", {"body": {"species": "dog"}}, "body: 'name' is a required property"),
        ("createPet", {"body": {"name": "", "species": "dog"}}, "body.name: '' should be non-empty"),
        ("createPet", {"body": {"name": "Rex", "species": "cow"}}, "body.species: 'cow' is not one of"),
        (
            "createPet",
            {"body": {"name": "Rex", "species": "dog", "tags": ["ok-tag", "Not OK"]}},
            "body.tags[1]: 'Not OK' does not match",
        ),
        ("createPet", {"body": {"name": "Rex", "species": "dog", "birthDate": "yesterday"}}, "body.birthDate"),
        ("getInventory", {"body": {"x": 1}}, "GET /store/inventory takes no request body"),
    ],
)
def test_invalid_input_is_refused_naming_the_field(
    petstore: MockAPI, operation_id: str, arguments: dict[str, Any], expected: str
) -> None:
    with pytest.raises(OpenAPIError) as refused:
        petstore.call(operation_id, **arguments)
    assert expected in str(refused.value)
    assert str(refused.value).startswith(operation_id)


def test_every_problem_in_a_body_is_reported(petstore: MockAPI) -> None:
    with pytest.raises(OpenAPIError) as refused:
        petstore.call("createPet", body={"name": 7, "species": "cow"})
    assert "body.name: 7 is not of type 'string'" in str(refused.value)
    assert "body.species: 'cow' is not one of" in str(refused.value)


def test_parameters_given_as_strings_are_read_as_http_would(petstore: MockAPI) -> None:
    assert petstore.call("listPets", query={"limit": "5"}) == petstore.call("listPets", query={"limit": 5})
    assert petstore.call("getPet", path_params={"petId": "3"}).status == 200


# -- answers ----------------------------------------------------------------------------------------


def test_example_is_preferred_over_generation(petstore: MockAPI, shapes: MockAPI) -> None:
    inventory = petstore.call("getInventory")
    assert inventory.to_dict() == {
        "status": 200,
        "headers": {"content-type": "application/json"},
        "body": {"available": 12, "pending": 3, "sold": 41},
    }
    assert shapes.call("getExamples").body == {"n": 1}  # the first named example, through its $ref
    assert shapes.call("getSchemaExample").body == {"n": 7}  # a 3.1 schema's `examples`


def test_generated_petstore_bodies_match_their_schemas(petstore: MockAPI) -> None:
    for operation_id, arguments in [
        ("listPets", {"query": {"limit": 3}}),
        ("getPet", {"path_params": {"petId": 11}}),
        ("getPet", {"path_params": {"petId": 12}}),
    ]:
        schema = petstore.describe(operation_id)["responses"]["200"]["schema"]
        answer = petstore.call(operation_id, **arguments)
        assert answer.status == 200
        validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        errors = list(validator.iter_errors(answer.body))
        assert errors == [], (operation_id, answer.body, [e.message for e in errors])
    pets = petstore.call("listPets", query={"limit": 3})
    assert int(pets.headers["x-total-count"]) >= 0
    assert all(isinstance(pet["id"], int) and pet["id"] >= 1 for pet in pets.body)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_generated_bodies_match_their_schemas_for_many_seeds(shapes: MockAPI, name: str) -> None:
    validator = _validator_for(name)
    for seed in range(40):
        body = shapes.call(f"get{name}", query={"seed": seed}).body
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        assert errors == [], (seed, body)


def test_generation_respects_the_finer_constraints(shapes: MockAPI) -> None:
    bodies = [shapes.call("getScalars", query={"seed": seed}).body for seed in range(20)]
    assert all(body["fixed"] == 42 and len(body["code"]) in (6, 7, 8) for body in bodies)
    assert all(-10 <= body["count"] < -5 and 0 < body["price"] <= 5 for body in bodies)
    assert {body["state"] for body in bodies} == {"on", "off"}  # the seed really varies the choice
    collections = shapes.call("getCollections", query={"seed": 1}).body
    assert 4 <= len(collections["many"]) <= 6 and len(collections["few"]) <= 1
    assert len(collections["distinct"]) == len(set(collections["distinct"])) >= 2
    assert isinstance(collections["pair"][0], str) and isinstance(collections["pair"][1], int)


def test_same_call_gives_the_same_answer(shapes: MockAPI) -> None:
    fresh = MockAPI(SHAPES_SPEC, "shapes")
    for name in SHAPES:
        assert shapes.call(f"get{name}", query={"seed": 5}) == fresh.call(f"get{name}", query={"seed": 5})
    answers = {json.dumps(fresh.call("getScalars", query={"seed": seed}).body) for seed in range(10)}
    assert len(answers) == 10  # other arguments, another answer


def test_mock_is_deterministic_across_instances(petstore: MockAPI) -> None:
    again = MockAPI.from_file(PETSTORE)
    assert petstore.call("getPet", path_params={"petId": 9}) == again.call("getPet", path_params={"petId": 9})
    assert petstore.call("getPet", path_params={"petId": 9}) != again.call("getPet", path_params={"petId": 10})


def test_response_without_content_has_no_body(petstore: MockAPI) -> None:
    deleted = petstore.call("deletePet", path_params={"petId": 1})
    assert (deleted.status, deleted.body) == (204, None)


# -- the resource store ------------------------------------------------------------------------------


def test_created_pet_is_what_later_reads_return(petstore: MockAPI) -> None:
    created = petstore.call("createPet", body={"name": "Rex", "species": "dog", "tags": ["good-boy"]})
    assert created.status == 201
    assert {k: created.body[k] for k in ("name", "species", "tags")} == {
        "name": "Rex",
        "species": "dog",
        "tags": ["good-boy"],
    }
    pet_id = created.body["id"]
    assert petstore.call("getPet", path_params={"petId": pet_id}).body == created.body
    assert petstore.call("getPet", path_params={"petId": str(pet_id)}).body == created.body

    second = petstore.call("createPet", body={"name": "Rex", "species": "dog", "tags": ["good-boy"]})
    assert second.body["id"] != pet_id  # the same body twice makes two pets
    assert petstore.call("listPets").body == [created.body, second.body]
    assert petstore.call("listPets", query={"limit": 1}).body == [created.body]

    assert petstore.call("deletePet", path_params={"petId": pet_id}).status == 204
    gone = petstore.call("getPet", path_params={"petId": pet_id})
    assert (gone.status, gone.body) == (404, {"code": 404, "message": "pet not found"})
    assert petstore.call("listPets").body == [second.body]

    petstore.reset()
    assert petstore.call("getPet", path_params={"petId": pet_id}).status == 200


def test_stateless_mock_remembers_nothing() -> None:
    api = MockAPI.from_file(PETSTORE, stateful=False)
    created = api.call("createPet", body={"name": "Tom", "species": "cat"})
    assert api.call("getPet", path_params={"petId": created.body["id"]}).body != created.body


# -- the sandbox agent -------------------------------------------------------------------------------


def _sandbox_tools() -> dict[str, Any]:
    from mesh import Workspace

    agent = Workspace(ROOT).agent("sandbox")
    return {spec.name: spec for spec in agent.all_specs()}


async def _start_sandbox(workspace: Path, settings: dict[str, Any]) -> Any:
    from mesh import AgentContext, Workspace

    agent = Workspace(ROOT).agent("sandbox")
    await agent.start(AgentContext("sandbox", workspace, workspace / ".state", settings))
    return agent


def test_sandbox_tools_declare_their_annotations_and_scopes() -> None:
    tools = _sandbox_tools()
    assert sorted(tools) == ["call_operation", "describe_operation", "list_apis", "list_operations", "sandbox_call",
                             "sandbox_connected_call", "sandbox_state"]
    for name in ("list_apis", "list_operations", "describe_operation", "sandbox_state"):
        assert tools[name].annotations.read_only_hint is True
        assert tools[name].scopes == ("sandbox:read",)
    call = tools["call_operation"].annotations
    assert (call.read_only_hint, call.idempotent_hint, call.open_world_hint) == (False, False, False)
    assert tools["call_operation"].scopes == ("sandbox:call",)
    assert tools["sandbox_call"].scopes == ("sandbox:call",)
    assert tools["sandbox_call"].annotations.destructive_hint is False
    connected = tools["sandbox_connected_call"].annotations  # leaves the machine: the policy must allow it
    assert (connected.destructive_hint, connected.open_world_hint) == (True, True)


async def test_sandbox_serves_the_workspace_specs_over_mcp() -> None:
    from mcp.client import Client

    agent = await _start_sandbox(ROOT, {})
    async with Client(agent.build_server()) as client:
        apis = await client.call_tool("list_apis", {})
        assert [api["name"] for api in apis.structured_content["result"]] == ["issues", "petstore", "tracker"]
        created = await client.call_tool(
            "call_operation",
            {"api": "petstore", "operation_id": "createPet", "body": {"name": "Rex", "species": "dog"}},
        )
        pet = created.structured_content["body"]
        assert created.structured_content["status"] == 201 and pet["name"] == "Rex"
        read = await client.call_tool(
            "call_operation", {"api": "petstore", "operation_id": "getPet", "path_params": {"petId": pet["id"]}}
        )
        assert read.structured_content["body"] == pet
        refused = await client.call_tool(
            "call_operation", {"api": "petstore", "operation_id": "getPet", "path_params": {"petId": 0}}
        )
        assert refused.is_error


async def test_sandbox_specs_setting_and_its_errors(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "shop.json").write_text(json.dumps(SHAPES_SPEC))
    await _start_sandbox(tmp_path, {"specs": ["specs/shop.json"]})
    tools = _sandbox_tools()
    assert [api.name for api in tools["list_apis"].fn()] == ["shop"]
    assert "getNode" in [op.operation_id for op in tools["list_operations"].fn("shop")]
    with pytest.raises(ValueError, match=r"unknown api 'petstore' \(known: shop\)"):
        tools["list_operations"].fn("petstore")
    with pytest.raises(ValueError, match="shop has no operation 'nope'"):
        tools["describe_operation"].fn("shop", "nope")
    with pytest.raises(ValueError, match="query parameter 'seed': 'x' is not of type 'integer'"):
        tools["call_operation"].fn("shop", "getNode", query={"seed": "x"})
    with pytest.raises(ValueError, match=r"missing\.json: cannot read"):
        await _start_sandbox(tmp_path, {"specs": ["specs/missing.json"]})
