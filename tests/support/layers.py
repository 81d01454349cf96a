"""Hand-made layers for inspection tests: whiteouts, links, devices, bad paths, huge headers, bombs, gzip /
zstd / uncompressed blobs, fake R and RStudio Server trees, and pushing images and indexes made of them.

The images are real (real tar streams, real manifests, pushed to a real registry); only their content
is synthetic. `tarfile` writes the members, except where a test needs bytes tarfile refuses to write.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
import zlib
from dataclasses import dataclass, field

import pyzstd

from tests.support.oci import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Pushed, Pusher, digest_of


@dataclass
class Layer:
    """A tar stream under construction."""

    members: list[tuple[tarfile.TarInfo, bytes | None]] = field(default_factory=list)

    def file(self, path: str, content: bytes | str = b"", mode: int = 0o644, uid: int = 0) -> Layer:
        data = content.encode() if isinstance(content, str) else content
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.uid = len(data), mode, uid
        self.members.append((info, data))
        return self

    def files(self, files: dict[str, bytes | str], mode: int = 0o644) -> Layer:
        for path, content in files.items():
            self.file(path, content, mode)
        return self

    def dir(self, path: str, mode: int = 0o755) -> Layer:
        info = tarfile.TarInfo(path)
        info.type, info.mode = tarfile.DIRTYPE, mode
        self.members.append((info, None))
        return self

    def symlink(self, path: str, target: str) -> Layer:
        info = tarfile.TarInfo(path)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        self.members.append((info, None))
        return self

    def hardlink(self, path: str, target: str) -> Layer:
        info = tarfile.TarInfo(path)
        info.type, info.linkname = tarfile.LNKTYPE, target
        self.members.append((info, None))
        return self

    def device(self, path: str, kind: bytes = tarfile.CHRTYPE, major: int = 1, minor: int = 3) -> Layer:
        info = tarfile.TarInfo(path)
        info.type, info.devmajor, info.devminor, info.mode = kind, major, minor, 0o666
        self.members.append((info, None))
        return self

    def fifo(self, path: str) -> Layer:
        info = tarfile.TarInfo(path)
        info.type = tarfile.FIFOTYPE
        self.members.append((info, None))
        return self

    def whiteout(self, path: str) -> Layer:
        parent, _, name = path.rpartition("/")
        return self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}")

    def opaque(self, directory: str) -> Layer:
        return self.file(f"{directory}/.wh..wh..opq")

    def pax_file(self, path: str, content: bytes, pax: dict[str, str]) -> Layer:
        info = tarfile.TarInfo(path)
        info.size, info.pax_headers = len(content), pax
        self.members.append((info, content))
        return self

    def tar(self, fmt: int = tarfile.PAX_FORMAT) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as out:
            for info, data in self.members:
                out.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def raw_member(name: bytes, content: bytes = b"", typeflag: bytes = b"0", linkname: bytes = b"") -> bytes:
    """One ustar member written by hand, for names tarfile would refuse or rewrite (absolute, `..`)."""
    header = bytearray(512)
    header[0 : len(name)] = name
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = f"{len(content):011o}\0".encode()
    header[136:148] = b"00000000000\0"
    header[156:157] = typeflag
    header[157 : 157 + len(linkname)] = linkname
    header[257:265] = b"ustar\x0000"
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return bytes(header) + content + b"\0" * (-len(content) % 512)


def raw_tar(*members: bytes) -> bytes:
    return b"".join(members) + b"\0" * 1024


def compress(tar: bytes, how: str = "gzip") -> bytes:
    if how == "gzip":
        return gzip.compress(tar, compresslevel=6, mtime=0)
    if how == "zstd":
        return pyzstd.compress(tar)
    assert how == "none"
    return tar


def gzip_bomb(uncompressed_bytes: int) -> tuple[bytes, str]:
    """A gzip'd tar holding one file of zeros: (blob, diff id). Built in 1 MiB pieces, so the test never
    holds the expanded bytes."""
    header = tarfile.TarInfo("zeros.bin")
    header.size = uncompressed_bytes
    head = header.tobuf(tarfile.USTAR_FORMAT)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    h = hashlib.sha256(head)
    parts = [comp.compress(head)]
    chunk = b"\0" * (1 << 20)
    left = uncompressed_bytes
    while left:
        piece = chunk[: min(left, len(chunk))]
        h.update(piece)
        parts.append(comp.compress(piece))
        left -= len(piece)
    tail = b"\0" * (-uncompressed_bytes % 512) + b"\0" * 1024
    h.update(tail)
    parts.append(comp.compress(tail))
    parts.append(comp.flush())
    return b"".join(parts), "sha256:" + h.hexdigest()


# -- fake R / RStudio trees ------------------------------------------------------------------------


def description(name: str, version: str, priority: str | None = None) -> str:
    text = f"Package: {name}\nVersion: {version}\nTitle: {name} for tests\nBuilt: R 4.2.2; ; 2026-01-01; unix\n"
    return text + (f"Priority: {priority}\n" if priority else "")


def r_install(
    home: str = "usr/lib/R", version: str = "4.2.2", binary: str | None = "usr/bin/R"
) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {
        f"{home}/bin/R": "#!/bin/sh\n# R front end (test tree)\n",
        f"{home}/library/base/DESCRIPTION": description("base", version, "base"),
        f"{home}/library/stats/DESCRIPTION": description("stats", version, "base"),
    }
    if binary:
        files[binary] = f"#!/bin/sh\nR_HOME_DIR=/{home}\n"
    return files


def r_packages(packages: dict[str, str], library: str = "usr/local/lib/R/site-library") -> dict[str, bytes | str]:
    return {f"{library}/{name}/DESCRIPTION": description(name, version) for name, version in packages.items()}


def rstudio(version: str = "2024.04.2+764") -> dict[str, bytes | str]:
    return {
        "usr/lib/rstudio-server/bin/rserver": "#!/bin/sh\n# rserver (test tree)\n",
        "usr/lib/rstudio-server/VERSION": version + "\n",
    }


def base_files(users: list[tuple[str, int]] | None = None) -> dict[str, bytes | str]:
    lines = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    for name, uid in users or []:
        lines += f"{name}:x:{uid}:{uid}::/home/{name}:/bin/bash\n"
    return {
        "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
        "etc/passwd": lines,
    }


def compatible_layer(packages: dict[str, str] | None = None) -> Layer:
    """Everything the contract asks for, in one layer (executables 0755)."""
    layer = Layer().files(base_files([("ruser", 1000)]))
    for path, content in {**r_install(), **rstudio()}.items():
        layer.file(path, content, 0o755 if "/bin/" in path else 0o644)
    return layer.files(r_packages(packages or {"reticulate": "1.34.0", "jsonlite": "1.8.4"}))


# -- pushing ---------------------------------------------------------------------------------------

GOOD_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "RSTUDIO_CONNECT_URL=https://connect.example.test",
    "RSTUDIO_PACKAGE_MANAGER_URL=https://packages.example.test",
]

LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def push_layers(
    pusher: Pusher,
    repo: str,
    tag: str,
    blobs: list[tuple[bytes, str]],
    env: list[str] | None = None,
    architecture: str = "amd64",
    os_name: str = "linux",
    extra_config: dict | None = None,
    media_type: str = OCI_MANIFEST,
    config_fields: dict | None = None,
    descriptor_fields: dict | None = None,
) -> Pushed:
    """Push an image whose layers are ready blobs: [(blob bytes, diff id)]. `config_fields` replaces
    top-level members of the image config (`{"rootfs": "x"}`), `descriptor_fields` members of the
    manifest's config descriptor (`{"size": -1}`): malformed images the registry still accepts."""
    descriptors = []
    for blob, _ in blobs:
        kind = "zstd" if blob[:4] == b"\x28\xb5\x2f\xfd" else "gzip" if blob[:2] == b"\x1f\x8b" else "none"
        media = LAYER_TYPES[kind]
        if media_type == DOCKER_MANIFEST:
            media = "application/vnd.docker.image.rootfs.diff.tar.gzip"
        descriptors.append({"mediaType": media, "digest": pusher.blob(repo, blob), "size": len(blob)})
    config = {
        "architecture": architecture,
        "os": os_name,
        "config": {"Env": env if env is not None else GOOD_ENV, **(extra_config or {})},
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in blobs]},
        **(config_fields or {}),
    }
    raw = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": pusher.blob(repo, raw),
            "size": len(raw),
            **(descriptor_fields or {}),
        },
        "layers": descriptors,
    }
    return pusher.manifest(repo, tag, json.dumps(manifest).encode(), media_type)


