"""Group commit: the records of calls that finish together are written in one transaction.

Every call's run records (and its policy decision in the audit log) must be on disk before its caller
hears back. On a database server each commit is a round trip and a log flush, and the audit log's head
row is locked from the first append to the commit, so calls finishing at the same moment queue behind
each other. Here they share the commit instead: each call hands its writes to ``GroupCommit.write`` and
waits; one task takes everything queued, writes it in one transaction, commits, and wakes every call in
it. A call is still answered only after the commit that holds its records (0 acknowledged runs lost on
kill -9), and a lone call waits for nobody: its batch is itself.

One failing write must not fail the others: if a batch's transaction fails, each of its writes is
tried again alone, and only the one that fails hears of it. SQLite keeps writing inline (a commit in WAL
mode takes tens of microseconds, and group commit was measured not to pay there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)
Work = Callable[[Connection], None]
MAX_BATCH = 64  # writes in one transaction at most, so no commit holds the audit log's lock for long


@dataclass
class _Pending:
    work: Work
    done: anyio.Event = field(default_factory=anyio.Event)
    failure: BaseException | None = None


class GroupCommit:
    """``await write(work)`` returns once ``work(connection)`` is committed, in a transaction shared with the
    writes queued alongside it. ``run()`` is the task that commits (the app's lifespan starts it)."""

    def __init__(self, engine: Engine, max_batch: int = MAX_BATCH):
        self.engine = engine
        self.max_batch = max_batch
        self.running = False
        self.commits = 0  # transactions committed, and writes in them: their ratio is the batching achieved
        self.writes = 0
        self._queue: list[_Pending] = []
        self._wake = anyio.Event()

    async def write(self, work: Work) -> None:
        pending = _Pending(work)
        if not self.running:  # no committing task (a registry used without its app): write alone
            await anyio.to_thread.run_sync(self._commit, [pending])
        else:
            self._queue.append(pending)
            self._wake.set()
            await pending.done.wait()
        if pending.failure is not None:
            raise pending.failure

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                while self._queue:
                    batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                    with anyio.CancelScope(shield=True):  # callers are waiting for this commit: finish it
                        await anyio.to_thread.run_sync(self._commit, batch)
                    for pending in batch:
                        pending.done.set()
        finally:
            self.running = False

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            with self.engine.begin() as connection:
                for pending in batch:
                    pending.work(connection)
            self.commits += 1
            self.writes += len(batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                batch[0].failure = exc
                return
            log.warning("a group commit of %d writes failed; writing each alone", len(batch), exc_info=True)
        for pending in batch:  # the shared transaction rolled back: nothing of it was written
            self._commit([pending])

