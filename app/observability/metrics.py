"""Prometheus metrics: request latency, runs by status, queue depth, throughput
of running runs, worker heartbeat age, reconciler actions.

Nothing here carries a project's or an object's name or id: requests are
labelled by route template (``/v1/runs/{run_id}``), the rest is aggregated, so
``GET /metrics`` is open like /healthz. Database and broker figures are read at
scrape time (one GROUP BY, one LLEN per queue), not kept in the process.

Several API processes (``mixlab api --workers N``): the command puts them in
prometheus-client's multiprocess mode (app.observability.multiprocess), each
process writes its counters and histograms to files in PROMETHEUS_MULTIPROC_DIR,
and whichever process answers ``/metrics`` serves a registry that merges them
(MultiProcessCollector: histogram buckets, counts and sums added over the
processes) plus the scrape-time StateCollector once, so runs by status and
queue depth appear once, not once per process. One process serves the default
registry as before (with the process_* and python_* families that multiprocess
mode drops).
"""

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability import multiprocess

REQUEST_SECONDS = Histogram(
    "mixlab_http_request_duration_seconds", "HTTP request latency, by route template",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RECONCILER_ACTIONS = Counter(
    "mixlab_reconciler_actions_total", "Runs and preparations the reconciler acted on",
    ["action"])  # requeued, republished, failed, cancelled, republished_datasets


class LatencyMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware task per request): times each HTTP request
    and labels it with the route that matched, never the raw path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            REQUEST_SECONDS.labels(_route(scope), scope["method"], str(status)).observe(
                time.perf_counter() - started)


def _route(scope: Scope) -> str:
    route = scope.get("route")  # set by the router once a route matched
    if route is not None and hasattr(route, "path"):
        # an included router's route holds its path without the router's prefix
        # (/runs/{run_id} under /v1): the prefix is the request path's leading
        # segments, matched literally, so never an id
        template = str(route.path)
        extra = scope["path"].count("/") - template.count("/")
        if extra > 0:
            template = "/".join(scope["path"].split("/")[:extra + 1]) + template
        return template
    app = scope.get("app")  # a 404 or a reply before routing: match again, cheaply
    for candidate in getattr(getattr(app, "router", None), "routes", []):
        if candidate.matches(scope)[0] == Match.FULL and hasattr(candidate, "path"):
            return str(candidate.path)
    return "unmatched"


def count_reconciler_actions(report: Any) -> None:
    for action in ("requeued", "republished", "failed", "cancelled", "republished_datasets"):
        done = len(getattr(report, action, []) or [])
        if done:
            RECONCILER_ACTIONS.labels(action).inc(done)


class StateCollector(Collector):
    """Runs by status, running runs' samples/s and the oldest heartbeat, and the
    broker's queue depth, read when Prometheus scrapes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from app.db.models import Run
        from app.db.session import session_scope
        from app.runs.status import RunStatus

        by_status = GaugeMetricFamily("mixlab_runs", "Runs by status", labels=["status"])
        speed = GaugeMetricFamily("mixlab_running_samples_per_second",
                                  "Samples/s of all running runs together")
        heartbeat = GaugeMetricFamily("mixlab_worker_heartbeat_age_seconds",
                                      "Age of the stalest running run's heartbeat")
        try:
            with session_scope() as session:
                counts = dict(session.execute(
                    select(Run.status, func.count()).group_by(Run.status)).all())
                total, oldest = session.execute(
                    select(func.coalesce(func.sum(Run.samples_per_s), 0.0),
                           func.min(Run.heartbeat_at))
                    .where(Run.status == RunStatus.RUNNING.value)).one()
        except Exception:  # the database is down: say nothing rather than fail the scrape
            return
        for status in RunStatus:
            by_status.add_metric([status.value], float(counts.get(status.value, 0)))
        yield by_status
        speed.add_metric([], float(total))
        yield speed
        if oldest is not None:
            from app.db.base import utcnow

            heartbeat.add_metric([], (utcnow() - oldest).total_seconds())
        yield heartbeat
        yield from _queue_depth()


def _queue_depth() -> Iterator[GaugeMetricFamily]:
    from app.settings import get_settings

    settings = get_settings()
    url = settings.resolved_broker_url
    if not url.startswith(("redis://", "rediss://")):
        return
    import redis

    depth = GaugeMetricFamily("mixlab_queue_depth", "Messages waiting in the broker's queue",
                              labels=["queue"])
    try:
        client = redis.Redis.from_url(url, socket_timeout=1)
        for queue in settings.worker_queues:
            depth.add_metric([queue], float(client.llen(queue)))
        client.close()
    except redis.RedisError:
        return
    yield depth


_collector: StateCollector | None = None
_merged: CollectorRegistry | None = None


def install_collector() -> None:
    global _collector
    if _collector is None:
        _collector = StateCollector()
        REGISTRY.register(_collector)


def _registry() -> CollectorRegistry:
    """The default registry of this process, or in multiprocess mode one that
    holds no metric of its own (the library's docs: metrics registered beside a
    MultiProcessCollector would come out twice) but the merge of every
    process's files and the scrape-time figures."""
    global _merged
    if not multiprocess.enabled():
        return REGISTRY
    if _merged is None:
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        merged.register(_collector or StateCollector())
        _merged = merged
    return _merged


def exposition() -> tuple[bytes, str]:
    return generate_latest(_registry()), CONTENT_TYPE_LATEST
