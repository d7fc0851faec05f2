"""Sign-in with OpenID Connect: the registry as an OAuth protected resource (MCP authorization, 2025-11-25).

The registry publishes what a client needs to get a token for it (RFC 9728
``/.well-known/oauth-protected-resource``: this resource, the issuer it trusts) and names that document in
``WWW-Authenticate`` on every 401 (``gate.py``). It accepts access tokens (JWT) of the one configured issuer:
the signature against the issuer's JWKS (found by OpenID discovery, re-fetched when a key id is new), the
issuer, the audience (this registry's resource indicator), expiry. The groups claim gives roles per
organisation (``[oidc.roles]``); the first sign-in creates the user (``people.sign_in``).

A browser signs in with the authorization code flow and PKCE: ``/v1/auth/login`` sends it to the provider,
``/v1/auth/callback`` takes the code back, checks the token, and keeps the sign-in as a personal API token
in an HttpOnly cookie (``people.SESSION_COOKIE``) for the workspace UI to come. Authlib does the OAuth parts,
joserfc (Authlib's JOSE library) the token checks.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mesh.registry.auth import AuthProblem, outranks, unverified_parts
from mesh.registry.config import OidcConfig
from mesh.registry.problems import Problem

if TYPE_CHECKING:
    from mesh.registry.node import Registry

log = logging.getLogger(__name__)
METADATA_PATH = "/.well-known/oauth-protected-resource"
CLOCK_SKEW = 30  # seconds
KEY_REFRESH_INTERVAL = 30.0  # an unknown kid re-fetches the JWKS at most this often
LOGIN_WINDOW = 600.0  # seconds a browser has to come back from the provider


def resource_metadata_url(base_url: str) -> str:
    return base_url.rstrip("/") + METADATA_PATH


def www_authenticate(base_url: str, error: str | None = None) -> str:
    """The challenge of a 401: where the protected resource metadata is (MCP authorization, RFC 9728 §5.1)."""
    challenge = f'Bearer realm="mcpmesh", resource_metadata="{resource_metadata_url(base_url)}"'
    return challenge + (f', error="{error}"' if error else "")


class Issuer:
    """The configured OpenID provider, as far as checking its access tokens goes."""

    def __init__(self, config: OidcConfig, resource: str, *, skew: float = CLOCK_SKEW,
                 http: httpx.Client | None = None):
        self.config = config
        self.skew = int(skew)
        self.issuer = config.issuer.rstrip("/")
        self.resource = resource.rstrip("/")
        self._http = http or httpx.Client(timeout=10, follow_redirects=False)
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_fetched = 0.0
        self._lock = threading.Lock()

    def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (OpenID Connect Discovery; RFC 8414 as a fallback), fetched once."""
        if self._metadata is None:
            for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
                try:
                    answer = self._http.get(self.issuer + path)
                except httpx.HTTPError as exc:
                    raise AuthProblem(f"the OpenID provider {self.issuer} cannot be reached: {exc!r}") from exc
                if answer.status_code == 200:
                    document = answer.json()
                    if str(document.get("issuer", "")).rstrip("/") != self.issuer:
                        raise AuthProblem(f"the discovery document of {self.issuer} names another issuer")
                    self._metadata = document
                    break
            else:
                raise AuthProblem(f"the OpenID provider {self.issuer} publishes no discovery document")
        return self._metadata

    def keys(self, *, refresh: bool = False) -> KeySet:
        with self._lock:
            stale = refresh and time.monotonic() - self._keys_fetched > KEY_REFRESH_INTERVAL
            if self._keys is None or stale:
                try:
                    answer = self._http.get(self.metadata()["jwks_uri"])
                    answer.raise_for_status()
                    self._keys = KeySet.import_key_set(answer.json())
                except (httpx.HTTPError, ValueError, KeyError, JoseError) as exc:
                    raise AuthProblem(f"the OpenID provider's keys cannot be read: {exc!r}") from exc
                self._keys_fetched = time.monotonic()
            return self._keys

    def verify(self, token: str, now: float | None = None) -> dict[str, Any]:
        """The claims of an access token this issuer signed for this registry; ``AuthProblem`` naming what is
        wrong otherwise."""
        now = time.time() if now is None else now
        kid = unverified_parts(token)[0].get("kid")
        keys = self.keys()
        if kid is not None and all(key.kid != kid for key in keys.keys):  # the issuer may have rotated its keys
            keys = self.keys(refresh=True)
        try:
            decoded = jwt.decode(token, keys, algorithms=self.config.algorithms)
        except (JoseError, ValueError) as exc:
            raise AuthProblem(f"the access token does not verify against {self.issuer}: {exc}") from exc
        claims = dict(decoded.claims)
        if str(claims.get("iss", "")).rstrip("/") != self.issuer:
            raise AuthProblem(f"the access token's issuer is {claims.get('iss')!r}, not {self.issuer!r}")
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        if not any(isinstance(a, str) and self.for_this_resource(a) for a in audiences):
            raise AuthProblem(f"the access token is not for this registry (aud must be {self.resource!r})")
        for name in ("exp", "sub"):
            if name not in claims:
                raise AuthProblem(f"the access token has no {name!r} claim")
        try:
            jwt.JWTClaimsRegistry(now=int(now), leeway=self.skew, exp={"essential": True},
                                  sub={"essential": True}).validate(claims)
        except JoseError as exc:
            raise AuthProblem(f"the access token is refused: {exc.description or exc.error}") from exc
        return claims

    def for_this_resource(self, audience: str) -> bool:
        """A token for the registry, or for a path of it (``…/mcp``), is for this resource."""
        audience = audience.rstrip("/")
        return audience == self.resource or audience.startswith(self.resource + "/")

    def roles(self, claims: dict[str, Any], default_org: str) -> dict[str, str]:
        """org -> role from the groups claim through ``[oidc.roles]`` (the highest role when several groups
        name one org), plus ``default_role`` in the default org for a person no group maps there."""
        groups = claims.get(self.config.groups_claim) or []
        if isinstance(groups, str):
            groups = groups.split()
        granted: dict[str, str] = {}
        for group in groups if isinstance(groups, list) else []:
            target = self.config.roles.get(str(group))
            if target is None:
                continue
            org, _, role = target.rpartition(":")
            if org not in granted or outranks(role, granted[org]):
                granted[org] = role
        if self.config.default_role and default_org not in granted:
            granted[default_org] = self.config.default_role
        return granted


