// One run: status and progress, live loss / score / learning-rate curves (server-sent
// events, polling the history if the stream fails), final metrics, the confusion
// matrix once evaluated (one per task of a multitask run), an autoencoder's latent
// and reconstructions, the spec, the error, the worker's log, and cancel.
import { api, ApiError, imageUrl } from "../api.js";
import { confusion, curves, purge } from "../charts.js";
import { badge, bar, h, link, notice, num, pause, replace, shortId, when } from "../dom.js";
import { followEvents } from "../events.js";
import { CHARTS, chartOf, isCurve, lastStep, merge } from "../metrics.js";

const ENDED = new Set(["succeeded", "failed", "cancelled"]);
const LATENT_KINDS = new Set(["multimodal_ae", "multimodal_vae"]);

// What an autoencoder run learned, as the API draws it (PNGs behind the key).
const PICTURES = [
  { id: "embeddings", path: "embeddings.png", caption: "Latent means of the test split, PCA, coloured by class" },
  { id: "reconstructions", path: "reconstructions", caption: "Input | reconstruction, per modality" },
  { id: "generate", path: "generate", caption: "One modality decoded from another alone" },
];

export async function runPage(view, { args: [runId], signal }) {
  let run = await api(`/v1/runs/${runId}`, { signal });
  const experiment = await api(`/v1/experiments/${run.experiment_id}`, { signal });

  const title = h("h1");
  const status = h("div", { class: "toolbar", id: "run-status" });
  const facts = h("div", { class: "facts", id: "run-metrics" });
  const errorBox = h("div");
  const charts = h("div", { class: "charts" });
  const chartEls = Object.fromEntries(CHARTS.map((c) => [c.id, h("div", {
    class: "chart", id: `chart-${c.id}`, hidden: true })]));
  charts.append(...Object.values(chartEls));
  const evaluation = h("div", { id: "evaluation" });
  const logBox = h("pre", { class: "log", id: "run-log" });
  view.append(title, status, errorBox, h("h2", {}, "Curves"), charts,
    h("h2", {}, "Final metrics"), facts, evaluation,
    h("h2", {}, "Spec"), h("pre", { id: "run-spec" }, JSON.stringify(experiment.spec, null, 2)),
    h("h2", {}, "Log"), logBox);
  signal.addEventListener("abort", () => Object.values(chartEls).forEach(purge));

  const cancel = async (button) => {
    button.disabled = true;
    try {
      run = await api(`/v1/runs/${runId}/cancel`, { method: "POST", signal });
      showRun();
    } catch (error) {
      errorBox.replaceChildren(notice(error instanceof ApiError && error.status === 403
        ? "Cancelling needs a key with the write scope." : `Cancel failed: ${error.message}`, "error"));
      button.disabled = false;
    }
  };

  function showRun() {
    replace(title, `${run.name} `, h("span", { class: "muted" }, shortId(run.id)));
    const p = run.progress;
    const fraction = run.status === "succeeded" ? 1 : p.total_steps ? p.step / p.total_steps : 0;
    replace(status, badge(run.status),
      bar(fraction, `epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.total_steps}`),
      p.samples_per_s ? h("span", { class: "muted" },
        `${Math.round(p.samples_per_s).toLocaleString()} samples/s`) : "",
      p.eta_s && !ENDED.has(run.status) ? h("span", { class: "muted" }, `ETA ${Math.round(p.eta_s)} s`) : "",
      h("span", { class: "muted" }, `${run.method} α=${num(run.alpha)} · attempt ${run.attempt}`
        + ` · created ${when(run.created_at)}`),
      run.sweep_id ? link(`/ui/sweeps/${run.sweep_id}`, "its sweep") : "",
      link(`/ui/previews?dataset=${experiment.dataset_id}&method=${run.method}&alpha=${run.alpha}`,
        "preview its mixing"),
      !ENDED.has(run.status) && !run.cancel_requested
        ? h("button", { class: "danger", id: "cancel-run", onclick: (e) => cancel(e.target) }, "Cancel")
        : run.cancel_requested && !ENDED.has(run.status) ? h("span", { class: "muted" }, "cancelling…") : "");
    replace(errorBox, run.error ? h("pre", { class: "error", id: "run-error" }, run.error) : "");
    const metricNames = Object.keys(run.metrics).sort();
    replace(facts, metricNames.length
      ? metricNames.map((k) => h("div", { class: "fact", "data-metric": k }, h("b", {}, k), num(run.metrics[k], 4)))
      : h("span", { class: "muted" }, "None yet."));
  }

  // the worker's lines, attempt after attempt, appended as text (never as HTML)
  const log = { attempt: null, after: 0, shown: null, epoch: -1, status: null };
  async function showLog() {
    log.epoch = run.progress.epoch;
    log.status = run.status;
    for (;;) {
      const q = log.attempt === null ? "" : `?attempt=${log.attempt}&after_line=${log.after}`;
      const page = await api(`/v1/runs/${runId}/logs${q}`, { signal });
      if (log.attempt === null) {
        if (!page.attempts.length) break;
        log.attempt = page.attempts[0];
        continue;
      }
      for (const line of page.lines) {
        if (log.shown !== log.attempt) {
          logBox.append(`── attempt ${log.attempt} ──\n`);
          log.shown = log.attempt;
        }
        logBox.append(`${line.at.slice(11, 19)} ${line.level.padEnd(7)} ${line.message}\n`);
      }
      log.after = page.next_after_line;
      if (page.more) continue;
      const later = page.attempts.filter((a) => a > log.attempt);
      if (!later.length) break;
      [log.attempt, log.after] = [later[0], 0];
    }
    if (log.shown === null) replace(logBox, h("span", { class: "muted" }, "Nothing logged yet."));
    else logBox.querySelector("span.muted")?.remove();
  }
  // one read at a time (chained), so no line is appended twice
  let logRead = Promise.resolve();
  const refreshLog = () => (logRead = logRead.then(showLog));
  // new lines come with each epoch and with the end: read them then, not per event
  const logIsBehind = () => run.progress.epoch !== log.epoch || run.status !== log.status;

  const held = {};
  function showCurves() {
    for (const chart of CHARTS) {
      const series = Object.fromEntries(Object.entries(held)
        .filter(([key, c]) => isCurve(key) && chartOf(key) === chart.id && c.step.length));
      const el = chartEls[chart.id];
      el.hidden = Object.keys(series).length === 0;
      if (!el.hidden) curves(el, chart.title, series, { logY: chart.logY });
    }
  }

  async function showEvaluation() {
    if (run.status !== "succeeded") return;
    try {
      const result = await api(`/v1/runs/${runId}/evaluation`, { signal });
      // a multitask run has a matrix per task; any other run one
      const matrices = result.tasks
        ? Object.entries(result.tasks).map(([task, r]) => [`chart-confusion-${task}`,
          `Confusion matrix of task ${task} (test)`, r])
        : result.confusion_matrix ? [["chart-confusion", undefined, result]] : [];
      const els = matrices.map(([id]) => h("div", { class: "chart", id }));
      if (els.length) replace(evaluation, h("h2", {}, "Evaluation"), h("div", { class: "charts" }, ...els));
      matrices.forEach(([, title, r], i) => confusion(els[i], r.confusion_matrix, r.class_names, title));
      signal.addEventListener("abort", () => els.forEach(purge));
    } catch (error) {
      if (error.status !== 404 && error.status !== 409) throw error;
    }
    if (LATENT_KINDS.has(experiment.spec.model?.kind)) await showRepresentation();
  }

  async function showRepresentation() {
    const urls = [];
    signal.addEventListener("abort", () => urls.forEach(URL.revokeObjectURL));
    const figures = PICTURES.map((p) => {
      const img = h("img", { id: `run-${p.id}`, alt: p.caption });
      return { p, img, figure: h("figure", {}, img, h("figcaption", { class: "muted" }, p.caption)) };
    });
    evaluation.append(h("h2", {}, "Representation"),
      h("div", { class: "pictures", id: "run-representation" }, ...figures.map((f) => f.figure)));
    await Promise.all(figures.map(async ({ p, img, figure }) => {
      try {
        const url = await imageUrl(`/v1/runs/${runId}/${p.path}`, signal);
        urls.push(url);
        img.src = url;
      } catch (error) {
        // e.g. generation from a model of one modality: say why, keep the others
        if (error.name !== "AbortError") figure.replaceChildren(notice(`${p.caption}: ${error.message}`, "error"));
      }
    }));
  }

  showRun();
  const history = await api(`/v1/runs/${runId}/metrics?max_points=2000`, { signal });
  merge(held, history.metrics);
  showCurves();
  await refreshLog();
  if (ENDED.has(run.status)) {
    await showEvaluation();
    return;
  }

  const onEvent = (event, data) => {
    if (event === "run") {
      run = data;
      showRun();
      if (logIsBehind()) refreshLog().catch(() => { logRead = Promise.resolve(); });
    }
    else if (event === "metrics") { merge(held, data.points); showCurves(); }
    else if (event === "end") return "stop";
    return undefined;
  };
  const streamed = await followEvents(
    `/v1/runs/${runId}/events?after_step=${Math.max(-1, lastStep(held) - 1)}`, onEvent, signal)
    .then(() => true, () => false);
  // the fallback: poll the run and the history's new points
  while (!streamed && !signal.aborted && !ENDED.has(run.status)) {
    await pause(2000, signal);
    run = await api(`/v1/runs/${runId}`, { signal });
    const fresh = await api(`/v1/runs/${runId}/metrics?after_step=${lastStep(held)}`, { signal });
    merge(held, fresh.metrics);
    showRun();
    showCurves();
    if (logIsBehind()) await refreshLog();
  }
  if (signal.aborted) return;
  run = await api(`/v1/runs/${runId}`, { signal });
  showRun();
  await refreshLog();
  await showEvaluation();
}