def push_image(
    pusher: Pusher, repo: str, tag: str, layers: list[Layer | bytes], compression: str = "gzip", **kwargs
) -> Pushed:
    """Push an image of layers (Layer objects, or raw tar bytes), each compressed as asked."""
    blobs = []
    for layer in layers:
        tar = layer.tar() if isinstance(layer, Layer) else layer
        blobs.append((compress(tar, compression), digest_of(tar)))
    return push_layers(pusher, repo, tag, blobs, **kwargs)


def push_index(pusher: Pusher, repo: str, tag: str, images: dict[str, list[Layer]]) -> Pushed:
    """An OCI index with one image per `os/arch` platform, each made of its own layers."""
    pushed = {}
    for platform, layers in images.items():
        os_name, arch = platform.split("/")
        pushed[platform] = push_image(pusher, repo, f"{tag}-{arch}", layers, architecture=arch, os_name=os_name)
    return pusher.index_of(repo, tag, pushed)


def push_raw_index(pusher: Pusher, repo: str, tag: str, index: dict) -> Pushed:
    """Push an OCI index body as given, malformed or not (the registry refuses only what its Go types refuse)."""
    return pusher.manifest(repo, tag, json.dumps(index).encode(), OCI_INDEX)


# -- a registry that serves anything -----------------------------------------------------------------


