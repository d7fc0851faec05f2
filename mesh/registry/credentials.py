"""Credentials for target systems, stored and handed out by reference (``secret_ref``).

Agents, sandboxes and policies name a credential by its ``secret_ref``; its value stays in a backend and
is read only when ``Credentials.resolve`` attaches it to a call or a sandbox, after the credential's own
scope (organisation, agent, target system) and the policy (``input.credentials``, rule
``credential_not_allowed``) allow it. Backends:

- ``local`` (default): AES-256-GCM, the key in the workspace's ``.mesh/secrets.key`` (mode 0600, made on
  first use); the ciphertext is kept in the database (``credential_versions``), bound to its
  organisation, ref and version so a ciphertext moved to another row does not decrypt.
- ``vault``: HashiCorp Vault's KV v2 engine through ``hvac``; the database keeps only the Vault version.
  Configured in ``registry/registry.toml``::

      [secrets]
      backend = "vault"         # or MESH_SECRETS_BACKEND=vault
      url = "https://vault:8200" # else VAULT_ADDR; the token is VAULT_TOKEN, never a file in the workspace
      mount = "secret"          # the KV v2 mount
      prefix = "mcpmesh"        # values live at PREFIX/ORG/REF

Rotation writes a new version and keeps the previous one (still resolvable with ``previous=True``) until
``cutover`` destroys it. Every change and every resolution, allowed or refused, goes to the audit log by
reference. A value never appears in a log line, a run, an audit entry, an error message or a ``repr``:
``Secret`` holds it, and only ``Secret.reveal()`` gives it out.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mesh.names import is_valid_name
from mesh.registry import audit
from mesh.registry.store import CredentialRecord, CredentialVersionRecord, utcnow

log = logging.getLogger(__name__)

DEFAULT_ORG = "default"  # until tenancy: every credential belongs to the default organisation
KEY_FILE = "secrets.key"  # under the workspace's .mesh/
BACKEND_VARIABLE = "MESH_SECRETS_BACKEND"
ANY_AGENT = "*"
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REF_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"


class CredentialProblem(Exception):
    """A credential cannot be stored, changed or resolved; the message names it by reference, never its value."""

    kind = "bad-request"


class UnknownCredential(CredentialProblem):
    kind = "unknown-credential"


class CredentialExists(CredentialProblem):
    kind = "credential-exists"


class CredentialUnavailable(CredentialProblem):
    """The backend cannot give or keep a value: Vault unreachable or refusing, a key that does not open it."""

    kind = "credential-unavailable"


class CredentialRefused(CredentialProblem):
    """The credential's scope or the policy does not let it go where it was asked for."""

    kind = "credential-refused"


