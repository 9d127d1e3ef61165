"""Every page of the dashboard in Chromium, on the live stack with real runs: what a
person sees (rows, curves, images, tables), with authentication on (the key entered
in the page) and off."""

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from app.client import MixlabClient
from tests.browser.conftest import ARTIFACTS, Dashboard
from tests.conftest import TMP, free_port, stop, wait_http
from tests.recipes import SHORT

pytestmark = [pytest.mark.integration, pytest.mark.browser]

MODEL = {"width": 8, "depth": 2}
ALPHAS = [0.5, 4.0]


@pytest.fixture(scope="module")
def digits(mx: MixlabClient) -> dict[str, Any]:
    created = mx.create_builtin_dataset("digits", name="ui-digits-noisy", label_noise=0.2, seed=1)
    return mx.wait_for_dataset(created["id"], timeout=180)


@pytest.fixture(scope="module")
def multimodal(mx: MixlabClient) -> dict[str, Any]:
    created = mx.create_builtin_dataset("synthetic", name="ui-synthetic", num_samples=200)
    return mx.wait_for_dataset(created["id"], timeout=180)


@pytest.fixture(scope="module")
def sweep(mx: MixlabClient, digits: dict[str, Any]) -> dict[str, Any]:
    """α × seed with mixup on noisy digits, run to the end."""
    created = mx.create_sweep({
        "name": "ui-alpha", "base": {
            "dataset_id": digits["id"], "model": MODEL,
            "augmentation": {"method": "mixup"},
            "training": {**SHORT, "epochs": 2}},
        "grid": {"augmentation.alpha": ALPHAS, "training.seed": [0, 1]}})
    return mx.wait_for_sweep(created["sweep_id"], timeout=600)


def test_the_root_leads_to_the_runs_table_filtered_by_sweep_and_sortable(
        dashboard: Dashboard, sweep: dict[str, Any]) -> None:
    page = dashboard.open("/")
    assert page.url.endswith("/ui")
    page.locator("#filter-sweep").select_option(sweep["id"])
    rows = page.locator("#runs-table tbody tr")
    expect(rows).to_have_count(4)
    shown = rows.evaluate_all("rs => rs.map(r => r.dataset.runId)")
    assert sorted(shown) == sorted(sweep["run_ids"])
    expect(page.locator("#runs-table td[data-col=status]")).to_have_text(["succeeded"] * 4)
    expect(page.locator("#runs-table td[data-col=method]")).to_have_text(["mixup"] * 4)
    # test accuracy is a number in every row
    for text in page.locator("#runs-table td[data-col=test_acc]").all_inner_texts():
        assert 0 <= float(text) <= 1

    page.locator("#runs-table th[data-key=alpha]").click()  # numbers sort high to low first
    alphas = [float(t) for t in page.locator("#runs-table td[data-col=alpha]").all_inner_texts()]
    assert alphas == sorted(alphas, reverse=True) and set(alphas) == set(ALPHAS)
    page.locator("#runs-table th[data-key=alpha]").click()
    alphas = [float(t) for t in page.locator("#runs-table td[data-col=alpha]").all_inner_texts()]
    assert alphas == sorted(alphas)

    page.locator("#filter-status").select_option("failed")
    expect(page.get_by_text("No runs match")).to_be_visible()
    assert "status=failed" in page.url and f"sweep={sweep['id']}" in page.url


def test_a_finished_run_shows_its_curves_confusion_matrix_metrics_and_spec(
        dashboard: Dashboard, sweep: dict[str, Any], mx: MixlabClient) -> None:
    run_id = sweep["run_ids"][0]
    run = mx.get_run(run_id)
    page = dashboard.open("/ui")
    page.locator(f"#runs-table tr[data-run-id='{run_id}'] a").click()
    page.wait_for_url(f"**/ui/runs/{run_id}")
    expect(page.locator("#run-status .badge")).to_have_text("succeeded")
    expect(page.locator("#chart-confusion .heatmaplayer")).to_have_count(1)
    for chart in ("loss", "score", "lr"):
        expect(page.locator(f"#chart-{chart} .scatterlayer .trace").first).to_be_visible()
    expect(page.locator("[data-metric=test_acc]")).to_contain_text(f"{run['metrics']['test_acc']:.4f}")
    expect(page.locator("#run-spec")).to_contain_text('"method": "mixup"')
    expect(page.locator("#run-log")).to_contain_text("── attempt 1 ──")
    expect(page.locator("#run-log")).to_contain_text("reports: succeeded")
    last_epoch = f"epoch {run['progress']['epochs']}/{run['progress']['epochs']}"
    expect(page.locator("#run-log")).to_contain_text(last_epoch)
    expect(page.locator("#cancel-run")).to_have_count(0)
    curve = mx.metric_columns(run_id, key="train_loss")["train_loss"]
    assert dashboard.points("chart-loss") >= len(curve["step"]) > 0


