"""Queue load (issue 12, item 9): 1,000 queued runs drained by 4 worker processes
while a load generator reads run statuses through 2 API processes.

    .venv/bin/python benchmarks/queue_load.py [--runs 1000] [--workers 4]
        [--api-workers 2] [--connections 8] [--rate 200] [--baseline 10]
        [--timeout 1500] [--json PATH] [--logs DIR]

Starts its own stack on a fresh Postgres database (migrated, dropped at the end)
and its own queues on the local Redis, with API keys required, as the CLI starts
it: ``mixlab api --workers 2`` (two uvicorn processes on one port, one
deployment: one of them reconciles, /metrics merges both) and ``mixlab worker``
processes (concurrency 1 each, one torch thread per run). The project's
``queued_runs`` limit is raised to ``--runs`` through its documented per-project
limits (the default is 1,000).

1. A tiny built-in dataset (synthetic, tabular only, 100 samples, 2 classes) is
   prepared by a worker on the preparation queue alone, which then stops.
2. ``--runs`` experiments are posted (8 at a time): one epoch of a small
   multimodal model, so a run trains in well under a second. No training worker
   runs yet, so all of them are queued, in Postgres and in Redis.
3. The load generator starts: ``--connections`` connections (httpx, asyncio),
   each reading ``GET /v1/runs/{id}`` of a random run on a fixed schedule,
   ``--rate`` reads/s in all (a read that is late goes at once, without
   catching up). ``--baseline`` seconds later (reads of a full queue that
   nothing drains) ``--workers`` workers start and drain the queue.
4. When every run is finished (or ``--timeout`` passes) the readers and the
   workers stop, and the benchmark checks, from Postgres, that every run
   ``succeeded`` with ``attempt`` 1 (every claim counts an attempt, so a run
   trained twice, or requeued by the reconciler, would show 2 or more), and
   counts in the workers' logs how many times a run's message was received.

Printed: p50/p99 of the status reads from the workers' start to the last run's
end (the whole request as the client sees it, client included) and before the
workers started, reads/s achieved, the drain's wall time (workers started to
last run finished; also first claim to last finish, from the runs' timestamps)
and runs/s, the messages the workers received and the duplicates their claim
refused, what the reconciler did, and the request count /metrics reports for the
status route (the sum over both API processes; it equals the reads sent).
Exit status 1 if a run did not succeed exactly once.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from bench_stack import bench_environment, start, start_api, stop

DATASET = {"num_samples": 100, "num_classes": 2, "modalities": ["tabular"],
           "tabular_features": 4, "seed": 0}


def spec(dataset_id: str, i: int) -> dict[str, Any]:
    return {"name": f"load-{i}", "dataset_id": dataset_id,
            "model": {"kind": "multimodal", "dim": 8},
            "augmentation": {"method": "mixup", "alpha": 1.0},
            "training": {"epochs": 1, "batch_size": 32, "seed": i % 1000,
                         "calibration": "none"}}


def seed_project(runs: int) -> str:
    """The project (its queued_runs limit fits ``runs``) and a write key."""
    from app.db.session import session_scope
    from app.services import auth

    with session_scope() as session:
        project = auth.create_project(session, "load",
                                      limits={"queued_runs": max(runs, 1000)})
        _, key = auth.create_key(session, project.id, "load", "write")
    return key


def prepare_dataset(env: dict[str, str], tmp: Path, base: str, key: str) -> str:
    from app.client import MixlabClient

    ingest = start(["worker", "--queue", env["MIXLAB_INGEST_QUEUE"]], env,
                   tmp / "ingest-worker.log")
    try:
        with MixlabClient(base, api_key=key) as mx:
            created = mx.create_builtin_dataset("synthetic", name="load", **DATASET)
            ds = mx.wait_for_dataset(created["id"], timeout=300)
    finally:
        stop(ingest)
    if ds["status"] != "ready":
        raise SystemExit(f"the dataset did not prepare: {ds}")
    return str(ds["id"])


async def submit(base: str, key: str, dataset_id: str, runs: int) -> list[str]:
    gate = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        async def one(i: int) -> str:
            async with gate:
                reply = await http.post("/v1/experiments", json=spec(dataset_id, i))
            if reply.status_code != 202:
                raise SystemExit(f"experiment {i}: {reply.status_code} {reply.text}")
            return str(reply.json()["run_ids"][0])

        return list(await asyncio.gather(*(one(i) for i in range(runs))))


def connect(db_url: str) -> psycopg.Connection[Any]:
    """psycopg on SQLAlchemy's URL (postgresql+psycopg://…)."""
    return psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://", 1))


def by_status(db_url: str) -> dict[str, int]:
    with connect(db_url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status")
                    .fetchall())


