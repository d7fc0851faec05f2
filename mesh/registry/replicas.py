"""Several registry processes on one PostgreSQL database, kept in step by ``LISTEN/NOTIFY``.

Each registry keeps in memory what every call needs (pinned tools, endpoints, trusted keys, reputations,
the discovery index). When one replica changes what others hold in memory — admits, pins, blocks or
revokes, or saves reputation — the transaction that makes the change also sends a notification
(``pg_notify``), so the others hear of it exactly when it commits, and not at all if it rolls back.

- ``watch(sessions, replica)``: a session hook that, at every flush, notes which agents' admission
  records (agents, tools, descriptors, trusted keys, revocations) and which reputations changed, and
  sends a notification naming them, in the same transaction (PostgreSQL delivers it at the commit; one
  saying "everything" when the names would not fit in its 8000 bytes). A heartbeat that only moves an agent's
  ``last_seen`` is not a change anyone else needs.
- ``listen_forever(registry)``: one task per registry holding a psycopg connection that ``LISTEN``s;
  each notification from another replica reloads what it names from the database (``Registry.reload_agent``
  re-reads pins, drops cached keys and tokens, re-indexes discovery; ``Registry.reload_reputations``).
  Once listening (at start, and again after a lost connection) it reloads every agent, since
  notifications sent before are gone; only agents whose pins changed are re-indexed.

The channel is named after the database schema, so registries on different schemas of one database
(tests do that) do not hear each other. SQLite has no notifications: there the registry runs as one
process (``check_workers``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from mesh.registry import store, tenancy

if TYPE_CHECKING:
    from mesh.registry.config import RegistryConfig
    from mesh.registry.node import Registry

log = logging.getLogger(__name__)
CHANNEL_PREFIX = "mesh_registry_"
# Records whose change alters what a registry holds in memory about an agent, with the column naming it.
AGENT_RECORDS: dict[type, str] = {
    store.AgentRecord: "name", store.ToolRecord: "agent", store.DescriptorRecord: "agent",
    store.TrustedKeyRecord: "agent", store.RevocationRecord: "agent",
}
HEARTBEAT_ONLY = frozenset({"last_seen"})
RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0)  # seconds between attempts to listen again; the last one repeats
MAX_PAYLOAD = 7900  # bytes; a notification naming more says "everything" instead (PostgreSQL's limit is 8000)


class WorkersProblem(ValueError):
    """More than one registry process was asked for where they cannot be kept in step."""


def new_replica_id() -> str:
    """This process's name among the replicas: host, pid and a random part (a pid can be reused)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def check_workers(engine: Engine, workers: int) -> None:
    """Several workers need PostgreSQL: SQLite has no notifications, so their memories would drift apart."""
    if workers < 1:
        raise WorkersProblem(f"--workers must be at least 1, not {workers}")
    if workers > 1 and engine.dialect.name != "postgresql":
        raise WorkersProblem(
            f"--workers {workers} needs a PostgreSQL database (set MESH_DATABASE_URL or [registry] database_url): "
            "replicas on SQLite could not tell each other about admissions, blocks and revocations")


def channel(engine: Engine) -> str:
    """The notification channel of the database schema the engine's connections use."""
    with engine.connect() as connection:
        schema = connection.execute(text("SELECT current_schema()")).scalar_one()
    return (CHANNEL_PREFIX + "".join(c if c.isalnum() else "_" for c in schema))[:63]


def watch(sessions: sessionmaker[Session], replica: str, channel_name: str) -> None:
    """Send, inside each transaction that changes admissions or reputations, a notification naming them."""

    @event.listens_for(sessions, "after_flush")
    def notify(session: Session, _context: Any) -> None:
        agents, reputations = _changes(session)
        if not (agents or reputations):
            return
        payload = json.dumps({"origin": replica, "agents": sorted(agents), "reputations": sorted(reputations)})
        if len(payload.encode()) > MAX_PAYLOAD:  # PostgreSQL refuses a longer one (and the transaction with it)
            payload = json.dumps({"origin": replica, "everything": True})
        session.connection().execute(text("SELECT pg_notify(:channel, :payload)"),
                                     {"channel": channel_name, "payload": payload})


def _changes(session: Session) -> tuple[set[str], set[tuple[str, str]]]:
    agents: set[str] = set()
    reputations: set[tuple[str, str]] = set()
    for record in [*session.new, *session.dirty, *session.deleted]:
        if isinstance(record, store.ReputationRecord):
            reputations.add((record.agent, record.tool))
        column = AGENT_RECORDS.get(type(record))
        if column is None:
            continue
        if isinstance(record, store.AgentRecord) and record in session.dirty and _changed(record) <= HEARTBEAT_ONLY:
            continue
        agents.add(getattr(record, column))
    return agents, reputations


