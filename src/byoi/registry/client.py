"""An async client for the OCI distribution API, on httpx2.

It resolves references to digest-pinned manifests (Docker v2 and OCI, indexes and manifest lists
resolved to one platform), verifies every digest it is given, and streams blobs. Authentication follows
the registry's `WWW-Authenticate` challenge: anonymous, Basic, or Bearer tokens from the realm it names.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import regex

from byoi.config import RegistryConfig
from byoi.oci_json import descriptor_problem, json_type
from byoi.reachability import Reachability, connection_failure
from byoi.registry.errors import (
    PlatformNotFound,
    RegistryAuthError,
    RegistryBadContent,
    RegistryError,
    RegistryNotFound,
    RegistryServerError,
    RegistryTLSError,
    RegistryUnreachable,
)
from byoi.registry.reference import Reference

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFESTS = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEXES = (DOCKER_LIST, OCI_INDEX)
ACCEPT = ", ".join((*IMAGE_MANIFESTS, *INDEXES))
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

_CHALLENGE_PARAM = regex.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class ResolvedImage:
    """A reference resolved in a registry: the digest to pin, and the image manifest behind it."""

    registry: str
    repository: str
    digest: str  # of the platform's image manifest
    media_type: str
    manifest: dict[str, Any]
    index_digest: str | None = None  # when the reference named an index / manifest list

    @property
    def pinned(self) -> str:
        return f"{self.registry}/{self.repository}@{self.digest}"


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def docker_config_credentials(path: Path | None) -> dict[str, Credentials]:
    """Credentials from a Docker `config.json` (`auths`: base64 `auth`, or `identitytoken`).

    Entries that cannot be read are skipped: the registry then asks for credentials, and the version's
    failure says none are configured for it."""
    if path is None or not path.exists():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    auths = config.get("auths") if isinstance(config, dict) else None
    result = {}
    for host, entry in (auths if isinstance(auths, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        host = host.split("://", 1)[-1].rstrip("/").removesuffix("/v1")
        if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
            result[host] = Credentials(token=entry["identitytoken"])
        elif isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
                continue
            result[host] = Credentials(user, password)
    return result


def _error_codes(response: httpx.Response) -> set[str]:
    """The `code`s of a registry's JSON error body; empty when the body is not that shape."""
    try:
        body = response.json()
    except ValueError:
        return set()
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return set()
    return {e["code"] for e in errors if isinstance(e, dict) and isinstance(e.get("code"), str)}


@dataclass
class _HostState:
    base_url: str
    credentials: Credentials
    http: httpx.AsyncClient
    reach: Reachability  # logs once when the registry stops answering, once when it is back
    # Authorization header per scope, learnt from the last challenge.
    authorizations: dict[str, str] = field(default_factory=dict)


