"""The watches a Kubernetes session runtime's launches share: one on the namespace's byoi pods and one on its pod
events, however many launches wait at the moment (one pair per launch ran out of the client's 100 pooled
connections at 100 concurrent launches), each change routed to the queue of the pod it is about."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2 as httpx
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Event, Pod

from byoi.runtime.base import Unreachable
from byoi.runtime.kubernetes_spec import MANAGED_BY

__all__ = ["RESYNC_DELAY", "Change", "SharedWatch"]

RESYNC_DELAY = 0.5  # seconds before a broken watch is resumed (after a fresh read)

Change = tuple[str, str, dict[str, Any]]  # ("pod" | "event" | "resync", watch event type, object)


class SharedWatch:
    """One watch on the namespace's byoi pods and one on its pod events, shared by every `start` waiting at the
    moment (two connections however many launches run, not two per launch), each change handed to the queue
    of the pod it is about. Started with the first waiter, stopped with the last. A watch that breaks is
    resumed after RESYNC_DELAY, and every waiter is told to read its pod afresh ("resync")."""

    def __init__(self, client: Callable[[], AsyncClient], namespace: str) -> None:
        self._client = client
        self.namespace = namespace
        self.queues: dict[str, asyncio.Queue[Change]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def subscribe(self, pod: str) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self.queues[pod] = queue
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._pump("pod", self._pods), name="byoi-k8s-pod-watch"),
                asyncio.create_task(self._pump("event", self._events), name="byoi-k8s-event-watch"),
            ]
        return queue

    async def unsubscribe(self, pod: str) -> None:
        self.queues.pop(pod, None)
        if not self.queues:
            await self.close()

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _pods(self) -> AsyncIterator[tuple[str, Any]]:
        return aiter(self._client().watch(Pod, namespace=self.namespace, labels={MANAGED_BY: "byoi"}))

    def _events(self) -> AsyncIterator[tuple[str, Any]]:
        return aiter(self._client().watch(Event, namespace=self.namespace, fields={"involvedObject.kind": "Pod"}))

    async def _pump(self, kind: str, stream: Callable[[], AsyncIterator[tuple[str, Any]]]) -> None:
        while True:
            try:
                async for change, obj in stream():
                    data = obj.to_dict()
                    about = data.get("metadata") if kind == "pod" else data.get("involvedObject")
                    queue = self.queues.get(str((about or {}).get("name")))
                    if queue is not None:
                        queue.put_nowait((kind, change, data))
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, OSError, ValueError, Unreachable) as exc:  # broken: read afresh, resume
                for queue in self.queues.values():
                    queue.put_nowait(("resync", str(exc), {}))
            await asyncio.sleep(RESYNC_DELAY)
