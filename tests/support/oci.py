"""Assemble small OCI / Docker images in a test and push them to a real registry over its HTTP API.

These are real images (a gzip'd tar layer, a config, a manifest) pushed to a real Distribution; only
their content is synthetic, so tests do not need Docker to put an image in the registry.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

import httpx2 as httpx

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(content)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buf.getvalue(), mtime=0)


@dataclass
class Pushed:
    digest: str
    manifest: bytes


class Pusher:
    def __init__(self, base_url: str, auth: tuple[str, str] | None = None, token_for=None, verify=True) -> None:
        self.base = base_url.rstrip("/")
        self.verify = verify
        self.auth = auth
        self.token_for = token_for  # callable(scope) -> bearer token, for token-auth registries

    def _headers(self, repo: str) -> dict[str, str]:
        if self.token_for:
            return {"Authorization": f"Bearer {self.token_for(f'repository:{repo}:pull,push')}"}
        return {}

    def blob(self, repo: str, data: bytes) -> str:
        digest = digest_of(data)
        with httpx.Client(auth=self.auth, headers=self._headers(repo), timeout=30, verify=self.verify) as c:
            r = c.post(f"{self.base}/v2/{repo}/blobs/uploads/")
            r.raise_for_status()
            location = r.headers["location"]
            if location.startswith("/"):
                location = self.base + location
            sep = "&" if "?" in location else "?"
            r = c.put(
                f"{location}{sep}digest={digest}", content=data, headers={"Content-Type": "application/octet-stream"}
            )
            r.raise_for_status()
        return digest

    def manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> Pushed:
        with httpx.Client(auth=self.auth, headers=self._headers(repo), timeout=30, verify=self.verify) as c:
            r = c.put(f"{self.base}/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type})
            r.raise_for_status()
        return Pushed(digest_of(body), body)

    def image(
        self,
        repo: str,
        tag: str,
        files: dict[str, bytes] | None = None,
        media_type: str = DOCKER_MANIFEST,
        architecture: str = "amd64",
        env: list[str] | None = None,
    ) -> Pushed:
        layer = tar_layer(files or {"hello.txt": f"{repo}:{tag}".encode()})
        layer_digest = self.blob(repo, layer)
        config = json.dumps(
            {
                "architecture": architecture,
                "os": "linux",
                "config": {"Env": env or ["PATH=/usr/bin"]},
                "rootfs": {"type": "layers", "diff_ids": [digest_of(gzip.decompress(layer))]},
            }
        ).encode()
        config_digest = self.blob(repo, config)
        oci = media_type == OCI_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json"
                if oci
                else "application/vnd.docker.container.image.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"
                    if oci
                    else "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
        return self.manifest(repo, tag, json.dumps(manifest).encode(), media_type)

    def index(self, repo: str, tag: str, platforms: list[str]) -> tuple[Pushed, dict[str, Pushed]]:
        """Push one image per `os/arch` and an OCI index over them; return the index and each image."""
        images = {}
        for platform in platforms:
            arch = platform.split("/")[1]
            images[platform] = self.image(
                repo, f"{tag}-{arch}", {"arch.txt": arch.encode()}, OCI_MANIFEST, architecture=arch
            )
        return self.index_of(repo, tag, images), images

    def index_of(self, repo: str, tag: str, images: dict[str, Pushed]) -> Pushed:
        """Push an OCI index over already pushed OCI image manifests, one per `os/arch` platform."""
        entries = []
        for platform, pushed in images.items():
            os_name, arch = platform.split("/")
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": pushed.digest,
                    "size": len(pushed.manifest),
                    "platform": {"os": os_name, "architecture": arch},
                }
            )
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
        return self.manifest(repo, tag, body, OCI_INDEX)
