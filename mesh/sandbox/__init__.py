"""Sandboxes: OpenAPI services an agent practises against, with a lifecycle the registry keeps.

How the parts fit:

- ``config``     what a sandbox is made of (the create/patch bodies, per-service configuration)
- ``openapi_mock`` a spec answered as a mock API; ``emulator`` the sandbox's services (mock or emulated,
  failure injection, credentials, pagination); ``connected`` the one path to a real endpoint
- ``lifecycle``  the registry's records: create, change, reset, delete, expire; approvals
- ``tools``, ``front``, ``routes`` the registry's faces: each sandbox as an MCP server, and ``/v1``
  (``api_doc`` their OpenAPI description); ``commands`` ``mesh sandbox`` and ``mesh approve``
- ``client``     ``SandboxClient``: all of the below from Python, as an agent (its token) or the local user

The interface, for a learning loop or a script (everything goes through the registry; ``A`` is the
agent the sandbox is for, ``REG`` the registry's URL):

1. Create: ``POST REG/v1/agents/A/sandboxes`` with ``{"required_services": ["tracker"], "mode":
   "emulated", "services": {"tracker": {"credentials": ["tok"], "seed": {"/users": [...]},
   "failures": {"rate": 0.1, "status": 429}}}, "ttl_seconds": 600}`` → 201 with ``id`` and ``mcp``.
2. Use its tools with any MCP client at ``mcp`` (``REG/agents/A/sandboxes/ID/mcp``): one tool per
   operation, ``SERVICE__OPERATION``; arguments are the path and query parameters by name, ``body`` and
   ``headers``; the result's structured content is ``{status, headers, body}``. Every call is carried
   by the registry's call path (policy, provenance, reputation) to the ``sandbox`` agent, and recorded in
   ``sandbox_runs``; label an attempt with ``_meta={"io.mcpmesh/attempt": "task-3/try-2"}``.
3. Check: ``GET .../sandboxes/ID/state`` (what the emulated services hold, by collection path),
   ``GET .../sandboxes/ID/runs`` (every attempt with its arguments, answer and registry ``run_id``).
4. ``POST .../sandboxes/ID/reset`` starts again from the seed data (runs stay); ``PATCH`` changes it;
   ``DELETE`` removes it; a sandbox past its TTL is removed by the registry.

An agent calling a sandbox needs scopes ``sandbox:call`` (and ``sandbox:read`` for the state) in
``[grants]``; the local user holds them all. Connected mode also needs ``secret_ref`` and ``mesh approve``.

``docs/sandboxes.md`` says the same at length, with the connected mode and its approvals.
"""

from mesh.sandbox.config import Failures, FixedResponse, SandboxPatch, SandboxRef, SandboxRequest, ServiceConfig

__all__ = ["Failures", "FixedResponse", "SandboxPatch", "SandboxRef", "SandboxRequest", "ServiceConfig"]