class Readers:
    """``connections`` tasks reading random runs' statuses at ``rate`` reads/s in all."""

    def __init__(self, base: str, key: str, run_ids: list[str], connections: int,
                 rate: float) -> None:
        self.base, self.key, self.run_ids = base, key, run_ids
        self.connections, self.interval = connections, connections / rate
        self.reads: list[tuple[float, float]] = []  # (perf_counter when sent, ms)
        self.failures: list[str] = []
        self.statuses: dict[str, int] = {}
        self.stopping = asyncio.Event()
        self.started = 0.0

    async def _reader(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        due = time.perf_counter()
        while not self.stopping.is_set():
            run_id = rng.choice(self.run_ids)
            sent = time.perf_counter()
            try:
                reply = await http.get(f"/v1/runs/{run_id}")
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            else:
                elapsed = (time.perf_counter() - sent) * 1000
                if reply.status_code == 200:
                    self.reads.append((sent, elapsed))
                    status = reply.json()["status"]
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                else:
                    self.failures.append(f"{reply.status_code} {reply.text[:200]}")
            due += self.interval
            late = time.perf_counter() - due
            if late < 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), -late)
            else:
                due = time.perf_counter()  # behind schedule: no burst to catch up

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.connections,
                              max_keepalive_connections=self.connections)
        async with httpx.AsyncClient(base_url=self.base, limits=limits, timeout=30,
                                     headers={"Authorization": f"Bearer {self.key}"}) as http:
            self.started = time.perf_counter()
            await asyncio.gather(*(self._reader(http, random.Random(i))
                                   for i in range(self.connections)))


def summary(readers: "Readers", start: float, end: float) -> dict[str, float | None]:
    """The status reads sent between ``start`` and ``end`` (perf_counter)."""
    ms = [elapsed for sent, elapsed in readers.reads if start <= sent < end]
    return {"reads": len(ms), "reads_per_s": len(ms) / (end - start),
            "p50_ms": statistics.median(ms) if ms else None,
            "p99_ms": statistics.quantiles(ms, n=100, method="inclusive")[98]
            if len(ms) > 1 else None,
            "max_ms": max(ms) if ms else None}