class StaticRegistry:
    """TEST DOUBLE of a registry that stores manifests without checking them, as some registries do.

    Distribution (the real registry of these tests) refuses on push a manifest whose members have the
    wrong JSON types (`"size": "12"`, a string where an index entry belongs), so byoi's handling of such
    manifests cannot be reached through it. This serves the read side of the distribution API from the
    bytes it is given, verbatim, over real HTTP on loopback: `GET /v2/`, manifests by tag or digest,
    blobs by digest, and the tag list (byoi reads it to tell a missing repository from a missing tag).
    """

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET(body=False)

            def do_GET(self, body: bool = True) -> None:
                parts = self.path.split("?")[0].split("/")
                if self.path.rstrip("/") == "/v2":
                    return self._send(200, b"{}", "application/json", body)
                if len(parts) >= 5 and parts[1] == "v2":
                    repo, kind, ref = "/".join(parts[2:-2]), parts[-2], parts[-1]
                    if kind == "manifests" and (repo, ref) in registry.manifests:
                        data, media_type = registry.manifests[(repo, ref)]
                        return self._send(200, data, media_type, body)
                    if kind == "blobs" and ref in registry.blobs:
                        return self._send(200, registry.blobs[ref], "application/octet-stream", body)
                    if parts[-2:] == ["tags", "list"]:
                        repo = "/".join(parts[2:-2])
                        tags = [r for (n, r), _ in registry.manifests.items() if n == repo]
                        return self._send(200, json.dumps({"name": repo, "tags": tags}).encode(), "application/json")
                error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}
                self._send(404, json.dumps(error).encode(), "application/json", body)

            def _send(self, code: int, data: bytes, media_type: str, body: bool = True) -> None:
                self.send_response(code)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def manifest(self, repo: str, tag: str, body: dict | bytes, media_type: str) -> str:
        """Serve `body` (JSON-encoded unless bytes) for the tag and for its digest; return the digest."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        digest = digest_of(data)
        self.manifests[(repo, tag)] = self.manifests[(repo, digest)] = (data, media_type)
        return digest

    def blob(self, data: bytes) -> str:
        self.blobs[digest_of(data)] = data
        return digest_of(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
