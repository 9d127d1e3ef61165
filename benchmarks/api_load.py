"""API read load: ``GET /v1/runs/{id}`` (with an API key) against ``/healthz``, and
the metric history of one key with 100,000 points.

    .venv/bin/python benchmarks/api_load.py [--rounds 5] [--seconds 10] [--connections 32]

Starts one ``mixlab api`` process (uvicorn, as the CLI starts it) on a fresh
Postgres database of its own (migrated, dropped at the end) and the local Redis,
with API keys required. Seeds a project, a read key, one experiment with a run
and 100,000 points of one metric key.

Status reads: wrk (Debian's ``wrk``) loads one endpoint at a time with
``--connections`` connections for ``--seconds``; rounds alternate the two
endpoints and which goes first, so both see the same machine. Each round's ratio
is run reads/s ÷ healthz reads/s of that round; the result is the median ratio
and the median p50/p99 of each endpoint. Goal (issue 12): ratio ≥ 0.50 and
run p99 < 15 ms at 32 connections.

Metric history: ``GET /v1/runs/{id}/metrics?key=curve`` (100,000 points), one
request at a time, ``--history-reps`` times: median and max wall time of the
whole request (body read and decoded included). Goal: < 300 ms. Also timed:
``max_points=1000`` (SQL down-sampling) and ``after_step`` (the last 100 points).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import httpx
from bench_stack import bench_environment, start_api, stop

POINTS = 100_000


def seed() -> tuple[str, str]:
    """A project, its read key, and a run with ``POINTS`` points of key ``curve``
    (plus a few epochs of val_acc): returns (key, run id)."""
    from sqlalchemy import insert, text

    from app.db.models import Dataset, Experiment, MetricPoint, Run
    from app.db.session import session_scope
    from app.services import auth

    with session_scope() as session:
        project = auth.create_project(session, "bench")
        _, key = auth.create_key(session, project.id, "bench", "read")
        dataset = Dataset(project_id=project.id, name="bench", status="ready",
                          source={"builtin": "digits"})
        session.add(dataset)
        session.flush()
        experiment = Experiment(project_id=project.id, name="bench", dataset_id=dataset.id,
                                task="classification",
                                spec={"training": {"epochs": 100},
                                      "augmentation": {"method": "mixup", "alpha": 1.0}})
        experiment.runs.append(Run(status="running", epoch=3, step=POINTS, total_steps=POINTS,
                                   samples_per_s=1234.5, metrics={"val_acc": 0.9}))
        session.add(experiment)
        session.commit()
        run_id = experiment.runs[0].id
        # rows straight into the table, as the worker's flushes leave them
        rows = [{"run_id": run_id, "key": "curve", "step": step, "epoch": step // 1000,
                 "value": ((step * 7919) % 101) / 100} for step in range(POINTS)]
        rows += [{"run_id": run_id, "key": "val_acc", "step": e * 1000, "epoch": e,
                  "value": 0.5 + e / 10} for e in range(1, 4)]
        for start in range(0, len(rows), 10_000):
            session.execute(insert(MetricPoint), rows[start:start + 10_000])
        session.commit()
        session.execute(text("ANALYZE metrics"))
    return key, str(run_id)


LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, key: str | None, seconds: int, connections: int) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if key:
        cmd[1:1] = ["-H", f"Authorization: Bearer {key}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {p: float(v) * UNIT_MS[u] for p, v, u in LATENCY.findall(out)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad:
        raise SystemExit(f"{url}: {bad.group(1)} non-2xx replies:\n{out}")
    return {"rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "socket_errors": 1.0 if errors else 0.0}


def reads(base: str, key: str, run_id: str, rounds: int, seconds: int,
          connections: int) -> dict[str, object]:
    targets = {"healthz": (f"{base}/healthz", None),
               "run": (f"{base}/v1/runs/{run_id}", key)}
    for url, k in targets.values():  # warm-up: connections, caches, imports
        wrk(url, k, 2, connections)
    table = []
    for r in range(rounds):
        order = ["healthz", "run"] if r % 2 == 0 else ["run", "healthz"]
        row: dict[str, object] = {"round": r + 1, "order": ",".join(order),
                                  "load1": os.getloadavg()[0]}
        for name in order:
            url, k = targets[name]
            row[name] = wrk(url, k, seconds, connections)
        row["ratio"] = row["run"]["rps"] / row["healthz"]["rps"]  # type: ignore[index]
        table.append(row)
        print(f"round {r + 1} ({row['order']}): healthz {row['healthz']['rps']:.0f}/s "  # type: ignore[index]
              f"p50 {row['healthz']['p50_ms']:.2f} ms p99 {row['healthz']['p99_ms']:.2f} ms | "  # type: ignore[index]
              f"run {row['run']['rps']:.0f}/s p50 {row['run']['p50_ms']:.2f} ms "  # type: ignore[index]
              f"p99 {row['run']['p99_ms']:.2f} ms | ratio {row['ratio']:.3f}", flush=True)

    def med(name: str, field: str) -> float:
        return statistics.median(r[name][field] for r in table)  # type: ignore[index]

    return {"rounds": table, "ratio": statistics.median(r["ratio"] for r in table),  # type: ignore[misc]
            **{f"{n}_{f}": med(n, f) for n in targets for f in ("rps", "p50_ms", "p99_ms")}}


def history(base: str, key: str, run_id: str, reps: int) -> dict[str, object]:
    cases = {"all_100k": {"key": "curve"},
             "max_points_1000": {"key": "curve", "max_points": 1000},
             "after_step_last_100": {"key": "curve", "after_step": POINTS - 101}}
    out: dict[str, object] = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client:
        for name, params in cases.items():
            times, n = [], 0
            for _ in range(reps + 1):  # the first is a warm-up, not counted
                started = time.perf_counter()
                reply = client.get(f"/v1/runs/{run_id}/metrics", params=params)
                reply.raise_for_status()
                curve = reply.json()["metrics"]["curve"]
                # columns (now) or a dict per point (before issue 12): both measurable
                n = len(curve["step"] if isinstance(curve, dict) else curve)
                times.append((time.perf_counter() - started) * 1000)
            times = times[1:]
            out[name] = {"points": n, "median_ms": statistics.median(times),
                         "max_ms": max(times), "bytes": len(reply.content)}
            print(f"history {name}: {n} points, {len(reply.content) / 1e6:.2f} MB, median "
                  f"{statistics.median(times):.1f} ms, max {max(times):.1f} ms", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--history-reps", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")

    with bench_environment() as (env, tmp):
        key, run_id = seed()
        api, base = start_api(env, tmp)
        try:
            print(f"machine: {os.cpu_count()} CPUs; one `mixlab api` process; wrk -t2 "
                  f"-c{args.connections}, {args.rounds} rounds of {args.seconds}s per "
                  "endpoint", flush=True)
            loaded = reads(base, key, run_id, args.rounds, args.seconds, args.connections)
            curves = history(base, key, run_id, args.history_reps)
        finally:
            stop(api)
    full = curves["all_100k"]["median_ms"]  # type: ignore[index]
    print(f"RESULT api_load: run/healthz = {loaded['ratio']:.2f}x (goal >= 0.50), "
          f"run p50 {loaded['run_p50_ms']:.2f} ms p99 {loaded['run_p99_ms']:.2f} ms "
          f"(goal < 15), healthz {loaded['healthz_rps']:.0f}/s, run "
          f"{loaded['run_rps']:.0f}/s (medians of {args.rounds} rounds, "
          f"c={args.connections})")
    print(f"RESULT metric_history: {POINTS} points of one key in {full:.0f} ms "
          f"(median of {args.history_reps}; goal < 300)")
    if args.json:
        args.json.write_text(json.dumps({"reads": loaded, "history": curves}, indent=2))


if __name__ == "__main__":
    main()