async def prefetch(issuer: Issuer) -> None:
    """Read the provider's discovery document and keys at start, off the event loop, so the first signed-in
    request does not wait for them; a provider that is down now is tried again at that request."""
    try:
        await anyio.to_thread.run_sync(issuer.keys)
    except AuthProblem as exc:
        log.warning("sign-in: %s", exc)


def protected_resource_metadata(registry: Registry) -> dict[str, Any]:
    """RFC 9728 metadata: this registry as a resource, and the issuer whose tokens it accepts."""
    config = registry.config
    document: dict[str, Any] = {"resource": config.resource, "resource_name": "mcpmesh registry",
                                "bearer_methods_supported": ["header"],
                                "scopes_supported": config.oidc.scopes if config.oidc else []}
    if config.oidc:
        document["authorization_servers"] = [config.oidc.issuer.rstrip("/")]
        document["mcpmesh_client_id"] = config.oidc.client_id  # the public client `mesh login` signs in as
    return document


# -- the browser's sign-in ------------------------------------------------------------------------------


@dataclass
class _PendingLogin:
    verifier: str
    nonce: str
    redirect_uri: str
    return_to: str
    started: float


class BrowserSignIn:
    """Authorization code + PKCE for a browser: state kept in this process for ``LOGIN_WINDOW`` seconds."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.pending: dict[str, _PendingLogin] = {}

    def issuer(self) -> Issuer:
        issuer = self.registry.people.issuer
        if issuer is None:
            raise Problem("bad-request", "no OpenID provider is configured ([oidc] in registry/registry.toml)")
        return issuer

    def client(self, redirect_uri: str) -> AsyncOAuth2Client:
        config = self.registry.config.oidc
        assert config is not None
        return AsyncOAuth2Client(config.client_id, config.client_secret, scope=" ".join(config.scopes),
                                 redirect_uri=redirect_uri, code_challenge_method="S256",
                                 token_endpoint_auth_method="client_secret_basic" if config.client_secret else "none")

    async def login(self, request: Request) -> Response:
        """Send the browser to the provider, remembering the PKCE verifier under a fresh ``state``."""
        issuer = self.issuer()
        return_to = request.query_params.get("return_to", "/v1/users/me")
        if not return_to.startswith("/") or return_to.startswith("//"):
            raise Problem("bad-request", "return_to must be a path of this registry (starting with one '/')")
        now = time.monotonic()
        self.pending = {s: p for s, p in self.pending.items() if now - p.started < LOGIN_WINDOW}
        if len(self.pending) > 10_000:
            raise Problem("bad-request", "too many sign-ins under way; try again in a few minutes")
        redirect_uri = str(request.url_for("oidc_callback"))
        state, verifier, nonce = generate_token(32), generate_token(64), generate_token(24)
        async with self.client(redirect_uri) as client:
            url, _ = client.create_authorization_url(issuer.metadata()["authorization_endpoint"], state=state,
                                                     code_verifier=verifier, nonce=nonce, resource=issuer.resource)
        self.pending[state] = _PendingLogin(verifier, nonce, redirect_uri, return_to, now)
        return RedirectResponse(url, status_code=302)

    async def callback(self, request: Request) -> Response:
        """Exchange the code (with the verifier), check the access token like any other, sign the person in,
        and keep the sign-in in an HttpOnly cookie."""
        issuer = self.issuer()
        params = request.query_params
        if "error" in params:
            raise Problem("unauthenticated", f"the provider refused the sign-in: {params['error'][:200]} "
                                             f"{params.get('error_description', '')[:300]}".strip())
        pending = self.pending.pop(params.get("state", ""), None)
        if pending is None or time.monotonic() - pending.started > LOGIN_WINDOW:
            raise Problem("unauthenticated", "this sign-in is unknown or too old (state); start again at "
                                             "/v1/auth/login")
        if not params.get("code"):
            raise Problem("bad-request", "the callback carries no code")
        async with self.client(pending.redirect_uri) as client:
            try:
                token = await client.fetch_token(issuer.metadata()["token_endpoint"], code=params["code"],
                                                 code_verifier=pending.verifier, resource=issuer.resource)
            except Exception as exc:  # Authlib raises its own OAuthError, httpx its errors
                raise Problem("unauthenticated", f"the provider did not give a token for the code: {exc}") from exc
        try:
            caller = self.registry.people.identify(str(token["access_token"]))
        except (AuthProblem, KeyError) as exc:
            raise Problem("unauthenticated", f"the provider's access token is refused: {exc}") from exc
        expires = max(1.0, float(token.get("expires_at") or time.time() + 3600) - time.time())
        from mesh.registry import people

        assert caller.user is not None
        with self.registry.sessions.begin() as session:  # a person of no organisation yet still signs in
            _, secret = people.create_token(session, user_id=caller.user,
                                            org_id=caller.org or self.registry.people.default_org,
                                            name="browser sign-in",
                                            scopes=["*"], expires_at=people.utcnow() + timedelta(seconds=expires))
        self.registry.audit(caller.id, "sign-in", caller.user, "done", "browser, authorization code + PKCE",
                            request.client.host if request.client else None,
                            org=caller.org or self.registry.people.default_org)
        response = RedirectResponse(pending.return_to, status_code=303)
        response.set_cookie(people.SESSION_COOKIE, secret, max_age=int(expires), httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/")
        return response


def routes(registry: Registry) -> list[Route]:
    """``/.well-known/oauth-protected-resource`` (and its path-suffixed forms) and the browser sign-in pair."""
    browser = BrowserSignIn(registry)

    async def metadata(request: Request) -> JSONResponse:
        return JSONResponse(protected_resource_metadata(registry))

    def problems(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except Problem as problem:
                return problem.response()
            except AuthProblem as exc:
                return Problem("unauthenticated", str(exc)).response()

        return wrapped

    return [
        Route(METADATA_PATH, metadata, methods=["GET"]),
        Route(METADATA_PATH + "/{path:path}", metadata, methods=["GET"]),
        Route("/v1/auth/login", problems(browser.login), methods=["GET"], name="oidc_login"),
        Route("/v1/auth/callback", problems(browser.callback), methods=["GET"], name="oidc_callback"),
    ]
