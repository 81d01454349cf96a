"""Streaming layer decompression with bomb limits.

The format is sniffed from the first bytes (gzip, zstd, or a plain tar), not trusted from the media
type, because registries and tools disagree on labels. gzip goes through ISA-L (`isal`, about 2.5x
zlib here), zstd through `pyzstd`; both are asked for bounded output per call, so one small chunk of a
decompression bomb never expands into memory at once. Every byte produced is counted against the
layer and total limits and the expansion ratio before it is handed on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyzstd
from isal import isal_zlib

from byoi.inspect.config import Limits
from byoi.inspect.errors import InspectionError, LimitExceeded

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
OUT_CHUNK = 4 << 20  # most bytes one decompress call may return


class Budget:
    """Uncompressed bytes allowed over all the layers of one image."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.used = 0

    def take(self, count: int) -> None:
        self.used += count
        if self.used > self.limits.max_total_bytes:
            raise LimitExceeded(
                f"the image's layers expand to more than {self.limits.max_total_bytes} bytes (the total limit)"
            )


class LayerDecompressor:
    """Push compressed bytes in with `feed`; uncompressed bytes go to `sink`. `finish` checks the end."""

    def __init__(self, sink: Callable[[bytes], None], limits: Limits, budget: Budget) -> None:
        self.sink = sink
        self.limits = limits
        self.budget = budget
        self.format: str | None = None
        self.compressed = 0
        self.uncompressed = 0
        self._head = b""
        self._d: Any = None
        self._ended = False

    def feed(self, data: bytes) -> None:
        self.compressed += len(data)
        if self.format is None:
            self._head += data
            if len(self._head) < 4:
                return
            data, self._head = self._head, b""
            self._start(data)
        if self.format == "tar":
            self._emit(data)
        elif self.format == "gzip":
            self._gzip(data)
        else:
            self._zstd(data)

    def _start(self, data: bytes) -> None:
        if data.startswith(GZIP_MAGIC):
            self.format, self._d = "gzip", isal_zlib.decompressobj(31)
        elif data.startswith(ZSTD_MAGIC):
            self.format, self._d = "zstd", pyzstd.ZstdDecompressor()
        else:
            self.format = "tar"

    def _gzip(self, data: bytes) -> None:
        try:
            while True:
                if self._ended:
                    # Another gzip member (multi-member streams are legal); anything else after the end
                    # of the compressed stream is ignored, as Docker does.
                    if not data.startswith(GZIP_MAGIC):
                        return
                    self._d, self._ended = isal_zlib.decompressobj(31), False
                out = self._d.decompress(data, OUT_CHUNK)
                data = self._d.unconsumed_tail
                if out:
                    self._emit(out)
                if self._d.eof:
                    self._ended = True
                    data = self._d.unused_data
                    if not data:
                        return
                elif not data and len(out) < OUT_CHUNK:
                    return
        except isal_zlib.error as exc:  # type: ignore[misc]  # isal declares it loosely
            raise InspectionError(f"layer is corrupt: its gzip stream cannot be decompressed ({exc})") from None

    def _zstd(self, data: bytes) -> None:
        try:
            while True:
                if self._d.eof:
                    data = self._d.unused_data + data if self._d.unused_data else data
                    if not data.startswith(ZSTD_MAGIC):
                        self._ended = True
                        return
                    self._d = pyzstd.ZstdDecompressor()
                out = self._d.decompress(data, OUT_CHUNK)
                data = b""
                if out:
                    self._emit(out)
                if self._d.eof:
                    self._ended = True
                    if not self._d.unused_data:
                        return
                elif self._d.needs_input:
                    return
        except pyzstd.ZstdError as exc:  # type: ignore[misc]  # a class from backports.zstd
            raise InspectionError(f"layer is corrupt: its zstd stream cannot be decompressed ({exc})") from None

    def _emit(self, out: bytes) -> None:
        count = len(out)
        self.uncompressed += count
        self.budget.take(count)
        limits = self.limits
        if self.uncompressed > limits.max_layer_bytes:
            raise LimitExceeded(f"the layer expands to more than {limits.max_layer_bytes} bytes (the layer limit)")
        if (
            self.format != "tar"
            and self.uncompressed > limits.ratio_grace_bytes
            and self.uncompressed > limits.max_ratio * max(self.compressed, 1)
        ):
            raise LimitExceeded(
                f"the layer expands more than {limits.max_ratio:g} times "
                f"({self.compressed} compressed bytes gave {self.uncompressed} so far): a decompression bomb?"
            )
        self.sink(out)

    def finish(self) -> None:
        if self.format is None:
            if not self._head:
                raise InspectionError("layer is empty (zero bytes)")
            self._start(self._head)
            if self.format == "tar":
                self._emit(self._head)
            else:
                raise InspectionError("layer is truncated: its compressed stream stops after a few bytes")
        if self.format == "gzip" and not self._ended:
            raise InspectionError("layer is truncated: its gzip stream ends before the end of the data")
        if self.format == "zstd" and not (self._ended or self._d.eof):
            raise InspectionError("layer is truncated: its zstd stream ends before the end of the data")