async def drain(args: argparse.Namespace, env: dict[str, str], tmp: Path, base: str,
                key: str, run_ids: list[str]) -> dict[str, Any]:
    readers = Readers(base, key, run_ids, args.connections, args.rate)
    reading = asyncio.create_task(readers.run())
    await asyncio.sleep(args.baseline)  # reads of a full queue that nothing drains
    workers: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    load_from = time.perf_counter()
    try:
        for w in range(args.workers):
            workers.append(start(["worker", "--concurrency", "1"], env,
                                 tmp / f"worker-{w}.log"))
        last_print, counts = 0.0, {}
        while time.monotonic() - started < args.timeout:
            counts = await asyncio.to_thread(by_status, env["MIXLAB_DATABASE_URL"])
            live = counts.get("queued", 0) + counts.get("running", 0)
            if time.monotonic() - last_print >= 15 or not live:
                last_print = time.monotonic()
                lat = [elapsed for _, elapsed in readers.reads[-2000:]]
                p50 = statistics.median(lat) if lat else float("nan")
                print(f"  {time.monotonic() - started:6.0f}s {counts} | "
                      f"{len(readers.reads)} reads, recent p50 {p50:.1f} ms, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
            if not live:
                break
            await asyncio.sleep(1)
        drained_s = time.monotonic() - started
        load_to = time.perf_counter()
    finally:
        readers.stopping.set()
        await reading
        # SIGTERM: Celery's warm shutdown (nothing is running any more on success)
        await asyncio.gather(*(asyncio.to_thread(stop, w, 60) for w in workers))
    return {"readers": readers, "drained_s": drained_s, "counts": counts,
            "baseline": summary(readers, readers.started, load_from),
            "under_load": summary(readers, load_from, load_to)}


def verify(db_url: str, run_ids: list[str]) -> dict[str, Any]:
    with connect(db_url) as conn:
        rows = conn.execute(
            "SELECT id::text, status, attempt, created_at, started_at, finished_at FROM runs"
        ).fetchall()
    known = {row[0] for row in rows}
    statuses: dict[str, int] = {}
    attempts: dict[int, int] = {}
    for _, status, attempt, *_ in rows:
        statuses[status] = statuses.get(status, 0) + 1
        attempts[attempt] = attempts.get(attempt, 0) + 1
    done = [r for r in rows if r[4] is not None and r[5] is not None]
    first_start = min(r[4] for r in done) if done else None
    last_finish = max(r[5] for r in done) if done else None
    return {
        "runs_in_database": len(rows), "all_posted_runs_exist": set(run_ids) <= known,
        "statuses": statuses, "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "exactly_once": all(r[1] == "succeeded" and r[2] == 1 for r in rows)
        and len(rows) == len(run_ids),
        "train_s_median": statistics.median((r[5] - r[4]).total_seconds() for r in done)
        if done else None,
        "first_claim_to_last_finish_s": (last_finish - first_start).total_seconds()
        if done else None,
    }


# Celery logs each message it takes at INFO; the worker says when the claim refused
# a run that is already taken (a duplicate delivery)
RECEIVED = re.compile(r"mixlab\.train_run\[[^\]]+\] received")
REFUSED = re.compile(r"run [0-9a-f-]+ not claimable")


def in_worker_logs(tmp: Path, workers: int, pattern: re.Pattern[str]) -> int:
    return sum(len(pattern.findall((tmp / f"worker-{w}.log").read_text(errors="replace")))
               for w in range(workers))


def scraped(base: str) -> dict[str, Any]:
    """From /metrics (both API processes merged): the status route's request count,
    and what the reconciler did."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{base}/metrics", timeout=30).text
    except httpx.HTTPError as exc:
        return {"error": str(exc)}
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return {
        "status_route_requests": sum(
            s.value for s in samples if s.name == "mixlab_http_request_duration_seconds_count"
            and s.labels.get("route") == "/v1/runs/{run_id}" and s.labels.get("method") == "GET"),
        "reconciler_actions": {s.labels["action"]: s.value for s in samples
                               if s.name == "mixlab_reconciler_actions_total"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--api-workers", type=int, default=2, help="API processes")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200, help="status reads/s in all")
    parser.add_argument("--baseline", type=float, default=10,
                        help="seconds of reads before the workers start")
    parser.add_argument("--timeout", type=float, default=1500,
                        help="seconds the queue may take to drain")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--logs", type=Path, help="copy the API's and workers' logs here")
    args = parser.parse_args()

    # one torch thread per run: 4 workers share 2 cores (as the test suite runs them)
    with bench_environment({"MIXLAB_TORCH_THREADS": "1"}) as (env, tmp):
        key = seed_project(args.runs)
        api, base = start_api(env, tmp, workers=args.api_workers)
        try:
            print(f"machine: {os.cpu_count()} CPUs; `mixlab api --workers {args.api_workers}`"
                  f", {args.workers} `mixlab worker` processes (concurrency 1); "
                  f"{args.connections} reader connections at {args.rate:g} reads/s",
                  flush=True)
            dataset_id = prepare_dataset(env, tmp, base, key)
            submitted = time.monotonic()
            run_ids = asyncio.run(submit(base, key, dataset_id, args.runs))
            submit_s = time.monotonic() - submitted
            queued = by_status(env["MIXLAB_DATABASE_URL"])
            print(f"submitted {len(run_ids)} experiments in {submit_s:.1f} s "
                  f"({len(run_ids) / submit_s:.0f}/s): {queued}", flush=True)
            drained = asyncio.run(drain(args, env, tmp, base, key, run_ids))
            metrics = scraped(base)
        finally:
            stop(api)
        outcome = verify(env["MIXLAB_DATABASE_URL"], run_ids)
        received = in_worker_logs(tmp, args.workers, RECEIVED)
        refused = in_worker_logs(tmp, args.workers, REFUSED)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("*.log"):
                shutil.copy(log, args.logs / log.name)

    readers: Readers = drained["readers"]
    loaded = drained["under_load"]
    figures = {
        "runs": args.runs, "workers": args.workers, "api_processes": args.api_workers,
        "submit_s": submit_s, "queued_before_workers": queued,
        "drain_wall_s": drained["drained_s"], "runs_per_s": args.runs / drained["drained_s"],
        **outcome, "train_messages_received": received, "claims_refused": refused,
        "reads_baseline": drained["baseline"], "reads_under_load": loaded,
        "reads_all": len(readers.reads), "read_failures": len(readers.failures),
        "failure_examples": readers.failures[:5], "statuses_read": readers.statuses,
        "metrics": metrics,
    }
    print(json.dumps(figures, indent=2, default=str))
    span = outcome["first_claim_to_last_finish_s"]

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} ms"

    print(f"RESULT queue_load: {args.runs} runs, {args.workers} workers, {args.api_workers} API "
          f"processes: {outcome['statuses']}, attempts {outcome['attempts']}, "
          f"exactly once: {'yes' if outcome['exactly_once'] else 'NO'}; "
          f"drained in {drained['drained_s']:.0f} s from the workers' start "
          f"({figures['runs_per_s']:.2f} runs/s"
          + (f"; first claim to last finish {span:.0f} s, {args.runs / span:.2f} runs/s"
             if span else "") + "); "
          f"status reads under load p50 {ms(loaded['p50_ms'])} p99 {ms(loaded['p99_ms'])} "
          f"({loaded['reads']} reads, {loaded['reads_per_s']:.0f}/s; before the workers "
          f"started: p50 {ms(drained['baseline']['p50_ms'])} "
          f"p99 {ms(drained['baseline']['p99_ms'])}); {len(readers.failures)} reads failed")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    if not outcome["exactly_once"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