class Secret:
    """A credential's value that will not show itself: ``str``, ``repr`` and f-strings print a mask."""

    __slots__ = ("_value", "ref", "version")

    def __init__(self, value: str, ref: str, version: int):
        self._value = value
        self.ref = ref
        self.version = version

    def reveal(self) -> str:
        """The value itself: pass it straight to the target system, never to a log or a message."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(ref={self.ref!r}, version={self.version}, value=***)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled (it would carry its value)")


def check_ref(value: Any, what: str = "secret_ref") -> str:
    if not isinstance(value, str) or not _REF.fullmatch(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise CredentialProblem(f"{what} {shown!r} is not valid ({REF_RULE})")
    return value


def check_agent(value: Any) -> str:
    if value != ANY_AGENT and not (isinstance(value, str) and is_valid_name(value)):
        raise CredentialProblem(f"agent {str(value)[:40]!r} must be an agent name or '*'")
    return value


# -- backends ---------------------------------------------------------------------------------------


class Backend(Protocol):
    """Where values live. ``store`` returns the columns to keep in ``credential_versions``."""

    name: str

    def store(self, org: str, ref: str, version: int, value: str) -> dict[str, Any]: ...

    def load(self, org: str, ref: str, row: CredentialVersionRecord) -> str: ...

    def destroy(self, org: str, ref: str, rows: list[CredentialVersionRecord]) -> None: ...


class LocalCipher:
    """AES-256-GCM under a key file readable by its owner only."""

    def __init__(self, path: Path):
        self.path = path
        self._aead: AESGCM | None = None

    def _key(self) -> AESGCM:
        if self._aead is None:
            if not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    pass  # another process made it first: read theirs
                else:
                    with os.fdopen(fd, "w") as handle:
                        handle.write(base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n")
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & 0o077:
                raise CredentialUnavailable(f"{self.path} is open to others (mode {mode:04o}); `chmod 600` it first")
            try:
                key = base64.urlsafe_b64decode(self.path.read_text().strip())
                self._aead = AESGCM(key)
            except (ValueError, OSError) as exc:
                raise CredentialUnavailable(f"{self.path} does not hold a 256-bit key") from exc
        return self._aead

    def encrypt(self, value: str, bound_to: bytes) -> str:
        nonce = os.urandom(12)
        return "v1." + base64.urlsafe_b64encode(nonce + self._key().encrypt(nonce, value.encode(), bound_to)).decode()

    def decrypt(self, token: str, bound_to: bytes, what: str) -> str:
        try:
            version, _, body = token.partition(".")
            if version != "v1":
                raise ValueError(version)
            raw = base64.urlsafe_b64decode(body)
            return self._key().decrypt(raw[:12], raw[12:], bound_to).decode()
        except (InvalidTag, ValueError) as exc:
            raise CredentialUnavailable(f"{what} does not decrypt: another key made it, or it was altered") from exc


class LocalBackend:
    name = "local"

    def __init__(self, key_path: Path):
        self.cipher = LocalCipher(key_path)

    @staticmethod
    def _bound(org: str, ref: str, version: int) -> bytes:
        return f"mcpmesh-credential\x00{org}\x00{ref}\x00{version}".encode()

    def store(self, org: str, ref: str, version: int, value: str) -> dict[str, Any]:
        return {"ciphertext": self.cipher.encrypt(value, self._bound(org, ref, version))}

    def load(self, org: str, ref: str, row: CredentialVersionRecord) -> str:
        if row.ciphertext is None:
            raise CredentialProblem(f"version {row.version} of credential {ref!r} is not in the local store")
        return self.cipher.decrypt(row.ciphertext, self._bound(org, ref, row.version),
                                   f"version {row.version} of credential {ref!r}")

    def destroy(self, org: str, ref: str, rows: list[CredentialVersionRecord]) -> None:
        """Nothing outside the database: removing the rows removes the ciphertexts."""


class VaultBackend:
    """HashiCorp Vault, KV version 2, through an ``hvac.Client`` (values at ``PREFIX/ORG/REF``)."""

    name = "vault"

    def __init__(self, client: Any, *, mount: str = "secret", prefix: str = "mcpmesh"):
        self.client = client
        self.mount = mount
        self.prefix = prefix.strip("/")

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> VaultBackend:
        try:
            import hvac
        except ImportError as exc:
            raise CredentialUnavailable("the vault backend needs hvac: pip install 'mcpmesh[vault]'") from exc
        url = settings.get("url") or os.environ.get("VAULT_ADDR")
        if not url:
            raise CredentialUnavailable("the vault backend needs [secrets] url in registry.toml, or VAULT_ADDR")
        client = hvac.Client(url=url, token=os.environ.get("VAULT_TOKEN"), namespace=settings.get("namespace"))
        return cls(client, mount=settings.get("mount", "secret"), prefix=settings.get("prefix", "mcpmesh"))

    def path(self, org: str, ref: str) -> str:
        return f"{self.prefix}/{org}/{ref}"

    def _call(self, what: str, org: str, ref: str, call: Callable[[], Any]) -> Any:
        """Vault's answer, or a ``CredentialProblem`` naming the failure by its kind only (an error's text
        could quote a request)."""
        try:
            return call()
        except Exception as exc:  # hvac.exceptions.VaultError, requests' errors: named, never quoted
            raise CredentialUnavailable(f"vault refused to {what} credential {ref!r} at {self.mount}/"
                                    f"{self.path(org, ref)}: {type(exc).__name__}") from None

    def store(self, org: str, ref: str, version: int, value: str) -> dict[str, Any]:
        kv = self.client.secrets.kv.v2
        answer = self._call("store", org, ref, lambda: kv.create_or_update_secret(
            path=self.path(org, ref), secret={"value": value}, mount_point=self.mount))
        return {"vault_version": int(answer["data"]["version"])}

    def load(self, org: str, ref: str, row: CredentialVersionRecord) -> str:
        kv = self.client.secrets.kv.v2
        answer = self._call("read", org, ref, lambda: kv.read_secret_version(
            path=self.path(org, ref), version=row.vault_version, mount_point=self.mount,
            raise_on_deleted_version=True))
        return answer["data"]["data"]["value"]

    def destroy(self, org: str, ref: str, rows: list[CredentialVersionRecord]) -> None:
        kv = self.client.secrets.kv.v2
        versions = [row.vault_version for row in rows if row.vault_version is not None]
        if versions:
            self._call("destroy", org, ref, lambda: kv.destroy_secret_versions(
                path=self.path(org, ref), versions=versions, mount_point=self.mount))

    def remove(self, org: str, ref: str) -> None:
        kv = self.client.secrets.kv.v2
        self._call("remove", org, ref, lambda: kv.delete_metadata_and_all_versions(
            path=self.path(org, ref), mount_point=self.mount))


def backend_for(workspace: Any) -> Backend:
    """The backend registry.toml's ``[secrets]`` (or ``MESH_SECRETS_BACKEND``) names; local by default."""
    settings = dict(workspace.config().get("secrets", {}) or {})
    chosen = os.environ.get(BACKEND_VARIABLE) or settings.get("backend", "local")
    if chosen == "local":
        return LocalBackend(workspace.state_dir / KEY_FILE)
    if chosen == "vault":
        return VaultBackend.from_settings(settings)
    raise CredentialUnavailable(f"[secrets] backend must be 'local' or 'vault', not {str(chosen)[:40]!r}")


