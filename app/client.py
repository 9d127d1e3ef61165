"""A small Python client for the mixlab REST API (httpx).

    from app.client import MixlabClient
    with MixlabClient("http://127.0.0.1:8000", api_key="mxl_…") as mx:  # or MIXLAB_API_KEY
        ds = mx.wait_for_dataset(mx.create_builtin_dataset("digits", label_noise=0.4)["id"])
        created = mx.create_experiment({"dataset_id": ds["id"], "training": {"epochs": 5}})
        run = mx.wait_for_run(created["run_ids"][0])
"""

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")
DATASET_TERMINAL = ("ready", "failed")


def wait_until_ready(base_url: str, timeout: float = 60.0,
                     still_starting: Callable[[], bool] = lambda: True) -> bool:
    """Poll ``/readyz`` until it answers 200 (True), the timeout passes or
    ``still_starting`` says the server process is gone (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and still_starting():
        try:
            if httpx.get(f"{base_url.rstrip('/')}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


class MixlabError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            detail = response.text
        super().__init__(f"{response.request.method} {response.request.url.path} → "
                         f"{response.status_code}: {detail}")
        self.status_code = response.status_code
        self.detail = detail


class MixlabClient:
    """``api_key`` (default: the ``MIXLAB_API_KEY`` environment variable) is sent as
    ``Authorization: Bearer``; a server with authentication off ignores it."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 60.0,
                 api_key: str | None = None) -> None:
        key = api_key if api_key is not None else os.environ.get("MIXLAB_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                 headers=headers)

    def copy(self) -> "MixlabClient":
        """A client to the same server with the same key (one per thread)."""
        twin = MixlabClient.__new__(MixlabClient)
        twin.http = httpx.Client(base_url=self.http.base_url, timeout=self.http.timeout,
                                 headers=self.http.headers)
        return twin

    def __enter__(self) -> "MixlabClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, url, **kwargs)
        if response.status_code >= 400:
            raise MixlabError(response)
        return response

    # datasets: each create call answers at once with the dataset ``preparing``;
    # wait_for_dataset follows it to ``ready`` (or ``failed``, with its errors)
    def create_builtin_dataset(self, builtin: str = "digits", name: str | None = None,
                               **options: Any) -> dict[str, Any]:
        body = {"name": name or builtin,
                "source": {"kind": "builtin", "name": builtin, "options": options}}
        return self._call("POST", "/v1/datasets", json=body).json()

    def create_uri_dataset(self, uri: str, name: str | None = None,
                           spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """A file:// (under the server's import roots) or s3:// source."""
        source: dict[str, Any] = {"kind": "uri", "uri": uri}
        if spec is not None:
            source["spec"] = spec
        body = {"name": name or uri.rstrip("/").rsplit("/", 1)[-1], "source": source}
        return self._call("POST", "/v1/datasets", json=body).json()

    def upload_dataset(self, path: str | Path, name: str | None = None,
                       spec: dict[str, Any] | None = None) -> dict[str, Any]:
        path = Path(path)
        with path.open("rb") as fh:
            files = {"file": (path.name, fh, "application/octet-stream")}
            data = {"name": name} if name else {}
            if spec is not None:
                data["spec"] = json.dumps(spec)
            return self._call("POST", "/v1/datasets", files=files, data=data).json()

    def wait_for_dataset(self, dataset_id: str, timeout: float = 600.0, interval: float = 0.3,
                         on_update: Callable[[dict[str, Any]], None] | None = None
                         ) -> dict[str, Any]:
        """Poll until the dataset is ready or failed (its ``errors`` say why)."""
        deadline = time.monotonic() + timeout
        while True:
            ds = self.get_dataset(dataset_id)
            if on_update:
                on_update(ds)
            if ds["status"] in DATASET_TERMINAL:
                return ds
            if time.monotonic() > deadline:
                raise TimeoutError(f"dataset {dataset_id} still {ds['status']} "
                                   f"({ds['stage']}) after {timeout}s")
            time.sleep(interval)

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/datasets/{dataset_id}").json()

    def list_datasets(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return self._call("GET", "/v1/datasets",
                          params={"limit": limit, "offset": offset}).json()

    def delete_dataset(self, dataset_id: str) -> None:
        self._call("DELETE", f"/v1/datasets/{dataset_id}")

    def preview(self, dataset_id: str, **spec: Any) -> dict[str, Any]:
        return self._call("POST", f"/v1/datasets/{dataset_id}/preview", json=spec).json()

    def fetch(self, url: str) -> bytes:
        """GET a URL from a reply (absolute or relative to the base URL)."""
        return self._call("GET", url).content

    # experiments and runs
    def create_experiment(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/experiments", json=spec).json()

    def get_experiment(self, experiment_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/experiments/{experiment_id}").json()

    def list_experiments(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return self._call("GET", "/v1/experiments",
                          params={"limit": limit, "offset": offset}).json()

    def delete_experiment(self, experiment_id: str) -> None:
        self._call("DELETE", f"/v1/experiments/{experiment_id}")

    def list_runs(self, limit: int = 50, offset: int = 0, status: str | None = None,
                  experiment_id: str | None = None,
                  sweep_id: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        if experiment_id:
            params["experiment_id"] = experiment_id
        if sweep_id:
            params["sweep_id"] = sweep_id
        return self._call("GET", "/v1/runs", params=params).json()

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{run_id}").json()

    def run_events(self, run_id: str, after_step: int | None = None
                   ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The run's live events (server-sent) as (event, data) until the run ends:
        ``run`` (the run, on every change of status, step or epoch), ``metrics``
        (``{"points": {key: [{step, epoch, value}]}}``) and a last ``end``."""
        params = {"after_step": after_step} if after_step is not None else {}
        # no read timeout: the server sends a ping every 15 s while the run is quiet
        timeout = httpx.Timeout(10.0, read=60.0)
        with self.http.stream("GET", f"/v1/runs/{run_id}/events", params=params,
                              timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise MixlabError(response)
            event, data = "message", []
            for line in response.iter_lines():
                if not line:  # a blank line ends an event
                    if data:
                        yield event, json.loads("\n".join(data))
                        if event == "end":
                            return
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/runs/{run_id}/cancel").json()

    def metrics(self, run_id: str, key: str | None = None, after_step: int | None = None,
                max_points: int | None = None) -> dict[str, list[dict[str, Any]]]:
        """Metric history by key, a ``{step, epoch, value}`` dict per point: points
        after ``after_step`` only (incremental fetches), each curve down-sampled to
        at most ``max_points`` (extremes kept). ``metric_columns`` is the same as
        the API sends it, columns per key (lighter for long curves)."""
        return {k: [{"step": s, "epoch": e, "value": v}
                    for s, e, v in zip(c["step"], c["epoch"], c["value"], strict=True)]
                for k, c in self.metric_columns(run_id, key, after_step, max_points).items()}

    def metric_columns(self, run_id: str, key: str | None = None,
                       after_step: int | None = None, max_points: int | None = None,
                       ) -> dict[str, dict[str, list[Any]]]:
        """Metric history as the API replies it: key → ``{"step": [...], "epoch":
        [...], "value": [...]}`` (parallel lists, by step)."""
        params: dict[str, Any] = {"key": key} if key else {}
        if after_step is not None:
            params["after_step"] = after_step
        if max_points is not None:
            params["max_points"] = max_points
        return self._call("GET", f"/v1/runs/{run_id}/metrics", params=params).json()["metrics"]

    def run_logs(self, run_id: str, attempt: int | None = None, after_line: int = 0,
                 limit: int = 1000) -> dict[str, Any]:
        """One page of what the worker logged for the run: ``attempt`` (default the
        latest that logged), lines after ``after_line``; see ``iter_logs``."""
        params: dict[str, Any] = {"after_line": after_line, "limit": limit}
        if attempt is not None:
            params["attempt"] = attempt
        return self._call("GET", f"/v1/runs/{run_id}/logs", params=params).json()

    def iter_logs(self, run_id: str, attempt: int | None = None, follow: bool = False,
                  interval: float = 1.0) -> Iterator[dict[str, Any]]:
        """Every stored line of the run, attempt after attempt (or of one attempt),
        each a dict with its ``attempt``; with ``follow``, new lines as the worker
        stores them (about every MIXLAB_CONTROL_POLL_S) until the run has ended.
        A worker stores an attempt's last lines before its outcome, so a run that
        ended has nothing more to come."""
        current, after = attempt, 0
        while True:
            page = self.run_logs(run_id, current, after)
            if current is None and page["attempts"]:
                current = page["attempts"][0]
                continue
            if current is not None:
                for line in page["lines"]:
                    yield {"attempt": current, **line}
                after = page["next_after_line"]
                if page["more"]:
                    continue
                later = [a for a in page["attempts"] if a > current]
                if attempt is None and later:
                    current, after = later[0], 0
                    continue
            if not follow or page["status"] in TERMINAL:
                return
            time.sleep(interval)

    def compare_runs(self, run_ids: list[str], keys: list[str] | None = None,
                     max_points: int | None = None) -> dict[str, Any]:
        """2-20 runs side by side: runs (metrics, spec), differs, histories."""
        params: dict[str, Any] = {"ids": ",".join(run_ids)}
        if keys:
            params["keys"] = ",".join(keys)
        if max_points is not None:
            params["max_points"] = max_points
        return self._call("GET", "/v1/runs/compare", params=params).json()

    # sweeps
    def create_sweep(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST a sweep (name, base, grid and/or random): its id and run ids."""
        return self._call("POST", "/v1/sweeps", json=spec).json()

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/sweeps/{sweep_id}").json()

    def sweeps(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return self._call("GET", "/v1/sweeps", params={"limit": limit, "offset": offset}).json()

    def sweep_summary(self, sweep_id: str, metric: str = "test_acc") -> dict[str, Any]:
        return self._call("GET", f"/v1/sweeps/{sweep_id}/summary",
                          params={"metric": metric}).json()

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/sweeps/{sweep_id}/cancel").json()

    def delete_sweep(self, sweep_id: str) -> None:
        self._call("DELETE", f"/v1/sweeps/{sweep_id}")

    def wait_for_sweep(self, sweep_id: str, timeout: float = 3600.0, interval: float = 1.0,
                       on_update: Callable[[dict[str, Any]], None] | None = None
                       ) -> dict[str, Any]:
        """Poll until every run of the sweep ended."""
        deadline = time.monotonic() + timeout
        while True:
            sweep = self.sweep(sweep_id)
            if on_update:
                on_update(sweep)
            if sweep["done"]:
                return sweep
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id}: {sweep['finished']} of "
                                   f"{sweep['total']} runs ended after {timeout}s")
            time.sleep(interval)

    def evaluation(self, run_id: str) -> dict[str, Any]:
        """The test split's confusion matrix and per-class scores."""
        return self._call("GET", f"/v1/runs/{run_id}/evaluation").json()

    def embeddings(self, run_id: str, split: str = "test", limit: int = 2000) -> dict[str, Any]:
        """An autoencoder run's latent means of a split's rows, their labels and
        their 2-D PCA projection."""
        return self._call("GET", f"/v1/runs/{run_id}/embeddings",
                          params={"split": split, "limit": limit}).json()

    def embeddings_png(self, run_id: str, split: str = "test", limit: int = 2000) -> bytes:
        """That projection as a PNG scatter coloured by class."""
        return self._call("GET", f"/v1/runs/{run_id}/embeddings.png",
                          params={"split": split, "limit": limit}).content

    def reconstructions_png(self, run_id: str, split: str = "test", n: int = 8) -> bytes:
        """PNG: input | reconstruction per modality for the split's first ``n`` rows."""
        return self._call("GET", f"/v1/runs/{run_id}/reconstructions",
                          params={"split": split, "n": n}).content

    def generate_png(self, run_id: str, source: str, target: str, split: str = "test",
                     n: int = 8) -> bytes:
        """PNG: modality ``target`` decoded from ``source`` alone, per sample."""
        return self._call("GET", f"/v1/runs/{run_id}/generate",
                          params={"from": source, "to": target, "split": split,
                                  "n": n}).content

    def download_checkpoint(self, run_id: str) -> bytes:
        return self._call("GET", f"/v1/runs/{run_id}/checkpoint").content

    def predict(self, run_id: str, dataset_id: str | None = None, split: str = "test",
                indices: list[int] | None = None, file: str | Path | None = None,
                spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """A succeeded run's predictions on rows of a dataset's ``split`` (all, or
        ``indices`` of it), or on the samples of ``file`` (any upload format; ``spec``
        for Parquet / archives); with the accuracy where samples have labels."""
        if (dataset_id is None) == (file is None):
            raise ValueError("give exactly one of dataset_id or file")
        url = f"/v1/runs/{run_id}/predict"
        if file is None:
            if spec is not None:
                raise ValueError("spec applies to a file")
            body: dict[str, Any] = {"dataset_id": dataset_id, "split": split}
            if indices is not None:
                body["indices"] = list(indices)
            return self._call("POST", url, json=body).json()
        path = Path(file)
        with path.open("rb") as fh:
            files = {"file": (path.name, fh, "application/octet-stream")}
            data = {"spec": json.dumps(spec)} if spec is not None else {}
            return self._call("POST", url, files=files, data=data).json()

    # API keys of the project (these need a write key)
    def create_key(self, scope: str, name: str = "key") -> dict[str, Any]:
        """A new key; its ``key`` field is the only time the key is shown."""
        return self._call("POST", "/v1/keys", json={"name": name, "scope": scope}).json()

    def list_keys(self) -> dict[str, Any]:
        return self._call("GET", "/v1/keys").json()

    def revoke_key(self, key_id: str) -> None:
        self._call("DELETE", f"/v1/keys/{key_id}")

    def wait_for_run(self, run_id: str, timeout: float = 600.0, interval: float = 0.5,
                     on_update: Callable[[dict[str, Any]], None] | None = None
                     ) -> dict[str, Any]:
        """Poll until the run is succeeded, failed or cancelled."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if on_update:
                on_update(run)
            if run["status"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout}s")
            time.sleep(interval)
