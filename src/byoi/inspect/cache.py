"""Per-layer indexes on disk, named by the layer's digest (content-addressed: a layer never changes).

Only byoi's own cache directory is written: one gzip'd JSON file per layer, written to a temporary
name and renamed, so a crash never leaves a half-written index behind. An unreadable file is
treated as missing (and replaced).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import tempfile
from pathlib import Path

from byoi.inspect.layer import FORMAT, LayerIndex

log = logging.getLogger(__name__)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class LayerCache:
    def __init__(self, root: Path) -> None:
        self.root = root / f"v{FORMAT}" / "sha256"

    def _path(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):  # the digest becomes a file name: nothing else may
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / f"{digest.split(':', 1)[1]}.json.gz"

    def get(self, digest: str) -> LayerIndex | None:
        path = self._path(digest)
        try:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                index = LayerIndex.from_json(json.load(fh))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
            log.warning("ignoring unreadable layer index %s: %s", path, exc)
            return None
        return index if index.digest == digest else None

    def put(self, index: LayerIndex) -> None:
        path = self._path(index.digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json.gz")
        try:
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3, mtime=0) as fh:
                fh.write(json.dumps(index.to_json(), separators=(",", ":")).encode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __contains__(self, digest: str) -> bool:
        return self._path(digest).exists()
