"""What an MCP face of the registry tells its clients outside any call: list changes, resource updates.

Two kinds of client listen, one per protocol version:

- **2026-07-28** clients open a ``subscriptions/listen`` stream. The face serves it with the SDK's
  ``ListenHandler`` over an ``InMemorySubscriptionBus`` of the stream's audience (below); events published
  on a bus reach every stream of it whose filter asks for them.
- **2025-11-25** clients have a session. List changes go to each session the face has seen, on the
  session's own stream. Resource updates need no work here: the client's ``resources/subscribe`` is made
  in the registry's session with the agent (``forward.py``), so the agent's update comes back on that
  session's stream and is passed on as it is.

Who hears what: a stream or session belongs to an ``Audience``, the project its caller acts in (and, on
``/agents/NAME/mcp``, that one agent). An event about an agent reaches only the audiences of the agent's
project (on ``/agents/NAME/mcp``, only NAME's own): another project's changes are none of a client's
business, as its agents are unknown to it (``tenancy.py``). Each audience has its own bus and handler, so
one project's streams cannot use up another's (the handler's bound on streams is per audience).

Where events come from:

- **List changes** are the registry's own: a face lists what was admitted and pinned, not the agent's
  live lists, so its lists change when the registry admits, re-admits, blocks or revokes
  (``Registry.index_agent`` tells ``Notices.changed`` which agent changed). Each change is announced for
  every kind (tools, prompts, resources): they are level triggers ("refetch if you care"), so one too
  many costs a refetch.
- **Resource updates** are the agent's. For the URIs that 2026-07-28 streams ask for, the registry keeps
  one ``subscriptions/listen`` stream of its own open to each agent that serves them
  (``ResourceWatches``, shared and counted, re-opened when the set of URIs changes or the agent drops it)
  and publishes what comes to that agent's audiences. Only pinned, verified resources are watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated, ServerEvent
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged, event_from_wire

from mesh.registry.forward import AgentError, ClientLink, Relay
from mesh.registry.node import Registry
from mesh.registry.tenancy import Tenant

log = logging.getLogger(__name__)
MAX_SESSIONS = 10_000  # 2025-11-25 sessions a face remembers, to tell them of list changes
REOPEN_S = 1.0  # wait before re-opening a watch the agent closed or could not serve
_LIST_CHANGES = {"notifications/tools/list_changed": ToolsListChanged(),
                 "notifications/prompts/list_changed": PromptsListChanged(),
                 "notifications/resources/list_changed": ResourcesListChanged()}


@dataclass(frozen=True)
class Audience:
    """Whom a stream or session stands for: the project its caller acts in; on ``/agents/NAME/mcp``, NAME."""

    tenant: Tenant
    agent: str | None = None  # None on ``/mcp``: every agent of the project

    def hears_of(self, tenant: Tenant, agent: str) -> bool:
        """Is news of ``agent`` (of project ``tenant``) for this audience?"""
        return self.tenant == tenant and self.agent in (None, agent)


class Notices:
    """One face's listeners: per audience, the bus its ``subscriptions/listen`` streams read; the sessions
    it has seen, each with its audience."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.streams: dict[Audience, tuple[InMemorySubscriptionBus, ListenHandler]] = {}
        self.sessions: dict[str, tuple[ClientLink, Audience]] = {}
        self.watches = ResourceWatches(registry, self.publish)
        registry.change_listeners.append(self.changed)

    def listen_handler(self, audience: Audience) -> ListenHandler:
        """The handler serving ``audience``'s streams, over its own bus (made for its first stream)."""
        if audience not in self.streams:
            bus = InMemorySubscriptionBus()
            self.streams[audience] = (bus, ListenHandler(bus))
        return self.streams[audience][1]

    def seen(self, link: ClientLink, audience: Audience) -> None:
        """Remember a 2025-11-25 session (the newest link to it, and whom it now stands for), the oldest
        forgotten past the bound."""
        self.sessions.pop(link.key, None)
        self.sessions[link.key] = (link, audience)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))

    async def publish(self, agent: str, event: ServerEvent) -> None:
        """``event``, news of ``agent``, on the bus of every audience of the agent's project that hears of it."""
        tenant = self.registry.tenancy.of(agent)
        for audience, (bus, _) in list(self.streams.items()):
            if audience.hears_of(tenant, agent):
                await bus.publish(event)

    async def changed(self, agent: str) -> None:
        """``agent``'s pinned lists changed: tell the streams and sessions of its project (of it alone, on
        ``/agents/NAME/mcp``)."""
        tenant = self.registry.tenancy.of(agent)
        for method, event in _LIST_CHANGES.items():
            await self.publish(agent, event)
            for key, (link, audience) in list(self.sessions.items()):
                if not audience.hears_of(tenant, agent):
                    continue
                try:
                    await link.notify(method, {})
                except Exception:  # a session that is gone is forgotten, the others still hear
                    self.sessions.pop(key, None)


class ResourceWatches:
    """The registry's ``subscriptions/listen`` streams to agents, one per agent, for the URIs some client
    of the face listens to (counted, so two clients on one URI share one stream)."""

    def __init__(self, registry: Registry, publish: Callable[[str, ServerEvent], Awaitable[None]]):
        self.registry = registry
        self.publish = publish  # (agent, event): to the audiences that hear of that agent
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
        async def updated(method: str, params: dict[str, Any]) -> None:
            event = event_from_wire(method, params)
            if isinstance(event, ResourceUpdated):
                await self.publish(agent, event)

        relay = Relay(notify=updated)
        while True:
            endpoint = self.registry.endpoints.get(agent)
            if endpoint is not None:
                with contextlib.suppress(AgentError, httpx2.HTTPError):
                    await self.registry.forwarder.request(
                        endpoint, "subscriptions/listen", {"notifications": {"resourceSubscriptions": uris}},
                        relay=relay)
            await anyio.sleep(REOPEN_S)