def _changed(record: Any) -> set[str]:
    state = inspect(record)
    return {attribute.key for attribute in state.attrs if attribute.history.has_changes()}


def conninfo(engine: Engine) -> str:
    """The engine's URL as libpq takes it (``postgresql://...``, options such as the search path kept)."""
    url = make_url(engine.url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def listen_forever(registry: Registry) -> None:
    """Hear other replicas' changes and reload what they name, reconnecting whenever the connection drops."""
    import psycopg

    attempt = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo(registry.engine), autocommit=True) as connection:
                await connection.execute(f'LISTEN "{registry.channel}"')
                attempt = 0
                # Notifications sent before we listened (since the registry loaded, or while the connection
                # was down) are lost: read everything again; only what changed is re-indexed.
                await reload_everything(registry)
                async for notification in connection.notifies():
                    await handle(registry, notification.payload)
        except psycopg.Error as exc:
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            attempt += 1
            log.warning("replica %s: listening for other replicas failed (%s); again in %gs", registry.replica_id,
                        exc, delay)
            await anyio.sleep(delay)


async def handle(registry: Registry, payload: str) -> None:
    """Reload what another replica's notification names; our own changes are in memory already."""
    try:
        message = json.loads(payload)
    except ValueError:
        log.warning("replica %s: a notification that is not JSON: %.200s", registry.replica_id, payload)
        return
    if message.get("origin") == registry.replica_id:
        return
    if message.get("everything"):
        await reload_everything(registry)
        return
    for agent in message.get("agents") or []:
        await registry.reload_agent(agent)
    keys = [(agent, tool) for agent, tool in message.get("reputations") or []]
    if keys:
        await anyio.to_thread.run_sync(registry.reload_reputations, keys)


async def reload_everything(registry: Registry) -> None:
    with tenancy.as_registry(), registry.sessions.begin() as session:  # every project's agents
        names = {agent.name for agent in store.list_agents(session)} | set(registry.endpoints)
    for name in sorted(names):
        await registry.reload_agent(name)
    await anyio.to_thread.run_sync(registry.reload_reputations, list(registry.reputations))


# -- several workers on one machine (``mesh registry run --workers N``) ------------------------------------

WORKER_SETTINGS = "MESH_REGISTRY_WORKER"  # the settings each worker process builds its registry from (JSON)


def run_workers(config: RegistryConfig, workers: int, announce: Callable[[str], None] = log.warning) -> None:
    """Serve the registry from ``workers`` processes sharing one listening socket (uvicorn's workers).

    Each worker is a full replica: its own registry built by ``worker_app``, kept in step with the others
    through the database. This process first does what must happen once (refuse SQLite, migrate the
    schema, make the registry's signing key), then only supervises: uvicorn starts a new worker in place
    of one that dies."""
    import uvicorn

    from mesh.keys import KeyRing
    from mesh.registry.node import REGISTRY_KEYS

    engine = store.connect(store.database_url(config.workspace.root, config.database_url))
    try:
        check_workers(engine, workers)
        store.migrate(engine)
    finally:
        engine.dispose()
    KeyRing.open(config.workspace.state_dir / "keys" / REGISTRY_KEYS, create=True)
    overrides = {"host": config.host, "port": config.port, "strict": config.strict,
                 "trust_local_keys": config.trust_local_keys}
    os.environ[WORKER_SETTINGS] = json.dumps({"workspace": str(config.workspace.root), **overrides})
    announce(f"registry: HTTP API {config.base_url}/v1  MCP {config.base_url}/mcp  ({workers} workers)")
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, host=config.host, port=config.port,
                log_level="warning")


def worker_app() -> Any:
    """One worker's app (uvicorn calls this in each worker process)."""
    from mesh import telemetry
    from mesh.registry.app import build_app
    from mesh.registry.config import RegistryConfig
    from mesh.registry.node import Registry
    from mesh.workspace import Workspace

    settings = json.loads(os.environ[WORKER_SETTINGS])
    config = RegistryConfig.from_workspace(Workspace(settings.pop("workspace")), **settings)
    telemetry.configure_from_env("mesh-registry", scrape=True)
    registry = Registry.open(config)
    telemetry.observe_reputation(registry.agent_scores)
    return build_app(registry)
