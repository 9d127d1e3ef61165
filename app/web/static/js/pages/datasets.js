// Datasets: what each holds (modalities, classes, splits, noisy labels), how its
// preparation went, and a way into the preview explorer.
import { api } from "../api.js";
import { badge, bar, h, link, num, pause, replace, shortId, when } from "../dom.js";

function modalities(d) {
  return (d.modalities || []).map((m) => `${m.name}: ${m.kind} ${m.shape.join("×")}`).join(", ");
}

function classes(d) {
  if (!d.classes) return "–";
  const names = d.classes.map((c) => c.name);
  return `${names.length}: ${names.slice(0, 6).join(", ")}${names.length > 6 ? ", …" : ""}`;
}

export async function datasetsPage(view, { signal }) {
  view.append(h("h1", {}, "Datasets"));
  const holder = h("div");
  view.append(holder);
  while (!signal.aborted) {
    const page = await api("/v1/datasets?limit=200", { signal });
    replace(holder, page.items.length ? h("table", { id: "datasets-table" },
      h("thead", {}, h("tr", {}, ["name", "status", "samples", "modalities", "classes", "splits",
        "noisy train labels", "created", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, page.items.map((d) => h("tr", { "data-dataset-id": d.id },
        h("td", {}, `${d.name} `, h("span", { class: "muted" }, shortId(d.id))),
        h("td", {}, badge(d.status), d.status === "preparing" ? bar(d.progress, d.stage || "") : "",
          d.errors ? h("div", { class: "muted" }, d.errors.map((e) => `${e.field}: ${e.message}`).join("; ")) : ""),
        h("td", { class: "num" }, num(d.num_samples)),
        h("td", {}, modalities(d)),
        h("td", {}, classes(d)),
        h("td", {}, d.split_sizes ? Object.entries(d.split_sizes).map(([k, v]) => `${k} ${v}`).join(", ") : "–"),
        h("td", { class: "num" }, num(d.noisy_train_labels)),
        h("td", {}, when(d.created_at)),
        h("td", {}, d.status === "ready" ? link(`/ui/previews?dataset=${d.id}`, "preview mixing") : "")))))
      : h("p", { class: "muted" }, "No datasets yet: POST /v1/datasets with a built-in, an upload or a URI."));
    if (!page.items.some((d) => d.status === "preparing")) break;
    await pause(3000, signal);
  }
}
