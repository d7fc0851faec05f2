"""Group commit on both backends: writes that arrive together share a transaction, every one of them lands
before its writer returns, and one failing write fails alone. The writes are real audit-log appends, so
the hash chain checks that sharing a transaction kept the entries in order."""

from __future__ import annotations

import functools
from typing import Any

import anyio
import pytest
from sqlalchemy import Connection

from mesh.registry import audit
from mesh.registry.group_commit import GroupCommit


def entry(number: int, connection: Connection) -> None:
    audit.append(connection, actor="test", action="group-commit", subject=str(number), outcome="done")


def broken(connection: Connection) -> None:
    entry(-1, connection)
    raise ValueError("this write is refused")


def chain(sessions: Any) -> tuple[list[dict[str, Any]], audit.Verification]:
    with sessions.begin() as session:
        entries, checkpoints, head = audit.read_chain(session)
    return entries, audit.verify(entries, checkpoints, {"keys": []}, head)


async def write_all(commits: GroupCommit, works: list[Any]) -> list[BaseException | None]:
    """Start every write at once, with the committing task running; each write's own outcome."""
    outcomes: list[BaseException | None] = [None] * len(works)

    async def one(index: int) -> None:
        try:
            await commits.write(works[index])
        except Exception as exc:
            outcomes[index] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(commits.run)
        async with anyio.create_task_group() as writers:
            for index in range(len(works)):
                writers.start_soon(one, index)
        group.cancel_scope.cancel()
    return outcomes


@pytest.mark.anyio
async def test_writes_arriving_together_share_commits_and_all_land(engine: Any, sessions: Any):
    commits = GroupCommit(engine)
    outcomes = await write_all(commits, [functools.partial(entry, number) for number in range(20)])
    assert outcomes == [None] * 20
    assert commits.writes == 20 and commits.commits < 20  # shared: fewer transactions than writes
    entries, verification = chain(sessions)
    assert sorted(int(e["subject"]) for e in entries) == list(range(20))
    assert verification.ok, verification.problems


@pytest.mark.anyio
async def test_one_failing_write_fails_alone(engine: Any, sessions: Any):
    commits = GroupCommit(engine)
    works = [functools.partial(entry, number) for number in range(5)]
    works.insert(2, broken)
    outcomes = await write_all(commits, works)
    assert isinstance(outcomes[2], ValueError) and outcomes[:2] + outcomes[3:] == [None] * 5
    entries, verification = chain(sessions)
    assert sorted(int(e["subject"]) for e in entries) == list(range(5))  # nothing of the refused write
    assert verification.ok, verification.problems


@pytest.mark.anyio
async def test_without_its_task_a_write_commits_alone(engine: Any, sessions: Any):
    commits = GroupCommit(engine)
    await commits.write(functools.partial(entry, 7))
    assert (commits.commits, commits.writes) == (1, 1)
    assert [e["subject"] for e in chain(sessions)[0]] == ["7"]
