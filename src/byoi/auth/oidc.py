"""byoi as an OpenID Connect relying party: the authorization code flow with PKCE, for `AuthMode=SSO` domains.

The protocol pieces come from authlib (PKCE S256 challenge, random state and nonce, URL building) and its JOSE
successor joserfc (ID-token signature against the provider's JWKS, and the iss/aud/exp/nonce claims); the
HTTP calls (discovery, token exchange, JWKS) go through httpx2 like every other outbound call in byoi.

The flow's state (state, nonce, code verifier, where to go next) travels in a cookie sealed with the master key
(Fernet: encrypted and authenticated) and valid for `FLOW_SECONDS`, so any replica can finish a flow another
began, and nothing is stored server-side until the person is signed in.

Configured from the environment: BYOI_OIDC_ISSUER, BYOI_OIDC_CLIENT_ID, BYOI_OIDC_CLIENT_SECRET (environment or
file only, never a command-line argument) or BYOI_OIDC_CLIENT_SECRET_FILE, BYOI_OIDC_CLAIM (the claim matched
against a user profile's SingleSignOnUserValue; default `preferred_username`), BYOI_OIDC_SCOPES.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx2 as httpx

if TYPE_CHECKING:
    from joserfc.jwk import KeySet
# authlib and joserfc are imported where a sign-in uses them: a server without OIDC never loads them (3 MiB).

FLOW_SECONDS = 600  # a sign-in at the provider must finish within this


class OidcError(Exception):
    """The provider or its answer is not acceptable; the message says what, for the person and the log."""


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str
    claim: str = "preferred_username"
    scopes: str = "openid profile email"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OidcSettings | None:
        """None when OIDC is not configured; ValueError naming the variable when it is half-configured."""
        issuer = env.get("BYOI_OIDC_ISSUER", "").strip()
        if not issuer:
            return None
        client_id = env.get("BYOI_OIDC_CLIENT_ID", "").strip()
        secret = env.get("BYOI_OIDC_CLIENT_SECRET", "")
        if not secret and env.get("BYOI_OIDC_CLIENT_SECRET_FILE"):
            secret = Path(env["BYOI_OIDC_CLIENT_SECRET_FILE"]).read_text().strip()
        if not client_id:
            raise ValueError("BYOI_OIDC_ISSUER is set but BYOI_OIDC_CLIENT_ID is not")
        if not secret:
            raise ValueError("BYOI_OIDC_ISSUER is set but neither BYOI_OIDC_CLIENT_SECRET nor _FILE is")
        if not issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ValueError(f"BYOI_OIDC_ISSUER must be an https:// URL (plain http only on loopback), not {issuer!r}")
        return cls(
            issuer=issuer.rstrip("/"),
            client_id=client_id,
            client_secret=secret,
            claim=env.get("BYOI_OIDC_CLAIM", "preferred_username").strip() or "preferred_username",
            scopes=env.get("BYOI_OIDC_SCOPES", "openid profile email"),
        )


@dataclass(frozen=True)
class Flow:
    """One sign-in in progress (sealed into a cookie between the redirect and the callback)."""

    state: str
    nonce: str
    verifier: str
    domain_id: str
    next_path: str
    expires_at: float

    def dumps(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def loads(cls, text: str) -> Flow:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class OidcClient:
    def __init__(self, settings: OidcSettings, timeout: float = 10.0) -> None:
        self.settings = settings
        self._http = httpx.AsyncClient(timeout=timeout)
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None

    async def close(self) -> None:
        await self._http.aclose()

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url)
        except httpx.TransportError as exc:
            raise OidcError(f"the identity provider at {url} could not be reached: {exc}") from None
        if response.status_code != 200:
            raise OidcError(f"the identity provider answered {response.status_code} at {url}")
        try:
            data = response.json()
        except ValueError:
            raise OidcError(f"the identity provider's answer at {url} is not JSON") from None
        if not isinstance(data, dict):
            raise OidcError(f"the identity provider's answer at {url} is not a JSON object")
        return data

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            meta = await self._get_json(f"{self.settings.issuer}/.well-known/openid-configuration")
            if meta.get("issuer", "").rstrip("/") != self.settings.issuer:
                raise OidcError(f"the provider says its issuer is {meta.get('issuer')!r}, not {self.settings.issuer!r}")
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(meta.get(key), str):
                    raise OidcError(f"the provider's discovery document has no {key}")
            self._metadata = meta
        return self._metadata

    async def begin(self, redirect_uri: str, domain_id: str, next_path: str) -> tuple[str, Flow]:
        """The provider URL to send the browser to, and the flow to seal into the state cookie."""
        from authlib.common.security import generate_token
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        meta = await self.metadata()
        flow = Flow(
            state=generate_token(32),
            nonce=generate_token(32),
            verifier=generate_token(64),
            domain_id=domain_id,
            next_path=next_path,
            expires_at=time.time() + FLOW_SECONDS,
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.settings.scopes,
                "state": flow.state,
                "nonce": flow.nonce,
                "code_challenge": create_s256_code_challenge(flow.verifier),
                "code_challenge_method": "S256",
            }
        )
        return f"{meta['authorization_endpoint']}?{query}", flow

    async def finish(self, redirect_uri: str, code: str, flow: Flow) -> dict[str, Any]:
        """Exchange the code (with the PKCE verifier) and return the verified ID token's claims."""
        meta = await self.metadata()
        try:
            response = await self._http.post(
                meta["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": flow.verifier,
                },
                auth=(self.settings.client_id, self.settings.client_secret),
            )
        except httpx.TransportError as exc:
            raise OidcError(f"the identity provider's token endpoint could not be reached: {exc}") from None
        if response.status_code != 200:
            raise OidcError(
                f"the identity provider refused the sign-in code ({response.status_code}): {response.text[:200]}"
            )
        try:
            id_token = response.json()["id_token"]
        except (ValueError, KeyError, TypeError):
            raise OidcError("the identity provider's token answer has no id_token") from None
        return await self._verify(str(id_token), flow.nonce)

    async def _verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        meta = await self.metadata()
        for attempt in range(2):  # a key the cached set lacks: the provider may have rotated; fetch once more
            if self._keys is None or attempt:
                self._keys = KeySet.import_key_set(await self._get_json(meta["jwks_uri"]))  # type: ignore[arg-type]
            try:
                token = jwt.decode(id_token, self._keys)
                break
            except JoseError as exc:
                if attempt:
                    raise OidcError(f"the ID token's signature does not verify: {exc}") from None
        registry = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": self.settings.issuer},
            aud={"essential": True, "value": self.settings.client_id},
            exp={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(token.claims)
        except JoseError as exc:
            raise OidcError(f"the ID token is not valid for byoi: {exc}") from None
        return dict(token.claims)