def test_a_training_runs_curves_grow_live_and_cancel_stops_it(
        dashboard: Dashboard, digits: dict[str, Any], mx: MixlabClient) -> None:
    # long enough that it is still training when cancelled (the test ends it)
    created = mx.create_experiment({"name": "ui-live", "dataset_id": digits["id"], "model": MODEL,
                                    "training": {**SHORT, "epochs": 1000}})
    run_id = created["run_ids"][0]
    try:
        page = dashboard.open(f"/ui/runs/{run_id}")
        page.wait_for_function("() => (document.getElementById('chart-loss')?.data || [])"
                               ".some(t => t.x.length >= 2)", timeout=120_000)
        seen = dashboard.points("chart-loss")
        # new epochs arrive over the event stream, with no reload
        page.wait_for_function(
            "(seen) => (document.getElementById('chart-loss')?.data || [])"
            ".reduce((n, t) => n + t.x.length, 0) > seen", arg=seen, timeout=120_000)
        expect(page.locator("#run-status .badge")).to_have_text("running")
        page.locator("#cancel-run").click()
        expect(page.locator("#run-status .badge")).to_have_text("cancelled", timeout=60_000)
        # the log followed the run: its epochs, then how it ended
        expect(page.locator("#run-log")).to_contain_text("epoch 1/1000")
        expect(page.locator("#run-log")).to_contain_text("reports: cancelled", timeout=30_000)
    finally:
        mx.cancel_run(run_id)
    assert mx.get_run(run_id)["status"] == "cancelled"


def test_comparing_runs_overlays_their_curves_and_lists_what_differs(
        dashboard: Dashboard, sweep: dict[str, Any], mx: MixlabClient) -> None:
    page = dashboard.open(f"/ui?sweep={sweep['id']}")
    by_alpha = {run["point"]["augmentation.alpha"]: run["id"] for run in sweep["runs"]
                if run["point"]["training.seed"] == 0}
    for run_id in by_alpha.values():
        page.locator(f"#runs-table tr[data-run-id='{run_id}'] input[type=checkbox]").check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_url("**/ui/compare?ids=*")
    expect(page.locator("#compare-train_loss .scatterlayer .trace")).to_have_count(2)
    differs = page.locator("#compare-differs tbody tr", has_text="augmentation.alpha")
    expect(differs).to_have_count(1)
    # columns follow the order of the ids in the address
    cells = differs.locator("td").all_inner_texts()[1:]
    ids = page.url.split("ids=")[1].split("&")[0].replace("%2C", ",").split(",")
    alpha_of = {v: k for k, v in by_alpha.items()}
    assert [float(c) for c in cells] == [alpha_of[i] for i in ids]
    expect(page.locator("#compare-metrics tbody tr", has_text="test_acc")).to_have_count(1)


def test_a_sweep_page_shows_the_summary_and_the_metric_against_alpha_with_error_bars(
        dashboard: Dashboard, sweep: dict[str, Any], mx: MixlabClient) -> None:
    summary = mx.sweep_summary(sweep["id"])
    page = dashboard.open("/ui/sweeps")
    page.locator(f"#sweeps-table tr[data-sweep-id='{sweep['id']}'] a").click()
    page.wait_for_url(f"**/ui/sweeps/{sweep['id']}")
    expect(page.locator("#sweep-done")).to_be_visible()
    rows = page.locator("#summary-table tbody tr")
    expect(rows).to_have_count(len(ALPHAS))
    for row, expected in zip(rows.all(), summary["rows"], strict=True):
        cells = row.locator("td").all_inner_texts()
        assert float(cells[0]) == expected["config"]["augmentation.alpha"]
        assert cells[1] == "2/2" and float(cells[2]) == pytest.approx(expected["mean"], abs=1e-4)
    chart = page.locator("#sweep-chart")
    expect(chart.locator(".scatterlayer .trace")).to_have_count(1)
    trace = page.evaluate("() => document.getElementById('sweep-chart').data[0]")
    assert sorted(trace["x"]) == ALPHAS and len(trace["error_y"]["array"]) == len(ALPHAS)
    expect(chart.locator(".errorbar").first).to_be_attached()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sweep-page.png"), full_page=True)


