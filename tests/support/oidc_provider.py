"""A TEST DOUBLE of an OpenID Connect provider (Keycloak, Okta, Entra ID…), for the OIDC sign-in tests.

No real provider can be installed on this machine (none is packaged in Debian or on PyPI in a form that runs
here without downloads), so this one is assembled from authlib's own server components: authlib's
`AuthorizationServer` (Flask integration), its authorization-code grant with the PKCE extension (RFC 7636) and
its OpenID Connect `OpenIDCode` extension, which issue codes and sign ID tokens as the specifications say. Only
the user store and the login page are ours: a form that takes a user name from `users` (no password, it is a
test double). It serves discovery, `authorize`, `token` and `jwks` on 127.0.0.1 and stops with `stop()`.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin, UserInfo
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, request
from joserfc.jwk import RSAKey
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.support.processes import free_port


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in ("openid", "profile", "email"))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint != "token" or method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # no access log lines in the test output
        pass


class OidcProvider:
    """Start with `OidcProvider(users, redirect_uri).start()`; `issuer`, `client_id`, `client_secret`."""

    def __init__(self, users: dict[str, dict[str, Any]], redirect_uris: list[str]) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.users = users  # login name -> extra claims (preferred_username, email…)
        self.client = Client("byoi", secrets.token_urlsafe(16), redirect_uris)
        self.client_id, self.client_secret = self.client.client_id, self.client.client_secret
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig", "alg": "RS256"})
        self.codes: dict[str, Code] = {}
        self.tokens: list[dict[str, Any]] = []
        self.app = self._make_app()
        self._server = make_server("127.0.0.1", self.port, self.app, threaded=True, request_handler=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> OidcProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()

    def _make_app(self) -> Flask:
        provider = self
        app = Flask("byoi-test-oidc-provider")

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code: str, req: Any) -> None:
                data = req.payload.data
                provider.codes[code] = Code(
                    code=code,
                    client_id=req.client.client_id,
                    redirect_uri=req.payload.redirect_uri,
                    scope=req.scope,
                    user=req.user,
                    nonce=data.get("nonce"),
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                )

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                found = provider.codes.get(code)
                return found if found is not None and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                provider.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> str:
                return authorization_code.user

        class IdTokens(OpenIDCode):
            def resolve_client_private_key(self, client: Client) -> RSAKey:
                return provider.key

            def get_client_claims(self, client: Client) -> dict[str, Any]:
                return {"iss": provider.issuer, "aud": [client.client_id]}

            def get_client_algorithm(self, client: Client) -> str:
                return "RS256"

            def exists_nonce(self, nonce: str, req: Any) -> bool:
                return any(c.nonce == nonce for c in provider.codes.values())

            def generate_user_info(self, user: str, scope: str) -> UserInfo:
                return UserInfo(sub=f"sub-{user}", **provider.users[user])

        server = AuthorizationServer(
            app,
            query_client=lambda cid: provider.client if cid == provider.client.client_id else None,
            save_token=lambda token, req: provider.tokens.append(token),
        )
        server.register_grant(CodeGrant, [CodeChallenge(required=True), IdTokens(require_nonce=True)])

        @app.get("/.well-known/openid-configuration")
        def discovery() -> dict[str, Any]:
            return {
                "issuer": provider.issuer,
                "authorization_endpoint": f"{provider.issuer}/authorize",
                "token_endpoint": f"{provider.issuer}/token",
                "jwks_uri": f"{provider.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            }

        @app.get("/jwks")
        def jwks() -> dict[str, Any]:
            return {"keys": [provider.key.as_dict(private=False)]}

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Any:
            if request.method == "GET":
                try:
                    server.get_consent_grant(end_user=None)
                except Exception as exc:  # noqa: BLE001 - a bad request is shown, as a provider would
                    return f"<p id='error'>{type(exc).__name__}: {exc}</p>", 400
                return (
                    "<!doctype html><html lang='en'><title>Test OIDC provider</title>"
                    "<main><h1>Sign in (test double)</h1>"
                    "<form method='post'><label>User <input name='username' id='username'></label>"
                    "<button type='submit'>Sign in</button></form></main></html>"
                )
            user = request.form.get("username", "")
            if user not in provider.users:
                return "<p id='error'>unknown user</p>", 403
            return server.create_authorization_response(grant_user=user)

        @app.post("/token")
        def token() -> Any:
            return server.create_token_response()

        return app
