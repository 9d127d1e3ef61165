// The runs table: filter by status, experiment and sweep; sort by any column; pick
// runs to compare. Refreshes while any listed run is queued or running.
import { api, query } from "../api.js";
import { badge, bar, h, link, num, pause, replace, shortId, when } from "../dom.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled"];
const ACTIVE = new Set(["queued", "running"]);

const COLUMNS = [
  { key: "name", label: "name", value: (r) => r.name,
    cell: (r) => link(`/ui/runs/${r.id}`, `${r.name} · ${shortId(r.id)}`) },
  { key: "method", label: "method", value: (r) => r.method, cell: (r) => r.method },
  { key: "alpha", label: "α", num: true, value: (r) => r.alpha, cell: (r) => num(r.alpha) },
  { key: "status", label: "status", value: (r) => r.status, cell: (r) => badge(r.status) },
  { key: "progress", label: "progress", value: (r) => progress(r),
    cell: (r) => bar(progress(r), `${r.progress.epoch}/${r.progress.epochs}`) },
  { key: "test_acc", label: "test acc", num: true, value: (r) => r.metrics.test_acc,
    cell: (r) => num(r.metrics.test_acc) },
  { key: "test_ece", label: "ECE", num: true, value: (r) => r.metrics.test_ece,
    cell: (r) => num(r.metrics.test_ece) },
  { key: "created_at", label: "created", value: (r) => r.created_at, cell: (r) => when(r.created_at) },
];

function progress(run) {
  if (run.status === "succeeded") return 1;
  const p = run.progress;
  return p.total_steps ? p.step / p.total_steps : p.epochs ? p.epoch / p.epochs : 0;
}

function compareValues(a, b) {
  const missingA = a === undefined || a === null;
  const missingB = b === undefined || b === null;
  if (missingA || missingB) return missingA === missingB ? 0 : missingA ? 1 : -1;
  return typeof a === "number" ? a - b : String(a).localeCompare(String(b));
}

export async function runsPage(view, { params, signal, navigate }) {
  const filters = { status: params.get("status") || "", sweep_id: params.get("sweep") || "",
                    experiment_id: params.get("experiment") || "" };
  const sort = { key: params.get("sort") || "created_at", desc: params.get("order") !== "asc" };
  const selected = new Set();
  const sweeps = await api("/v1/sweeps?limit=200", { signal });

  const setFilter = (name) => (event) => {
    const next = new URLSearchParams(location.search);
    const param = { status: "status", sweep_id: "sweep", experiment_id: "experiment" }[name];
    if (event.target.value) next.set(param, event.target.value); else next.delete(param);
    navigate(`/ui${next.toString() ? `?${next}` : ""}`, { replaceState: true });
  };
  const compareButton = h("button", {
    disabled: true, onclick: () => navigate(`/ui/compare?ids=${[...selected].join(",")}`),
  }, "Compare selected");
  const count = h("span", { class: "muted" });
  view.append(
    h("h1", {}, "Runs"),
    h("div", { class: "toolbar" },
      h("label", {}, "status", h("select", { id: "filter-status", onchange: setFilter("status") },
        STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s || "any")))),
      h("label", {}, "sweep", h("select", { id: "filter-sweep", onchange: setFilter("sweep_id") },
        h("option", { value: "" }, "any"),
        sweeps.items.map((s) => h("option", { value: s.id, selected: s.id === filters.sweep_id },
          `${s.name} · ${shortId(s.id)}`)))),
      h("label", {}, "experiment id", h("input", {
        id: "filter-experiment", value: filters.experiment_id, placeholder: "any", size: 36,
        onchange: setFilter("experiment_id") })),
      compareButton, count));
  const holder = h("div");
  view.append(holder);

  let runs = [];
  const draw = () => {
    const column = COLUMNS.find((c) => c.key === sort.key) || COLUMNS.at(-1);
    const rows = [...runs].sort((a, b) => compareValues(column.value(a), column.value(b))
                                          * (sort.desc ? -1 : 1));
    const head = h("tr", {}, h("th", {}, ""), COLUMNS.map((c) => h("th", {
      class: `sortable ${c.num ? "num" : ""} ${c.key === sort.key ? (sort.desc ? "sorted-desc" : "sorted-asc") : ""}`,
      "data-key": c.key,
      onclick: () => { sort.desc = sort.key === c.key ? !sort.desc : c.num; sort.key = c.key; draw(); },
    }, c.label)));
    const body = rows.map((r) => h("tr", { "data-run-id": r.id },
      h("td", {}, h("input", {
        type: "checkbox", checked: selected.has(r.id), "aria-label": `select ${r.name}`,
        onchange: (e) => {
          if (e.target.checked) selected.add(r.id); else selected.delete(r.id);
          compareButton.disabled = selected.size < 2 || selected.size > 20;
        } })),
      COLUMNS.map((c) => h("td", { class: c.num ? "num" : "", "data-col": c.key }, c.cell(r)))));
    replace(holder, rows.length
      ? h("table", { id: "runs-table" }, h("thead", {}, head), h("tbody", {}, body))
      : h("p", { class: "muted" }, "No runs match. POST /v1/experiments or /v1/sweeps to start some."));
  };

  while (!signal.aborted) {
    const page = await api(`/v1/runs${query({ ...filters, limit: 500 })}`, { signal });
    runs = page.items;
    replace(count, `${page.total} run${page.total === 1 ? "" : "s"}`
                   + (page.total > runs.length ? ` (newest ${runs.length} shown)` : ""));
    draw();
    if (!runs.some((r) => ACTIVE.has(r.status))) break;
    await pause(3000, signal);
  }
}