def test_the_preview_explorer_shows_every_modality_and_follows_the_controls(
        dashboard: Dashboard, multimodal: dict[str, Any]) -> None:
    page = dashboard.open(f"/ui/previews?dataset={multimodal['id']}&n=4")
    cards = page.locator("#preview-samples .card")
    expect(cards).to_have_count(4)
    kinds = {m["name"] for m in multimodal["modalities"]}
    first = cards.first
    shown = first.locator(".modality").evaluate_all("ms => ms.map(m => m.dataset.modality)")
    assert set(shown) == kinds
    page.wait_for_function("() => [...document.querySelectorAll('#preview-samples img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    expect(first.locator(".tok").first).to_be_visible()  # the text's tokens, by source
    lam_before = first.locator("b").inner_text()

    page.locator("#preview-method").select_option("cross_modal")
    expect(page.locator("#preview-summary")).to_contain_text("image: ")
    page.locator("#preview-seed").fill("7")
    expect(first.locator("b")).not_to_have_text(lam_before)
    assert "seed=7" in page.url and "method=cross_modal" in page.url
    page.wait_for_function("() => [...document.querySelectorAll('#preview-samples img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")

    dashboard.expect_problem("status of 422")
    page.locator("#preview-alpha").fill("0")  # α must be > 0: the API's message shows
    expect(page.locator("#preview-summary .notice.error")).to_contain_text("alpha")


def test_an_autoencoder_run_shows_its_latent_reconstructions_and_generation(
        dashboard: Dashboard, multimodal: dict[str, Any], mx: MixlabClient) -> None:
    created = mx.create_experiment({
        "name": "ui-vae", "dataset_id": multimodal["id"],
        "model": {"kind": "multimodal_vae", "dim": 8, "width": 4, "depth": 1, "latent_dim": 4},
        "augmentation": {"method": "latent_mixup", "alpha": 1.0},
        "training": {**SHORT, "epochs": 2, "batch_size": 32}})
    run = mx.wait_for_run(created["run_ids"][0], timeout=300)
    assert run["status"] == "succeeded", run["error"]
    page = dashboard.open(f"/ui/runs/{run['id']}")
    expect(page.locator("#run-status .badge")).to_have_text("succeeded")
    pictures = page.locator("#run-representation img")
    expect(pictures).to_have_count(3)
    page.wait_for_function("() => [...document.querySelectorAll('#run-representation img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    expect(page.locator("#chart-confusion .heatmaplayer")).to_have_count(1)  # its classifier
    expect(page.locator("[data-metric=test_elbo]")).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "autoencoder-run.png"), full_page=True)


def test_a_multitask_run_shows_a_confusion_matrix_per_task(
        dashboard: Dashboard, mx: MixlabClient) -> None:
    created = mx.create_builtin_dataset("synthetic", name="ui-two-tasks", num_samples=200,
                                        tasks=2)
    dataset = mx.wait_for_dataset(created["id"], timeout=180)
    run_id = mx.create_experiment({
        "name": "ui-multitask", "dataset_id": dataset["id"], "task": "multitask",
        "model": {"kind": "multimodal", "dim": 8, "width": 4, "depth": 1},
        "training": {**SHORT, "epochs": 1, "batch_size": 32}})["run_ids"][0]
    run = mx.wait_for_run(run_id, timeout=300)
    assert run["status"] == "succeeded", run["error"]
    page = dashboard.open(f"/ui/runs/{run_id}")
    for task in ("class", "group1"):
        chart = page.locator(f"#chart-confusion-{task}")
        expect(chart.locator(".heatmaplayer")).to_have_count(1)
        expect(chart).to_contain_text(f"task {task}")
    expect(page.locator("#run-representation")).to_have_count(0)  # no latent to show


def test_the_datasets_page_lists_what_each_dataset_holds(
        dashboard: Dashboard, digits: dict[str, Any]) -> None:
    page = dashboard.open("/ui/datasets")
    row = page.locator(f"#datasets-table tr[data-dataset-id='{digits['id']}']")
    expect(row).to_contain_text("ready")
    expect(row).to_contain_text("1797")
    expect(row).to_contain_text("image")
    row.get_by_role("link", name="preview mixing").click()
    page.wait_for_url(f"**/ui/previews?dataset={digits['id']}*")
    expect(page.locator("#preview-samples .card").first).to_be_visible()


@pytest.fixture
def open_stack(tmp_path_factory: pytest.TempPathFactory, stack: Any) -> Iterator[str]:
    """A second API process on the same database with authentication off."""
    port = free_port()
    log = TMP / "api-no-auth.log"
    env = {**os.environ, "MIXLAB_AUTH": "false"}
    env.pop("MIXLAB_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.api.main:app", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base, proc, log)
        yield base
    finally:
        stop(proc)


def test_without_authentication_no_key_is_asked_and_pages_load(
        browser: Browser, open_stack: str) -> None:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{open_stack}/ui/datasets")
    expect(page.locator("h1")).to_have_text("Datasets")
    expect(page.locator("#datasets-table, main p.muted").first).to_be_visible()
    expect(page.locator("#key-form")).to_be_hidden()
    page.goto(f"{open_stack}/ui/sweeps")
    expect(page.locator("h1")).to_have_text("Sweeps")
    context.close()
    assert not errors


def test_api_docs_load_without_the_internet(dashboard: Dashboard) -> None:
    page = dashboard.open("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("mixlab")
    # ReDoc's bundle always asks for Redocly's logo from their CDN; the page's policy
    # refuses it in the browser, so no request leaves (the route check sees none)
    dashboard.expect_problem("cdn.redoc.ly", "Content Security Policy")
    page = dashboard.open("/redoc")
    expect(page.locator("h1", has_text="mixlab")).to_be_visible()