class RegistryClient:
    def __init__(
        self,
        registries: tuple[RegistryConfig, ...] | list[RegistryConfig],
        docker_config: Path | None = None,
        timeout: float = 20.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._configured = {r.host: r for r in registries}
        self._docker_credentials = docker_config_credentials(docker_config)
        self._hosts: dict[str, _HostState] = {}
        self._timeout = timeout
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=True, transport=transport)
        self._private_ca_clients: list[httpx.AsyncClient] = []

    async def close(self) -> None:
        await self._http.aclose()
        for client in self._private_ca_clients:
            await client.aclose()

    def _client_for(self, cfg: RegistryConfig | None) -> httpx.AsyncClient:
        """The shared client, or one that trusts the registry's private CA (`ca_file`)."""
        if cfg is None or not cfg.ca_file:
            return self._http
        context = ssl.create_default_context(cafile=cfg.ca_file)
        client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=True, verify=context)
        self._private_ca_clients.append(client)
        return client

    # -- per-host setup -------------------------------------------------------------------------

    def _host(self, host: str) -> _HostState:
        state = self._hosts.get(host)
        if state is None:
            cfg = self._configured.get(host)
            if cfg is not None:
                base = f"{cfg.scheme}://{host}"
                creds = Credentials(cfg.username, cfg.password, cfg.token)
                if not (cfg.username or cfg.password or cfg.token):
                    # Named with --registry but no credentials of its own: the Docker config may have some.
                    creds = self._docker_credentials.get(host, creds)
            else:
                # Plain HTTP only for loopback registries that were not configured explicitly.
                base = f"{'http' if is_loopback(host) else 'https'}://{host}"
                creds = self._docker_credentials.get(host, Credentials())
            state = self._hosts[host] = _HostState(
                base, creds, self._client_for(cfg), Reachability(f"The registry {host}")
            )
        return state

    # -- HTTP with the auth dance ---------------------------------------------------------------

    async def _send(
        self,
        host: str,
        method: str,
        path: str,
        scope: str,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        content: bytes | None = None,
    ) -> httpx.Response:
        state = self._host(host)
        hdrs = dict(headers or {})
        auth = state.authorizations.get(scope)
        for attempt in range(2):
            if auth:
                hdrs["Authorization"] = auth
            try:
                request = state.http.build_request(method, state.base_url + path, headers=hdrs, content=content)
                response = await state.http.send(request, stream=stream)
            except httpx.TimeoutException as exc:
                raise self._unreachable(
                    state, host, f"no answer within {self._timeout:g} s ({type(exc).__name__})"
                ) from exc
            except httpx.TransportError as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    raise RegistryTLSError(
                        f"the TLS certificate of registry {host} could not be verified ({exc}); "
                        "if it uses a private CA, set ca_file for it in the registries file"
                    ) from exc
                raise self._unreachable(state, host, f"{connection_failure(exc)} ({state.base_url})") from exc
            state.reach.answered()
            if response.status_code != 401 or attempt == 1:
                return response
            challenge = response.headers.get("www-authenticate", "")
            await response.aclose()
            auth = await self._authorize(host, state, challenge, scope)
            state.authorizations[scope] = auth
        raise AssertionError("unreachable")

    @staticmethod
    def _unreachable(state: _HostState, host: str, why: str) -> RegistryUnreachable:
        exc = RegistryUnreachable(host, why)
        state.reach.lost(str(exc))
        return exc

    async def _authorize(self, host: str, state: _HostState, challenge: str, scope: str) -> str:
        creds = state.credentials
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if not creds.username:
                raise RegistryAuthError(f"registry {host} requires credentials and none are configured for it")
            raw = f"{creds.username}:{creds.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        if scheme == "bearer":
            params = dict(_CHALLENGE_PARAM.findall(challenge))
            realm = params.get("realm")
            if not realm:
                raise RegistryBadContent(f"registry {host} sent a Bearer challenge without a realm")
            query = {"scope": params.get("scope", scope)}
            if params.get("service"):
                query["service"] = params["service"]
            basic = (creds.username, creds.password or "") if creds.username else None
            try:
                response = await state.http.get(realm, params=query, auth=basic)
            except httpx.TransportError as exc:
                raise RegistryUnreachable(host, f"its token service {realm}: {connection_failure(exc)}") from exc
            if response.status_code in (401, 403):
                raise RegistryAuthError(f"token service of registry {host} refused the configured credentials")
            if response.status_code >= 500:
                raise RegistryServerError(f"token service of registry {host} failed ({response.status_code})")
            if response.status_code != 200:
                raise RegistryAuthError(
                    f"token service of registry {host} answered {response.status_code} for scope {query['scope']}"
                )
            try:
                body = response.json()
            except ValueError:
                body = None
            token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise RegistryBadContent(f"token service of registry {host} returned no token")
            return f"Bearer {token}"
        raise RegistryAuthError(f"registry {host} asks for an unsupported authentication scheme {scheme!r}")

    @staticmethod
    def _check_status(response: httpx.Response, host: str, repository: str, what: str) -> None:
        code = response.status_code
        if code < 300:
            return
        if code in (401, 403):
            raise RegistryAuthError(
                f"registry {host} refused access to repository {repository} (HTTP {code}): "
                "check the credentials configured for it"
            )
        if code == 404:
            if "NAME_UNKNOWN" in _error_codes(response):
                raise RegistryNotFound(f"repository {repository} does not exist in registry {host}")
            raise RegistryNotFound(f"{what} not found in repository {repository} of registry {host}")
        if code == 429 or code >= 500:
            raise RegistryServerError(f"registry {host} answered HTTP {code} for {what}")
        raise RegistryError(f"registry {host} answered HTTP {code} for {what}")

    # -- public operations ---------------------------------------------------------------------

    async def ping(self, host: str) -> None:
        """Raise RegistryError unless the registry answers its API root (401 counts as alive)."""
        response = await self._send(host, "GET", "/v2/", scope="registry:catalog:*")
        await response.aclose()
        if response.status_code >= 500:
            raise RegistryServerError(f"registry {host} answered HTTP {response.status_code}")

    async def get_manifest(self, host: str, repository: str, selector: str) -> tuple[str, str, bytes]:
        """Fetch a manifest by tag or digest; return (digest, media type, raw bytes), digest verified."""
        scope = f"repository:{repository}:pull"
        what = f"manifest {selector}" if selector.startswith("sha256:") else f"tag {selector}"
        response = await self._send(
            host, "GET", f"/v2/{repository}/manifests/{selector}", scope, headers={"Accept": ACCEPT}
        )
        try:
            self._check_status(response, host, repository, what)
        except RegistryNotFound:
            if not selector.startswith("sha256:") and not await self._repository_exists(host, repository, scope):
                raise RegistryNotFound(f"repository {repository} does not exist in registry {host}") from None
            raise
        raw = response.content
        if len(raw) > MAX_MANIFEST_BYTES:
            raise RegistryBadContent(f"manifest {selector} of {repository} is larger than {MAX_MANIFEST_BYTES} bytes")
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if selector.startswith("sha256:") and digest != selector:
            raise RegistryBadContent(f"registry {host} returned manifest {digest} when asked for {selector}")
        announced = response.headers.get("docker-content-digest")
        if announced and announced.startswith("sha256:") and announced != digest:
            raise RegistryBadContent(
                f"registry {host} announced digest {announced} for {repository}:{selector} "
                f"but the content hashes to {digest}"
            )
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return digest, media_type, raw

    async def put_manifest(self, host: str, repository: str, tag: str, media_type: str, raw: bytes) -> str:
        """Put a manifest (its blobs already in `repository`) under `tag`; return the digest the registry
        stored it as, checked against the content's."""
        if not media_type:
            raise RegistryBadContent(f"no media type for the manifest to tag {repository}:{tag} with")
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        response = await self._send(
            host,
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            f"repository:{repository}:pull,push",
            headers={"Content-Type": media_type},
            content=raw,
        )
        self._check_status(response, host, repository, f"tag {tag}")
        announced = response.headers.get("docker-content-digest")
        if announced and announced != digest:
            raise RegistryBadContent(f"registry {host} stored {repository}:{tag} as {announced}, not {digest}")
        return digest

    async def _repository_exists(self, host: str, repository: str, scope: str) -> bool:
        """Some registries (Distribution 2.8) answer MANIFEST_UNKNOWN for a missing repository too; the
        tag list tells the two apart, so the failure reason can say which is missing."""
        response = await self._send(host, "GET", f"/v2/{repository}/tags/list?n=1", scope)
        await response.aclose()
        return response.status_code != 404

    async def resolve(self, ref: Reference, platform: str = "linux/amd64") -> ResolvedImage:
        """Resolve a reference (with its registry set) to the image manifest for `platform`."""
        assert ref.registry, "the caller decides the default registry"
        host, repo = ref.registry, ref.repository
        digest, media_type, raw = await self.get_manifest(host, repo, ref.selector)
        manifest = _decode_manifest(raw, host, repo)
        media_type = manifest.get("mediaType") or media_type
        if media_type in INDEXES or "manifests" in manifest:
            index_digest = digest
            chosen = _choose_platform(manifest, platform, f"{host}/{repo}:{ref.selector}")
            digest, media_type, raw = await self.get_manifest(host, repo, chosen)
            manifest = _decode_manifest(raw, host, repo)
            media_type = manifest.get("mediaType") or media_type
            if media_type not in IMAGE_MANIFESTS:
                raise RegistryBadContent(f"platform entry {chosen} of {repo} is not an image manifest ({media_type})")
            return ResolvedImage(host, repo, digest, media_type, manifest, index_digest)
        if media_type not in IMAGE_MANIFESTS:
            raise RegistryBadContent(
                f"{host}/{repo}:{ref.selector} is not a container image (media type {media_type or 'unknown'})"
            )
        return ResolvedImage(host, repo, digest, media_type, manifest)

    async def stream_blob(self, host: str, repository: str, digest: str, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
        """Yield a blob's bytes as they arrive; raise RegistryBadContent at the end if the digest is wrong."""
        response = await self._send(
            host, "GET", f"/v2/{repository}/blobs/{digest}", f"repository:{repository}:pull", stream=True
        )
        try:
            self._check_status(response, host, repository, f"blob {digest}")
            hasher = hashlib.sha256()
            try:
                async for part in response.aiter_bytes(chunk):
                    hasher.update(part)
                    yield part
            except httpx.TransportError as exc:  # the connection dropped or stalled mid-blob: worth another try
                raise RegistryUnreachable(
                    host, f"it stopped sending blob {digest} of {repository} midway: {connection_failure(exc)}"
                ) from exc
            if "sha256:" + hasher.hexdigest() != digest:
                raise RegistryBadContent(f"blob {digest} of {repository} does not match its digest")
        finally:
            await response.aclose()


def _decode_manifest(raw: bytes, host: str, repo: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise RegistryBadContent(f"registry {host} returned a manifest for {repo} that is not JSON") from exc
    if not isinstance(manifest, dict):
        raise RegistryBadContent(f"registry {host} returned a manifest for {repo} that is not a JSON object")
    if manifest.get("mediaType") is not None and not isinstance(manifest["mediaType"], str):
        raise RegistryBadContent(
            f"registry {host} returned a manifest for {repo} whose mediaType is "
            f"{json_type(manifest['mediaType'])}, not a string"
        )
    return manifest


def _check_index_entry(entry: Any, position: int, where: str) -> dict[str, str]:
    """One entry of an index's `manifests`: an object with a sha256 digest, a non-negative integer size,
    a string media type and a platform object of strings (size, media type and platform may be absent).
    Returns its platform members. Distribution refuses most wrong types on push; other registries do not."""
    bad = f"the index {where} is malformed: entry {position} of its manifests"
    problem = descriptor_problem(entry, bad)
    if problem:
        raise RegistryBadContent(problem)
    platform = entry.get("platform")
    if platform is None:
        return {}
    if not isinstance(platform, dict):
        raise RegistryBadContent(f"{bad} has a platform that is {json_type(platform)}, not an object")
    for key in ("os", "architecture", "variant"):
        if platform.get(key) is not None and not isinstance(platform[key], str):
            raise RegistryBadContent(f"{bad} has platform.{key} {json_type(platform[key])}, not a string")
    return {key: platform[key] for key in ("os", "architecture", "variant") if platform.get(key)}


def _choose_platform(index: dict[str, Any], platform: str, where: str) -> str:
    """The digest of the index entry for `platform`. Every entry is checked first, so a malformed index
    is RegistryBadContent naming the member whichever platform is asked for."""
    os_name, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise RegistryBadContent(
            f"the index {where} is malformed: its manifests member is {json_type(entries)}, not an array"
        )
    checked = [(_check_index_entry(entry, n, where), entry["digest"]) for n, entry in enumerate(entries, 1)]
    available = ["/".join(p[k] for k in ("os", "architecture", "variant") if k in p) for p, _ in checked]
    for p, digest in checked:
        if p.get("os") == os_name and p.get("architecture") == arch and (not variant or p.get("variant") == variant):
            return digest  # type: ignore[no-any-return]
    raise PlatformNotFound(
        f"{where} has no image for platform {platform} (it has: {', '.join(a for a in available if a) or 'none'})"
    )
