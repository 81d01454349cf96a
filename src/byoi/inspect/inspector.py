"""Inspect one image: read its config and layers through a blob stream, build the final tree, report.

The caller supplies `stream(digest)`, an async iterator of a blob's bytes that verifies the digest at
the end (the registry client's `stream_blob`); errors it raises (registry failures) pass through
untouched, so the caller decides what is transient. Content problems become InspectionError.

Decompression and tar parsing run in a worker thread, one chunk behind the download, so the event
loop keeps serving requests and the network read overlaps the CPU work; up to `concurrency` layers
are read at once. A layer whose index is cached is not downloaded at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from byoi.inspect.cache import LayerCache
from byoi.inspect.config import InspectionConfig
from byoi.inspect.decompress import Budget
from byoi.inspect.errors import InspectionError, LimitExceeded
from byoi.inspect.facts import image_facts
from byoi.inspect.layer import LayerIndex, LayerIndexer
from byoi.inspect.rules import evaluate, failure_reason
from byoi.inspect.shapes import check_descriptor, check_image_config, descriptor_size, json_type
from byoi.inspect.tree import Tree

BlobStream = Callable[[str], AsyncGenerator[bytes, None]]


class Inspector:
    def __init__(self, config: InspectionConfig, cache_dir: Path, platform: str = "linux/amd64") -> None:
        self.config = config
        self.cache = LayerCache(cache_dir)
        self.platform = platform

    async def inspect(self, manifest: dict[str, Any], stream: BlobStream) -> dict[str, Any]:
        """The report for an image manifest. Raises InspectionError for bad content; registry errors pass."""
        started = time.monotonic()
        limits = self.config.limits
        config_desc, layer_descs = _descriptors(manifest, limits.max_layers)
        if descriptor_size(config_desc) > limits.max_config_bytes:
            raise LimitExceeded(f"the image config is larger than {limits.max_config_bytes} bytes")
        config = await self._read_config(config_desc["digest"], stream)
        check_image_config(config)  # before any layer is read: a malformed config fails fast and cheaply
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        if diff_ids is not None and len(diff_ids) != len(layer_descs):
            raise InspectionError(
                f"the image config lists {len(diff_ids)} layers but the manifest has {len(layer_descs)}"
            )
        budget, entries = Budget(limits), [0]
        slots = asyncio.Semaphore(self.config.concurrency)
        from_cache = [0]

        async def one(position: int, desc: dict[str, Any]) -> LayerIndex:
            async with slots:
                index = await asyncio.to_thread(self.cache.get, desc["digest"])
                if index is not None:
                    from_cache[0] += 1
                    budget.take(index.uncompressed_size)
                    entries[0] += len(index.entries)
                    return index
                try:
                    index = await self._index_layer(desc["digest"], stream, budget, entries)
                except InspectionError as exc:
                    raise type(exc)(f"layer {position} ({desc['digest'][:19]}): {exc}") from None
                await asyncio.to_thread(self.cache.put, index)
                return index

        tasks = [asyncio.ensure_future(one(i + 1, d)) for i, d in enumerate(layer_descs)]
        try:
            indexes = await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        report = await asyncio.to_thread(self._report, config, indexes)
        report["LayersFromCache"] = from_cache[0]
        report["InspectionSeconds"] = round(time.monotonic() - started, 3)
        return report

    async def _read_config(self, digest: str, stream: BlobStream) -> dict[str, Any]:
        limit = self.config.limits.max_config_bytes
        parts, size = [], 0
        async with contextlib.aclosing(stream(digest)) as blob:
            async for chunk in blob:
                size += len(chunk)
                if size > limit:
                    raise LimitExceeded(f"the image config is larger than {limit} bytes")
                parts.append(chunk)
        try:
            config = json.loads(b"".join(parts))
        except ValueError:
            raise InspectionError(f"the image config {digest[:19]} is not JSON") from None
        if not isinstance(config, dict):
            raise InspectionError(f"the image config {digest[:19]} is not a JSON object")
        return config

    async def _index_layer(self, digest: str, stream: BlobStream, budget: Budget, entries: list[int]) -> LayerIndex:
        indexer = LayerIndexer(digest, self.config.limits, budget, entries)
        pending: asyncio.Future[None] | None = None
        try:
            async with contextlib.aclosing(stream(digest)) as blob:
                async for chunk in blob:
                    if pending is not None:
                        await pending
                    pending = asyncio.ensure_future(asyncio.to_thread(indexer.feed, chunk))
                if pending is not None:
                    await pending
                    pending = None
        finally:
            if pending is not None:  # a thread cannot be cancelled: let it finish before unwinding
                with contextlib.suppress(BaseException):
                    await pending
        return await asyncio.to_thread(indexer.finish)

    def _report(self, config: dict[str, Any], indexes: list[LayerIndex]) -> dict[str, Any]:
        tree = Tree()
        for position, index in enumerate(indexes, 1):
            tree.apply(index, position)
        facts = image_facts(tree, config)
        facts["CompressedSize"] = sum(i.compressed_size for i in indexes)
        facts["UncompressedSize"] = sum(i.uncompressed_size for i in indexes)
        facts["LayerCount"] = len(indexes)
        facts["FileCount"] = sum(1 for node in tree.nodes.values() if node[0] == "f")
        rules = evaluate(facts, self.config, self.platform)
        reason = failure_reason(rules)
        return {
            "Status": "COMPLETED",
            "Compatible": reason is None,
            "FailureReason": reason,
            **facts,
            "Rules": rules,
            "InspectedAt": time.time(),
        }


def _descriptors(manifest: dict[str, Any], max_layers: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The config and layer descriptors of an image manifest, each checked (see byoi.inspect.shapes)."""
    config = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config, dict):
        raise InspectionError(f"the image manifest has no config descriptor (config is {json_type(config)})")
    check_descriptor(config, "the config descriptor")
    if not isinstance(layers, list):
        raise InspectionError(f"the image manifest has no layer list (layers is {json_type(layers)})")
    if len(layers) > max_layers:
        raise LimitExceeded(f"the image has {len(layers)} layers, more than the limit of {max_layers}")
    return config, [check_descriptor(desc, f"layer {position}") for position, desc in enumerate(layers, 1)]
