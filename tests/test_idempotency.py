"""Idempotency keys end to end: a retried call gets the first call's answer and run id, and the tool runs once.

A `counter` agent whose `bump` is neither read-only nor idempotent makes running twice visible: each
call that reaches it adds one.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
from mcp import Client

from mesh.client import RUN_META

from .test_registry_e2e import Mesh, running_mesh

COUNTER = '''
import anyio
from mesh import Agent

agent = Agent("counter", description="Counts the calls that reach it.")
count = 0


@agent.tool(destructive=False, idempotent=False, open_world=False)
async def bump(by: int = 1, seconds: float = 0.0) -> int:
    """Add to the counter (after waiting some seconds) and return its new value."""
    global count
    await anyio.sleep(seconds)
    count += by
    return count
'''


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory, "idempotency", ("counter",), sources={"counter": COUNTER},
                      settings={"registry": "call_timeout = 10.0"}) as network:
        yield network


def bump(mesh: Mesh, key: str | None = None, **arguments) -> httpx.Response:
    return mesh.invoke("counter", "bump", arguments, headers={"Idempotency-Key": key} if key else None)


def value(answer: httpx.Response) -> int:
    return answer.json()["result"]["structuredContent"]["result"]


def test_a_retry_with_the_same_key_gets_the_first_answer_and_the_tool_runs_once(mesh: Mesh):
    key = str(uuid.uuid4())
    first = bump(mesh, key)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    retry = bump(mesh, key)
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()  # same run id, same result
    after = bump(mesh)  # no key: runs
    assert value(after) == value(first) + 1  # the retry never reached the tool


def test_a_key_is_one_request_and_a_bad_key_is_named(mesh: Mesh):
    key = str(uuid.uuid4())
    assert bump(mesh, key, by=1).status_code == 200
    reused = bump(mesh, key, by=2)
    assert reused.status_code == 409 and reused.json()["type"].endswith("/idempotency-key-reused")
    bad = bump(mesh, "has spaces")
    assert bad.status_code == 400 and "idempotency key" in bad.json()["detail"]


def test_a_refusal_before_the_call_ran_frees_the_key(mesh: Mesh):
    key = str(uuid.uuid4())
    unknown = mesh.invoke("counter", "no_such_tool", {}, headers={"Idempotency-Key": key})
    assert unknown.status_code == 404
    ran = mesh.invoke("counter", "no_such_tool", {}, headers={"Idempotency-Key": key})
    assert ran.status_code == 404 and "idempotent-replayed" not in ran.headers  # judged again, not replayed


def test_a_duplicate_while_the_first_runs_is_409_then_gets_the_answer(mesh: Mesh):
    key = str(uuid.uuid4())
    answers: list[httpx.Response] = []
    both = [threading.Thread(target=lambda: answers.append(bump(mesh, key, seconds=3.0))) for _ in range(2)]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join()
    done, busy = sorted(answers, key=lambda answer: answer.status_code)
    assert (done.status_code, busy.status_code) == (200, 409), busy.text  # one ran; the other did not wait
    assert busy.json()["type"].endswith("/call-in-progress") and int(busy.headers["retry-after"]) >= 1
    retry = bump(mesh, key, seconds=3.0)
    assert retry.json()["run_id"] == done.json()["run_id"] and retry.headers["idempotent-replayed"] == "true"


async def test_an_mcp_tools_call_with_a_key_in_meta_is_answered_once(mesh: Mesh):
    key = {"io.mcpmesh/idempotency-key": str(uuid.uuid4())}
    async with Client(f"{mesh.url}/mcp") as client:
        first = await client.call_tool("counter__bump", {"by": 1}, meta=key)
        retry = await client.call_tool("counter__bump", {"by": 1}, meta=key)
        fresh = await client.call_tool("counter__bump", {"by": 1})
    assert not first.is_error and not retry.is_error
    assert retry.meta[RUN_META] == first.meta[RUN_META] and retry.meta["io.mcpmesh/idempotent-replayed"] is True
    assert retry.structured_content == first.structured_content
    assert fresh.structured_content["result"] == first.structured_content["result"] + 1
