"""Group commit: calls that finish together are written in one transaction, their provenance signed once.

Every call through the registry is on disk before its caller hears the answer (``proxy._Run.finish``
awaits ``RunLog.record``). What changed is who writes: one writer task (``RunLog.run``, started with the
app) takes every call that finished while it was busy, and commits them as one batch — one transaction
for their run records, policy decisions and audit entries, one signature for their provenance. Under
load that turns N commits and N ECDSA signatures into one of each; a call alone is a batch of one and
costs what it did before.

Provenance of a batch (``mesh.provenance``): a batch of one is signed as before, a JWS over the call's
claims. A larger batch is signed once, over the root of a Merkle tree (RFC 9162) whose leaves are the
calls' canonical claims; each run keeps its claims, its place and its audit path in
``provenance_proof``, so one run is still verified alone with the registry's JWKS (``mesh runs verify``).

A batch that fails to commit fails every call in it, as one failed commit would have failed one call;
nothing is acknowledged that is not on disk. Without the writer running (a ``Registry`` used outside its
app), ``record`` commits the call itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from mesh import merkle, telemetry
from mesh.manifest import canonical
from mesh.provenance import BATCH_TYP, PROVENANCE_TYP, batch_statement, leaf_of
from mesh.registry import audit, store

if TYPE_CHECKING:
    from mesh.registry.node import Registry

MAX_BATCH = 256  # calls per transaction: bounds the time one commit holds the audit log's lock


@dataclass
class PendingCall:
    """One call's records, waiting for the commit that makes them durable."""

    claims: dict[str, Any]  # what the provenance signs
    runs: list[dict[str, Any]]  # RunRecord columns, caller side then target side; provenance added at commit
    decision: dict[str, Any] | None = None  # DecisionRecord columns
    audited: dict[str, Any] | None = None  # keyword arguments of ``audit.record_decision``
    committed: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class RunLog:
    """The registry's one writer of run records (see the module docstring)."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._send, self._receive = anyio.create_memory_object_stream[PendingCall](math.inf)
        self.running = False
        self.batches = self.batched_calls = 0  # how much was grouped (/metrics: mesh.runlog.batch_size)

    async def record(self, call: PendingCall) -> None:
        """Return once ``call`` is committed; raise what the commit raised."""
        if self.running:
            self._send.send_nowait(call)
            await call.committed.wait()
        else:
            await self._commit([call])
        if call.error is not None:
            raise call.error

    async def run(self) -> None:
        """The writer: while the app runs, commit whatever calls have finished, a batch at a time."""
        self.running = True
        try:
            while True:
                batch = [await self._receive.receive()]
                batch += self._drain(MAX_BATCH - 1)
                with anyio.CancelScope(shield=True):  # a batch begun is finished, even as the app stops
                    await self._commit(batch)
        finally:
            self.running = False
            with anyio.CancelScope(shield=True):
                while rest := self._drain(MAX_BATCH):  # queued before the writer stopped: still written
                    await self._commit(rest)

    def _drain(self, limit: int) -> list[PendingCall]:
        calls = []
        while len(calls) < limit:
            try:
                calls.append(self._receive.receive_nowait())
            except anyio.WouldBlock:
                break
        return calls

    async def _commit(self, batch: list[PendingCall]) -> None:
        try:
            self._sign(batch)
            if self.registry.embedded_database:
                self._write(batch)  # an SQLite commit in WAL mode takes tens of µs: less than a hop to a thread
            else:
                await anyio.to_thread.run_sync(self._write, batch)  # a database server: off the event loop
            self.batches += 1
            self.batched_calls += len(batch)
            telemetry.record_batch(len(batch))
        except BaseException as exc:  # every call of the batch hears it; nothing of it was acknowledged
            for call in batch:
                call.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for call in batch:
                call.committed.set()

    def _sign(self, batch: list[PendingCall]) -> None:
        key = self.registry.provenance_key
        if len(batch) == 1:
            signed, proofs = key.sign(canonical(batch[0].claims), PROVENANCE_TYP), [None]
        else:
            leaves = [leaf_of(call.claims) for call in batch]
            _, paths = merkle.inclusion_paths(leaves)
            statement = batch_statement(leaves, datetime.now(UTC).isoformat())
            signed = key.sign(canonical(statement), BATCH_TYP)
            proofs = [{"claims": call.claims, "index": index, "size": len(batch), "path": [p.hex() for p in path]}
                      for index, (call, path) in enumerate(zip(batch, paths, strict=True))]
        for call, proof in zip(batch, proofs, strict=True):
            for run in call.runs:
                run["provenance"], run["provenance_proof"] = signed, proof

    def _write(self, batch: list[PendingCall]) -> None:
        with self.registry.engine.begin() as connection:
            store.record_calls(connection, [run for call in batch for run in call.runs],
                               [call.decision for call in batch if call.decision is not None])
            for call in batch:  # last: appending holds the audit log's lock until the commit
                if call.audited is not None:
                    audit.record_decision(connection, **call.audited)
