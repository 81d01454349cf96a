"""/healthz, /metrics and structured logs carrying the request id."""

from __future__ import annotations

import json
import time

import httpx2 as httpx
import pytest
from botocore.exceptions import ClientError

from tests.support.docker_images import docker_available
from tests.support.processes import free_port


@pytest.mark.docker
@pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)")
def test_healthz_reports_store_and_registry(server, registry):
    r = httpx.get(server.endpoint + "/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"store": "ok", "docker": "ok", f"registry {registry}": "ok"}}


def test_healthz_unhealthy_when_registry_down(server_factory):
    down = f"127.0.0.1:{free_port()}"
    srv = server_factory([f"http://{down}"])
    r = httpx.get(srv.endpoint + "/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unhealthy" and body["checks"]["store"] == "ok"
    assert body["checks"][f"registry {down}"].startswith(f"error: The registry {down} is not reachable: ")


def test_metrics_count_and_time_requests_by_operation_and_outcome(server, sm):
    sm.list_images()
    with pytest.raises(ClientError):
        sm.describe_image(ImageName="metrics-missing")
    text = httpx.get(server.endpoint + "/metrics").text
    assert 'byoi_requests_total{operation="ListImages",outcome="ok"}' in text
    assert 'byoi_requests_total{operation="DescribeImage",outcome="ResourceNotFound"}' in text
    assert 'byoi_work_waiting{task="resolve-image-version"}' in text
    assert 'byoi_work_running{task="resolve-image-version"}' in text
    # Latency per operation and outcome class (ok, client_error, server_error): a bounded label set.
    assert 'byoi_request_duration_seconds_count{operation="ListImages",outcome="ok"} ' in text
    assert 'byoi_request_duration_seconds_count{operation="DescribeImage",outcome="client_error"} ' in text
    assert 'byoi_request_duration_seconds_bucket{le="5.0",operation="DescribeImage",outcome="client_error"}' in text
    latency = [line for line in text.splitlines() if line.startswith("byoi_request_duration_seconds")]
    assert latency and not [line for line in latency if 'outcome="ResourceNotFound"' in line]


def test_logs_are_json_lines_with_the_returned_request_id(server, sm):
    with pytest.raises(ClientError) as e:
        sm.describe_image(ImageName="log-missing")
    rid = e.value.response["ResponseMetadata"]["RequestId"]
    time.sleep(0.2)
    entries = [
        json.loads(line) for line in (server.data_dir / "server.log").read_text().splitlines() if line.startswith("{")
    ]
    mine = [e for e in entries if e.get("request_id") == rid]
    assert len(mine) == 1
    assert mine[0]["operation"] == "DescribeImage" and mine[0]["error_code"] == "ResourceNotFound"
    assert mine[0]["status"] == 400 and mine[0]["duration_ms"] >= 0
