// Compare 2-20 runs: their curves overlaid, final metrics side by side, and the spec
// fields that differ between them.
import { api, query } from "../api.js";
import { curves, purge } from "../charts.js";
import { badge, h, link, notice, num, shortId } from "../dom.js";

const KEYS = ["train_loss", "val_loss", "val_acc", "lr"];

export async function comparePage(view, { params, signal, navigate }) {
  const ids = (params.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const keys = (params.get("keys") || KEYS.join(",")).split(",").filter(Boolean);
  const idsInput = h("input", { id: "compare-ids", size: 80, value: ids.join(","),
                                placeholder: "run ids, comma-separated" });
  const keysInput = h("input", { id: "compare-keys", size: 40, value: keys.join(",") });
  view.append(h("h1", {}, "Compare runs"), h("form", {
    class: "toolbar",
    onsubmit: (e) => {
      e.preventDefault();
      navigate(`/ui/compare${query({ ids: idsInput.value.replace(/\s+/g, ""),
                                     keys: keysInput.value.replace(/\s+/g, "") })}`);
    } },
  h("label", {}, "runs", idsInput), h("label", {}, "metrics", keysInput),
  h("button", { type: "submit" }, "Compare")));
  if (ids.length < 2) {
    view.append(notice("Pick 2-20 runs: tick them in the runs table, or paste their ids."));
    return;
  }
  const result = await api(`/v1/runs/compare${query({ ids: ids.join(","), keys: keys.join(",") })}`,
                           { signal });
  const name = Object.fromEntries(result.runs.map((r) => [r.id, `${r.name} · ${shortId(r.id)}`]));

  const charts = h("div", { class: "charts" });
  view.append(h("h2", {}, "Curves"), charts);
  for (const [key, curve] of Object.entries(result.histories)) {
    const series = {};
    for (const [runId, values] of Object.entries(curve.runs)) {
      const step = [];
      const value = [];
      values.forEach((v, i) => { if (v !== null) { step.push(curve.steps[i]); value.push(v); } });
      if (step.length) series[name[runId]] = { step, value };
    }
    if (!Object.keys(series).length) continue;
    const el = h("div", { class: "chart", id: `compare-${key}` });
    charts.append(el);
    curves(el, key, series, { logY: key === "lr" });
    signal.addEventListener("abort", () => purge(el));
  }
  if (!charts.childElementCount) charts.append(h("p", { class: "muted" }, "No points for these metrics yet."));

  const runCols = result.runs.map((r) => h("th", {}, link(`/ui/runs/${r.id}`, name[r.id]), " ", badge(r.status)));
  const differs = Object.entries(result.differs);
  view.append(h("h2", {}, "What differs"), differs.length
    ? h("table", { id: "compare-differs" },
      h("thead", {}, h("tr", {}, h("th", {}, "field"), runCols.map((c) => c.cloneNode(true)))),
      h("tbody", {}, differs.map(([field, byRun]) => h("tr", {}, h("td", {}, field),
        result.runs.map((r) => h("td", {}, JSON.stringify(byRun[r.id] ?? null)))))))
    : h("p", { class: "muted" }, "Their specs are the same."));

  const metricNames = [...new Set(result.runs.flatMap((r) => Object.keys(r.metrics)))]
    .filter((k) => k.startsWith("test_")).sort();
  view.append(h("h2", {}, "Final metrics"), h("table", { id: "compare-metrics" },
    h("thead", {}, h("tr", {}, h("th", {}, "metric"), runCols)),
    h("tbody", {}, metricNames.map((k) => h("tr", {}, h("td", {}, k),
      result.runs.map((r) => h("td", { class: "num" }, num(r.metrics[k], 4))))))));
}
