"""GET /metrics under ``mixlab api --workers 2``: prometheus-client's multiprocess
mode (app.observability.multiprocess). Request histograms are the sum over the
processes; the scrape-time families (runs by status, queue depth) come once."""

import asyncio
import os
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from app.runs.status import RunStatus
from tests.conftest import TMP
from tests.integration.helpers import wait_until
from tests.integration.test_reconciler_leader import api_process

pytestmark = pytest.mark.integration

ROUTE = "/v1/runs/{run_id}"
COUNT = "mixlab_http_request_duration_seconds_count"


def _route_count(samples: list[tuple[str, dict[str, str], float]]) -> float:
    return sum(value for name, labels, value in samples
               if name == COUNT and labels.get("route") == ROUTE
               and labels.get("status") == "404")


def per_process_counts(folder: Path) -> dict[int, float]:
    """Requests to ROUTE each API process recorded, read from its own file."""
    counts = {}
    for path in folder.glob("histogram_*.db"):
        metrics = MultiProcessCollector.merge([str(path)])
        samples = [(s.name, s.labels, s.value) for m in metrics for s in m.samples]
        counts[int(path.stem.split("_")[-1])] = _route_count(samples)
    return counts


def scraped(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples]


async def _send(url: str, headers: dict[str, str], n: int) -> None:
    # no keep-alive: every request is a new connection, which either process may accept
    limits = httpx.Limits(max_keepalive_connections=0, max_connections=8)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=30) as http:
        replies = await asyncio.gather(*(http.get(f"/v1/runs/{uuid.uuid4()}")
                                         for _ in range(n)))
    assert {r.status_code for r in replies} == {404}


def test_two_api_processes_merge_their_metrics(database, access) -> None:  # type: ignore[no-untyped-def]
    tmp = TMP / f"multiproc-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(tmp)  # where `mixlab api` makes its folder, so the test sees it
    with api_process(env, workers=2) as (url, _, _log):
        folders = list(tmp.glob("mixlab-prometheus-*"))
        assert len(folders) == 1, folders
        folder = folders[0]

        sent = 0

        def both_answered() -> dict[int, float] | None:
            nonlocal sent
            asyncio.run(_send(url, access.headers, 16))
            sent += 16
            counts = per_process_counts(folder)
            return counts if len([c for c in counts.values() if c > 0]) >= 2 else None

        wait_until(both_answered, timeout=60, interval=0, what="both API processes to answer")
        asyncio.run(_send(url, access.headers, 7))  # a total no batch size divides
        sent += 7

        counts = per_process_counts(folder)
        assert sorted(c > 0 for c in counts.values()) == [True, True], counts
        assert sum(counts.values()) == sent, (counts, sent)

        text = httpx.get(f"{url}/metrics", timeout=30).text
        samples = scraped(text)
        # the histogram is the sum over the processes, whichever one answered
        assert _route_count(samples) == sent, (sent, counts)
        assert 'pid="' not in text
        # scrape-time figures once, not once per process
        runs = [labels["status"] for name, labels, _ in samples if name == "mixlab_runs"]
        assert sorted(runs) == sorted(status.value for status in RunStatus), runs
        assert text.count("# TYPE mixlab_runs gauge") == 1
        assert text.count("# TYPE mixlab_queue_depth gauge") == 1
        assert len([1 for name, _, _ in samples if name == "mixlab_queue_depth"]) == \
            len({labels["queue"] for name, labels, _ in samples if name == "mixlab_queue_depth"})
        # a second scrape, maybe from the other process, gives the same count
        again = scraped(httpx.get(f"{url}/metrics", timeout=30).text)
        assert _route_count(again) == sent
    # the folder the command made goes with it
    assert not folder.exists(), list(folder.iterdir())
