"""What an MCP face of the registry tells its clients outside any call: list changes, resource updates.

Two kinds of client listen, one per protocol version:

- **2026-07-28** clients open a ``subscriptions/listen`` stream. The face serves it with the SDK's
  ``ListenHandler`` over its own ``InMemorySubscriptionBus``; events published on the bus reach every
  stream whose filter asks for them.
- **2025-11-25** clients have a session. List changes go to each session the face has seen, on the
  session's own stream. Resource updates need no work here: the client's ``resources/subscribe`` is made
  in the registry's session with the agent (``forward.py``), so the agent's update comes back on that
  session's stream and is passed on as it is.

Where events come from:

- **List changes** are the registry's own: a face lists what was admitted and pinned, not the agent's
  live lists, so its lists change when the registry admits, re-admits, blocks or revokes
  (``Registry.index_agent`` tells ``Notices.changed``). Each change is announced for every kind (tools,
  prompts, resources): they are level triggers ("refetch if you care"), so one too many costs a refetch.
- **Resource updates** are the agent's. For the URIs that 2026-07-28 streams ask for, the registry keeps
  one ``subscriptions/listen`` stream of its own open to each agent that serves them
  (``ResourceWatches``, shared and counted, re-opened when the set of URIs changes or the agent drops it)
  and publishes what comes on the face's bus. Only pinned, verified resources are watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import anyio
import httpx2
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged, event_from_wire

from mesh.registry.forward import AgentError, ClientLink, Relay
from mesh.registry.node import Registry

log = logging.getLogger(__name__)
MAX_SESSIONS = 10_000  # 2025-11-25 sessions a face remembers, to tell them of list changes
REOPEN_S = 1.0  # wait before re-opening a watch the agent closed or could not serve
_LIST_CHANGES = {"notifications/tools/list_changed": ToolsListChanged(),
                 "notifications/prompts/list_changed": PromptsListChanged(),
                 "notifications/resources/list_changed": ResourcesListChanged()}


class Notices:
    """One face's listeners: the bus its ``subscriptions/listen`` streams read, and the sessions it has seen."""

    def __init__(self, registry: Registry):
        self.bus = InMemorySubscriptionBus()
        self.sessions: dict[str, ClientLink] = {}
        self.watches = ResourceWatches(registry, self.bus)
        registry.change_listeners.append(self.changed)

    def seen(self, link: ClientLink) -> None:
        """Remember a 2025-11-25 session (the newest link to it), the oldest forgotten past the bound."""
        self.sessions.pop(link.key, None)
        self.sessions[link.key] = link
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))

    async def changed(self, agent: str) -> None:
        """``agent``'s pinned lists changed: tell every listening stream and every session."""
        for method, event in _LIST_CHANGES.items():
            await self.bus.publish(event)
            for key, link in list(self.sessions.items()):
                try:
                    await link.notify(method, {})
                except Exception:  # a session that is gone is forgotten, the others still hear
                    self.sessions.pop(key, None)


class ResourceWatches:
    """The registry's ``subscriptions/listen`` streams to agents, one per agent, for the URIs some client
    of the face listens to (counted, so two clients on one URI share one stream)."""

    def __init__(self, registry: Registry, bus: InMemorySubscriptionBus):
        self.registry = registry
        self.bus = bus
        self.uris: dict[str, Counter[str]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def add(self, agent: str, uris: Iterable[str]) -> None:
        self.uris.setdefault(agent, Counter()).update(uris)
        self._reopen(agent)

    def remove(self, agent: str, uris: Iterable[str]) -> None:
        counts = self.uris.get(agent, Counter())
        counts.subtract(uris)
        self.uris[agent] = +counts  # drops what no client listens to any more
        self._reopen(agent)

    def _reopen(self, agent: str) -> None:
        if (task := self.tasks.pop(agent, None)) is not None:
            task.cancel()
        if self.uris.get(agent):
            self.tasks[agent] = asyncio.create_task(self._watch(agent, sorted(self.uris[agent])))
        else:
            self.uris.pop(agent, None)

    async def _watch(self, agent: str, uris: list[str]) -> None:
        relay = Relay(notify=self._publish)
        while True:
            endpoint = self.registry.endpoints.get(agent)
            if endpoint is not None:
                with contextlib.suppress(AgentError, httpx2.HTTPError):
                    await self.registry.forwarder.request(
                        endpoint, "subscriptions/listen", {"notifications": {"resourceSubscriptions": uris}},
                        relay=relay)
            await anyio.sleep(REOPEN_S)

    async def _publish(self, method: str, params: dict[str, Any]) -> None:
        event = event_from_wire(method, params)
        if isinstance(event, ResourceUpdated):
            await self.bus.publish(event)
