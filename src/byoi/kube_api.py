"""What byoi's two Kubernetes backends (runtime/kubernetes.py, build/kubernetes.py) say the same way about the API
server: its client, made from in-cluster config or a kubeconfig, where it is, and how a refusal or no answer is
worded. Each backend raises its own seam's errors with these words (as byoi.docker_engine serves the Docker ones).
"""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
from lightkube import AsyncClient, KubeConfig

# The kubelet's waiting reasons for a container that will not start by itself: the image cannot be pulled, or
# the container cannot be created. A session or a build waiting on one of them has failed.
PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CREATE_FAILURES = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})


class NoConfiguration(Exception):
    """Neither the given kubeconfig, nor in-cluster config, nor KUBECONFIG gives a cluster."""


def make_client(config: KubeConfig | None, namespace: str, timeout: httpx.Timeout, trust_env: bool) -> AsyncClient:
    try:
        config = config or KubeConfig.from_env()
    except Exception as exc:  # lightkube's ConfigError, a broken kubeconfig
        raise NoConfiguration(f"no Kubernetes configuration (in-cluster or KUBECONFIG): {exc}") from None
    return AsyncClient(config=config, namespace=namespace, timeout=timeout, trust_env=trust_env)


def server_of(client: AsyncClient | Any) -> str:
    """The API server's URL, as messages name it."""
    try:
        return str(client.config.cluster.server)
    except AttributeError:
        return "the configured server"


def refusal(exc: httpx.HTTPStatusError) -> tuple[int, str]:
    """The HTTP status and the API server's message (a Status object) of a refused request."""
    code = exc.response.status_code
    try:
        body = exc.response.json()
        message = str(body.get("message") or body.get("reason") or exc.response.reason_phrase)
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        message = exc.response.reason_phrase
    return code, message.strip()


def not_reachable(server: str, exc: BaseException) -> str:
    return f"the Kubernetes API server at {server} is not reachable: {str(exc) or type(exc).__name__}"