# -- the store ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CredentialInfo:
    """What may be shown about a credential: everything but its value."""

    ref: str
    org: str
    agent: str
    system: str
    backend: str
    version: int
    previous_version: int | None
    description: str
    created_by: str
    created_at: str
    rotated_at: str | None

    @classmethod
    def of(cls, record: CredentialRecord) -> CredentialInfo:
        return cls(record.ref, record.org_id, record.agent, record.system, record.backend, record.version,
                   record.previous_version, record.description, record.created_by, record.created_at.isoformat(),
                   record.rotated_at.isoformat() if record.rotated_at else None)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def policy_field(self) -> dict[str, Any]:
        """How the policy sees it (``input.credentials[]``): by reference and scope."""
        return {"ref": self.ref, "system": self.system, "agent": self.agent, "org": self.org}


class Credentials:
    """Store, rotate, list and resolve credentials of one organisation (``org``)."""

    def __init__(self, sessions: sessionmaker[Session], backend: Backend, *, policy: Any = None,
                 org: str = DEFAULT_ORG, reputation: Callable[[str], float] | None = None,
                 scopes: Callable[[str], list[str]] | None = None):
        self.sessions = sessions
        self.backend = backend
        self.policy = policy  # a PolicyEngine; None: the credential's scope alone decides
        self.org = org
        self.reputation = reputation or (lambda agent: 1.0)
        self.scopes = scopes or (lambda agent: [])

    @classmethod
    def open(cls, workspace: Any, sessions: sessionmaker[Session], **options: Any) -> Credentials:
        return cls(sessions, backend_for(workspace), **options)

    def _get(self, session: Session, ref: str) -> CredentialRecord:
        record = session.get(CredentialRecord, (self.org, check_ref(ref)))
        if record is None:
            raise UnknownCredential(f"no credential {ref!r}")
        return record

    def _version(self, session: Session, ref: str, version: int) -> CredentialVersionRecord:
        row = session.get(CredentialVersionRecord, (self.org, ref, version))
        if row is None:
            raise CredentialProblem(f"version {version} of credential {ref!r} is gone")
        return row

    def _write_version(self, session: Session, ref: str, version: int, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise CredentialProblem(f"the value of credential {ref!r} must be a non-empty string")
        columns = self.backend.store(self.org, ref, version, value)
        session.add(CredentialVersionRecord(org_id=self.org, ref=ref, version=version, created_at=utcnow(),
                                            **columns))

    def _audit(self, session: Session, by: str, action: str, record: CredentialRecord | CredentialInfo,
               outcome: str = "done", **extra: Any) -> None:
        info = record if isinstance(record, CredentialInfo) else CredentialInfo.of(record)
        audit.append(session, org=self.org, actor=by, action=action, subject=info.ref, outcome=outcome,
                     data={**info.policy_field(), "version": info.version, "backend": info.backend, **extra})

    def set(self, ref: str, value: str, *, agent: str, system: str, by: str, description: str = "") -> CredentialInfo:
        """Store a new credential (version 1); one that exists is changed by ``rotate``."""
        check_ref(ref)
        check_ref(system, "system")
        check_agent(agent)
        try:
            with self.sessions.begin() as session:
                if session.get(CredentialRecord, (self.org, ref)) is not None:
                    raise CredentialExists(f"credential {ref!r} exists; `mesh secrets rotate {ref}` changes it")
                record = CredentialRecord(org_id=self.org, ref=ref, agent=agent, system=system,
                                          backend=self.backend.name, version=1, previous_version=None,
                                          description=description, created_by=by, created_at=utcnow())
                session.add(record)
                session.flush()
                self._write_version(session, ref, 1, value)
                self._audit(session, by, "credential-set", record)
                return CredentialInfo.of(record)
        except IntegrityError as exc:
            raise CredentialExists(f"credential {ref!r} was stored meanwhile; try again") from exc

    def rotate(self, ref: str, value: str, *, by: str, cutover: bool = False) -> CredentialInfo:
        """A new current version; the one it replaces stays resolvable (``previous=True``) until ``cutover``.
        A version kept from an earlier rotation is destroyed now (two rotations: two versions back)."""
        try:
            with self.sessions.begin() as session:
                record = self._get(session, ref)
                if record.backend != self.backend.name:
                    raise CredentialProblem(f"credential {ref!r} lives in the {record.backend} backend, "
                                            f"not {self.backend.name}")
                dropped = self._drop_previous(session, record)
                new = record.version + 1
                self._write_version(session, ref, new, value)
                record.previous_version, record.version, record.rotated_at = record.version, new, utcnow()
                if cutover:
                    self._drop_previous(session, record)
                self._audit(session, by, "credential-rotate", record, dropped=dropped,
                            previous_version=record.previous_version)
                return CredentialInfo.of(record)
        except IntegrityError as exc:
            raise CredentialProblem(f"credential {ref!r} was rotated meanwhile; try again") from exc

    def _drop_previous(self, session: Session, record: CredentialRecord) -> list[int]:
        if record.previous_version is None:
            return []
        row = session.get(CredentialVersionRecord, (self.org, record.ref, record.previous_version))
        if row is not None:
            self.backend.destroy(self.org, record.ref, [row])
            session.delete(row)
        dropped, record.previous_version = [record.previous_version], None
        session.flush()
        return dropped

    def cutover(self, ref: str, *, by: str) -> CredentialInfo:
        """Destroy the version kept since the last rotation: from now on only the current one resolves."""
        with self.sessions.begin() as session:
            record = self._get(session, ref)
            dropped = self._drop_previous(session, record)
            self._audit(session, by, "credential-cutover", record, dropped=dropped)
            return CredentialInfo.of(record)

    def remove(self, ref: str, *, by: str) -> None:
        with self.sessions.begin() as session:
            record = self._get(session, ref)
            info = CredentialInfo.of(record)
            rows = list(session.scalars(select(CredentialVersionRecord).where(
                CredentialVersionRecord.org_id == self.org, CredentialVersionRecord.ref == ref)))
            remove = getattr(self.backend, "remove", None)
            if remove is not None:
                remove(self.org, ref)
            else:
                self.backend.destroy(self.org, ref, rows)
            session.execute(delete(CredentialVersionRecord).where(
                CredentialVersionRecord.org_id == self.org, CredentialVersionRecord.ref == ref))
            session.delete(record)
            self._audit(session, by, "credential-remove", info)

    def list(self) -> list[CredentialInfo]:
        with self.sessions() as session:
            records = session.scalars(select(CredentialRecord).where(CredentialRecord.org_id == self.org)
                                      .order_by(CredentialRecord.ref))
            return [CredentialInfo.of(record) for record in records]

    def info(self, ref: str) -> CredentialInfo:
        with self.sessions() as session:
            return CredentialInfo.of(self._get(session, ref))

    def policy_input(self, info: CredentialInfo, agent: str, caller: str | None = None) -> dict[str, Any]:
        """The policy's input for attaching a credential outside a tool call (a sandbox's connected mode):
        the agent that would hold it is the target; reading a credential changes nothing there."""
        return {
            "kind": "credential", "method": "credentials/resolve",
            "caller": {"id": caller or f"agent:{agent}", "kind": "agent", "scopes": self.scopes(agent),
                       "reputation": self.reputation(agent)},
            "target": {"agent": agent, "tool": f"credential:{info.system}", "kind": "credential",
                       "annotations": {"readOnlyHint": True, "destructiveHint": False}, "scopes": [],
                       "reputation": self.reputation(agent), "probe": False},
            "arguments": {},
        }

    def resolve(self, ref: str, *, agent: str, system: str, caller: str | None = None,
                policy_input: dict[str, Any] | None = None, previous: bool = False) -> Secret:
        """The value of ``ref`` for ``agent`` to use on ``system``, if the credential's scope and the policy
        allow it; ``CredentialRefused`` or ``UnknownCredential`` otherwise. Allowed or not, it is audited.

        ``policy_input``: the input of the call the credential would ride on (``proxy.policy_input``); the
        credential is added as ``input.credentials``. Without one, ``self.policy_input`` is used."""
        actor = caller or f"agent:{agent}"
        with self.sessions.begin() as session:
            try:
                check_ref(ref)
                record = self._get(session, ref)
            except CredentialProblem as problem:
                audit.append(session, org=self.org, actor=actor, action="credential-resolve", subject=str(ref)[:128],
                             outcome="unknown", data={"ref": str(ref)[:128], "agent": agent, "system": system})
                refusal: CredentialProblem = problem
            else:
                refusal, info = None, CredentialInfo.of(record)
                rule = None
                if record.agent not in (ANY_AGENT, agent) or record.system != system:
                    rule = "credential_scope"
                    refusal = CredentialRefused(f"credential {ref!r} is not for agent {agent!r} on system "
                                                f"{system!r}")
                elif self.policy is not None:
                    asked = dict(policy_input or self.policy_input(info, agent, caller))
                    asked["credentials"] = [*asked.get("credentials", []), info.policy_field()]
                    decision = self.policy.evaluate(asked)
                    if not decision.allow:
                        rule = decision.rule
                        refusal = CredentialRefused(f"the policy refuses credential {ref!r} to {agent!r}: "
                                                    f"{'; '.join(decision.reasons) or decision.rule}")
                version = record.previous_version if previous else record.version
                if refusal is None and version is None:
                    refusal = CredentialProblem(f"credential {ref!r} keeps no previous version (none since "
                                                "the last cutover)")
                self._audit(session, actor, "credential-resolve", info, outcome="deny" if refusal else "allow",
                            **{"for": {"agent": agent, "system": system}, "rule": rule, "resolved": version})
                if refusal is None:
                    row = self._version(session, ref, version)
        if refusal is not None:
            raise refusal
        return Secret(self.backend.load(self.org, ref, row), ref, version)


# -- HTTP: /v1/secrets (action secrets:admin) ----------------------------------------------------------------


def routes(registry: Any) -> list[Any]:
    """Administering credentials over HTTP, to mount under ``/v1``: list (no values), store, rotate, cut
    over, remove. No route ever answers with a value: only ``resolve`` gives one out, in process."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from mesh.registry.gate import allowed, parse_json
    from mesh.registry.problems import Problem, problem_json

    async def body_of(request: Request) -> dict[str, Any]:
        body = parse_json(await request.body(), registry.config.max_json_depth)
        if not isinstance(body, dict):
            raise Problem("bad-request", "the request body must be a JSON object")
        return body

    def text(body: dict[str, Any], name: str, default: str | None = None) -> str:
        value = body.get(name, default)
        if not isinstance(value, str):
            raise Problem("bad-request", f"{name} must be a string" + ("" if default is not None else
                                                                        " (it is required)"))
        return value

    def answered(handler: Any) -> Any:
        async def checked(request: Request) -> Response:
            return await handler(request, allowed(registry, request, "secrets:admin").id)

        checked.__doc__ = handler.__doc__
        return problem_json(checked, kinds=(CredentialProblem,))

    async def listing(request: Request, by: str) -> Response:
        """Every credential with its scope and versions; never a value."""
        return JSONResponse({"secrets": [info.to_json() for info in registry.credentials.list()]})

    async def store_new(request: Request, by: str) -> Response:
        """Store a new credential: value, agent ('*': any), system, description."""
        body = await body_of(request)
        info = registry.credentials.set(request.path_params["ref"], text(body, "value"), agent=text(body, "agent"),
                                        system=text(body, "system"), by=by,
                                        description=text(body, "description", ""))
        return JSONResponse(info.to_json(), status_code=201)

    async def remove(request: Request, by: str) -> Response:
        """Remove a credential and every version of it."""
        registry.credentials.remove(request.path_params["ref"], by=by)
        return Response(status_code=204)

    async def rotate(request: Request, by: str) -> Response:
        """A new version; the previous stays until the cutover (``cutover: true`` does it at once)."""
        body = await body_of(request)
        cutover = body.get("cutover", False)
        if not isinstance(cutover, bool):
            raise Problem("bad-request", "cutover must be true or false")
        info = registry.credentials.rotate(request.path_params["ref"], text(body, "value"), by=by, cutover=cutover)
        return JSONResponse(info.to_json())

    async def cutover(request: Request, by: str) -> Response:
        """Destroy the version kept since the last rotation."""
        return JSONResponse(registry.credentials.cutover(request.path_params["ref"], by=by).to_json())

    return [Route("/secrets", answered(listing), methods=["GET"]),
            Route("/secrets/{ref}", answered(store_new), methods=["PUT"]),
            Route("/secrets/{ref}", answered(remove), methods=["DELETE"]),
            Route("/secrets/{ref}/rotate", answered(rotate), methods=["POST"]),
            Route("/secrets/{ref}/cutover", answered(cutover), methods=["POST"])]


# -- the command line: mesh secrets set | ls | rotate | cutover | rm --------------------------------------


def read_value(args: argparse.Namespace) -> str:
    """The value from ``--from-env VAR`` or standard input (never the command line: shells keep history)."""
    if args.from_env:
        value = os.environ.get(args.from_env)
        if not value:
            raise CredentialProblem(f"environment variable {args.from_env} is empty or unset")
        return value
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("value: ")
    value = sys.stdin.read().rstrip("\n")
    if not value:
        raise CredentialProblem("no value on standard input")
    return value


def command(workspace: Any, args: argparse.Namespace) -> int:
    """``mesh secrets ...`` on the workspace's store (its database, and its key or Vault)."""
    from mesh.registry.audit import workspace_sessions

    credentials = Credentials.open(workspace, workspace_sessions(workspace))
    who = f"user:{os.environ.get('USER', 'local')}"
    action = args.secrets_command
    if action == "ls":
        for info in credentials.list():
            kept = f" (previous v{info.previous_version} kept until cutover)" if info.previous_version else ""
            print(f"{info.ref}  agent={info.agent}  system={info.system}  v{info.version}{kept}  {info.backend}"
                  + (f"  {info.description}" if info.description else ""))
        return 0
    if action == "set":
        info = credentials.set(args.ref, read_value(args), agent=args.agent, system=args.system, by=who,
                               description=args.description)
        print(f"{info.ref}: stored v{info.version} for agent {info.agent} on {info.system} ({info.backend})")
    elif action == "rotate":
        info = credentials.rotate(args.ref, read_value(args), by=who, cutover=args.cutover)
        kept = f"; v{info.previous_version} kept until `mesh secrets cutover {info.ref}`" if info.previous_version \
            else ""
        print(f"{info.ref}: now v{info.version}{kept}")
    elif action == "cutover":
        info = credentials.cutover(args.ref, by=who)
        print(f"{info.ref}: only v{info.version} remains")
    elif action == "rm":
        credentials.remove(args.ref, by=who)
        print(f"{args.ref}: removed, every version")
    return 0


__all__ = ["CredentialExists", "CredentialInfo", "CredentialProblem", "CredentialRefused", "CredentialUnavailable",
           "Credentials", "LocalBackend", "Secret", "UnknownCredential", "VaultBackend", "backend_for"]
