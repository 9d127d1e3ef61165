// Sweeps: the list, and one sweep's progress, summary table (one row per
// configuration over its seeds) and the metric against a swept parameter with error
// bars.
import { api, ApiError, query } from "../api.js";
import { errorBars, purge } from "../charts.js";
import { badge, bar, h, link, notice, num, pause, replace, shortId, when } from "../dom.js";

export async function sweepsPage(view, { signal }) {
  view.append(h("h1", {}, "Sweeps"));
  const holder = h("div");
  view.append(holder);
  while (!signal.aborted) {
    const page = await api("/v1/sweeps?limit=200", { signal });
    replace(holder, page.items.length ? h("table", { id: "sweeps-table" },
      h("thead", {}, h("tr", {}, ["name", "progress", "runs by status", "created"].map((c) => h("th", {}, c)))),
      h("tbody", {}, page.items.map((s) => h("tr", { "data-sweep-id": s.id },
        h("td", {}, link(`/ui/sweeps/${s.id}`, `${s.name} · ${shortId(s.id)}`)),
        h("td", {}, bar(s.progress, `${s.finished}/${s.total}`)),
        h("td", {}, Object.entries(s.counts).map(([k, v]) => h("span", {}, badge(k), ` ${v} `))),
        h("td", {}, when(s.created_at))))))
      : h("p", { class: "muted" }, "No sweeps yet: POST /v1/sweeps, or `mixlab sweep submit`."));
    if (page.items.every((s) => s.done)) break;
    await pause(3000, signal);
  }
}

function label(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

// The parameter to plot against: a numeric swept field (α first), else the first.
function defaultAxis(fields, rows) {
  const numeric = fields.filter((f) => rows.every((r) => typeof r.config[f] === "number"));
  return numeric.find((f) => f.endsWith("alpha")) || numeric[0] || fields[0];
}

function chartGroups(rows, axis, fields) {
  const others = fields.filter((f) => f !== axis);
  const groups = new Map();
  for (const row of rows) {
    if (row.mean === null) continue;
    const name = others.map((f) => `${f.split(".").pop()}=${label(row.config[f])}`).join(", ") || "mean";
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push(row);
  }
  return [...groups].map(([name, members]) => {
    members.sort((a, b) => (a.config[axis] > b.config[axis] ? 1 : -1));
    const x = members.map((r) => r.config[axis]);
    return { name, x: x.map((v) => (typeof v === "number" ? v : label(v))),
             mean: members.map((r) => r.mean), std: members.map((r) => r.std),
             n: members.map((r) => r.n) };
  });
}

export async function sweepPage(view, { args: [sweepId], params, signal, navigate }) {
  const metric = params.get("metric") || "test_acc";
  const title = h("h1");
  const status = h("div", { class: "toolbar", id: "sweep-status" });
  const controls = h("div", { class: "toolbar" });
  const chartEl = h("div", { class: "chart", id: "sweep-chart" });
  const summaryHolder = h("div", { id: "sweep-summary" });
  view.append(title, status, controls, chartEl, h("h2", {}, `Summary by configuration (${metric})`),
    summaryHolder);
  signal.addEventListener("abort", () => purge(chartEl));
  let axis = params.get("x");

  while (!signal.aborted) {
    const sweep = await api(`/v1/sweeps/${sweepId}`, { signal });
    let summary;
    try {
      summary = await api(`/v1/sweeps/${sweepId}/summary${query({ metric })}`, { signal });
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 422) throw error;
      replace(summaryHolder, notice(error.message, "error"));
      summary = { rows: [], order: "desc" };
    }
    replace(title, `${sweep.name} `, h("span", { class: "muted" }, shortId(sweep.id)));
    replace(status, bar(sweep.progress, `${sweep.finished}/${sweep.total} runs ended`),
      Object.entries(sweep.counts).map(([k, v]) => h("span", {}, badge(k), ` ${v}`)),
      link(`/ui${query({ sweep: sweep.id })}`, "its runs"),
      sweep.done ? h("span", { class: "badge succeeded", id: "sweep-done" }, "done")
        : h("button", { class: "danger", onclick: async (e) => {
          e.target.disabled = true;
          try {
            await api(`/v1/sweeps/${sweepId}/cancel`, { method: "POST", signal });
          } catch (error) {
            status.append(notice(`Cancel failed: ${error.message}`, "error"));
          }
        } }, "Cancel sweep"));

    const rows = summary.rows;
    const fields = [...new Set(rows.flatMap((r) => Object.keys(r.config)))];
    const metricNames = [...new Set(sweep.runs.flatMap((r) => Object.keys(r.metrics)))].sort();
    if (!axis || !fields.includes(axis)) axis = defaultAxis(fields, rows);
    replace(controls,
      h("label", {}, "metric", h("select", {
        id: "sweep-metric",
        onchange: (e) => navigate(`/ui/sweeps/${sweepId}${query({ metric: e.target.value, x: axis })}`,
                                  { replaceState: true }) },
      [...new Set([metric, ...metricNames])].map((m) => h("option", { value: m, selected: m === metric }, m)))),
      fields.length ? h("label", {}, "against", h("select", {
        id: "sweep-axis",
        onchange: (e) => navigate(`/ui/sweeps/${sweepId}${query({ metric, x: e.target.value })}`,
                                  { replaceState: true }) },
      fields.map((f) => h("option", { value: f, selected: f === axis }, f)))) : "",
      rows.some((r) => r.best_run_id) ? link(`/ui/compare${query({
        ids: rows.filter((r) => r.best_run_id).slice(0, 20).map((r) => r.best_run_id).join(",") })}`,
      "compare the best run of each configuration") : "");

    const groups = axis ? chartGroups(rows, axis, fields) : [];
    chartEl.hidden = groups.length === 0;
    if (groups.length) {
      const numericAxis = rows.every((r) => typeof r.config[axis] === "number");
      const values = rows.map((r) => r.config[axis]).filter((v) => typeof v === "number" && v > 0);
      errorBars(chartEl, `${metric}: mean ± std over seeds`, groups, {
        xTitle: axis, yTitle: metric, categorical: !numericAxis,
        ticks: numericAxis ? [...new Set(rows.map((r) => r.config[axis]))].sort((a, b) => a - b) : null,
        logX: numericAxis && values.length === rows.length
              && Math.max(...values) / Math.min(...values) >= 20 });
    }
    if (rows.length) {
      replace(summaryHolder, h("p", { class: "muted" },
        `Sorted by mean ${metric} (${summary.order === "asc" ? "lower" : "higher"} is better); `
        + "std is over the configuration's seeds."),
      h("table", { id: "summary-table" },
        h("thead", {}, h("tr", {}, fields.map((f) => h("th", {}, f)),
          ["n", `mean ${metric}`, "± std", "min", "max", "best run"].map((c) => h("th", { class: "num" }, c)))),
        h("tbody", {}, rows.map((r, i) => h("tr", { class: i === 0 && r.mean !== null ? "best" : "" },
          fields.map((f) => h("td", {}, label(r.config[f]))),
          h("td", { class: "num" }, `${r.n}/${r.runs}`), h("td", { class: "num" }, num(r.mean, 4)),
          h("td", { class: "num" }, num(r.std, 4)), h("td", { class: "num" }, num(r.min, 4)),
          h("td", { class: "num" }, num(r.max, 4)),
          h("td", { class: "num" }, r.best_run_id ? link(`/ui/runs/${r.best_run_id}`, shortId(r.best_run_id)) : "–"))))));
    }
    if (sweep.done) break;
    await pause(3000, signal);
  }
}
