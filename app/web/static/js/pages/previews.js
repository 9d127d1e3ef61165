// The preview explorer: dataset, method, α, seed, n → the mixed samples of every
// modality with their λ and label mixtures, redrawn as the controls change.
import { api, imageUrl, query } from "../api.js";
import { h, notice, num, replace } from "../dom.js";

let methodNames = null;

// the method names from the API's own schema, so the list has one source
async function methods(signal) {
  if (!methodNames) {
    const schema = await (await fetch("/openapi.json", { signal })).json();
    const property = schema.components.schemas.PreviewRequest.properties.method;
    const ref = property.$ref || (property.allOf && property.allOf[0].$ref);
    methodNames = ref ? schema.components.schemas[ref.split("/").pop()].enum : property.enum;
  }
  return methodNames;
}

// Text: the mixed sequence, each token coloured by its source; for an op the model
// runs itself (embedding mixup) the two sources, as it gets them.
function tokens(modality) {
  if (modality.tokens) {
    return h("p", { class: "tokens" }, modality.tokens.map((t) => h("span", {
      class: `tok ${t.source}`, title: `from ${t.source.toUpperCase()}, position ${t.position}`,
    }, t.token)));
  }
  return h("div", { class: "tokens" },
    [["a", modality.tokens_a], ["b", modality.tokens_b]].map(([source, list]) => h("p", {},
      `${source.toUpperCase()}: `, (list || []).map((t) => h("span", { class: `tok ${source}` }, t)))),
    h("p", { class: "muted" }, "mixed as embeddings inside the model"));
}

function values(modality) {
  const v = modality.values;
  return h("table", {}, h("thead", {}, h("tr", {}, ["feature", "A", "B", "mixed"].map((c) => h("th", {}, c)))),
    h("tbody", {}, v.features.map((f, i) => h("tr", {}, h("td", {}, f),
      [v.a[i], v.b[i], v.mixed[i]].map((x) => h("td", { class: "num" }, num(x)))))));
}

export async function previewsPage(view, { params, signal, navigate }) {
  const page = await api("/v1/datasets?limit=200", { signal });
  const ready = page.items.filter((d) => d.status === "ready");
  view.append(h("h1", {}, "Preview explorer"));
  if (!ready.length) {
    view.append(notice("No dataset is ready yet: register one (POST /v1/datasets), e.g. the digits built-in."));
    return;
  }
  const names = await methods(signal);
  const state = {
    dataset: params.get("dataset") || ready[0].id, method: params.get("method") || "mixup",
    alpha: params.get("alpha") || "1", seed: params.get("seed") || "0",
    n: params.get("n") || "8", split: params.get("split") || "train",
  };
  const control = (name, el) => {
    el.id = `preview-${name}`;
    el.addEventListener(el.tagName === "SELECT" ? "change" : "input", () => {
      state[name] = el.value;
      schedule();
    });
    return h("label", {}, name === "alpha" ? "α" : name, el);
  };
  view.append(h("div", { class: "toolbar" },
    control("dataset", h("select", {}, ready.map((d) => h("option", { value: d.id, selected: d.id === state.dataset },
      `${d.name} (${d.modalities.map((m) => m.kind).join(" + ")})`)))),
    control("method", h("select", {}, names.map((m) => h("option", { value: m, selected: m === state.method }, m)))),
    control("alpha", h("input", { type: "number", min: "0.01", max: "100", step: "0.1", value: state.alpha })),
    control("seed", h("input", { type: "number", min: "0", step: "1", value: state.seed })),
    control("n", h("input", { type: "number", min: "1", max: "64", value: state.n })),
    control("split", h("select", {}, ["train", "val", "test"].map((s) => h("option", { value: s, selected: s === state.split }, s))))));
  const summary = h("div", { id: "preview-summary" });
  const cards = h("div", { class: "cards", id: "preview-samples" });
  view.append(summary, cards);

  let urls = [];
  let inFlight = null;
  let timer = null;
  signal.addEventListener("abort", () => { urls.forEach(URL.revokeObjectURL); inFlight?.abort(); });

  async function draw() {
    inFlight?.abort();
    inFlight = new AbortController();
    const local = inFlight.signal;
    navigate(`/ui/previews${query(state)}`, { replaceState: true, quiet: true });
    const body = { method: state.method, alpha: Number(state.alpha), seed: Number(state.seed),
                   n: Number(state.n), split: state.split };
    let preview;
    try {
      preview = await api(`/v1/datasets/${state.dataset}/preview`, { method: "POST", body, signal: local });
    } catch (error) {
      if (error.name !== "AbortError") replace(summary, notice(error.message, "error"));
      return;
    }
    const ops = Object.entries(preview.ops).map(([m, op]) => `${m}: ${op}`).join(", ");
    replace(summary, h("p", { class: "muted" }, `${preview.samples.length} samples · ops ${ops || "none"}`
      + (preview.deferred.length ? ` · mixed in the model: ${preview.deferred.join(", ")}` : "")
      + (preview.layer !== null && preview.layer !== undefined ? ` · hidden layer ${preview.layer}` : "")));
    const old = urls;
    urls = [];
    const images = [];
    replace(cards, preview.samples.map((s, i) => h("div", { class: "card", "data-sample": i },
      h("div", {}, h("b", {}, `λ = ${num(s.lam, 3)}`), ` · A: ${s.label_a} (#${s.index_a}) · B: ${s.label_b} (#${s.index_b})`),
      h("div", { class: "mixture" }, "label mixture: ", Object.entries(s.label_mixture)
        .sort((a, b) => b[1] - a[1]).map(([c, w]) => `${c} ${(100 * w).toFixed(0)} %`).join(" · ")),
      Object.entries(s.modalities).map(([name, m]) => h("div", { class: "modality", "data-modality": name },
        h("div", { class: "muted" }, `${name} (${m.kind}): ${m.op || "not mixed"}`),
        m.kind === "text" ? tokens(m) : m.kind === "tabular" && m.values ? values(m) : "",
        // text and tables read better as the HTML above than as their PNG
        m.kind === "text" || (m.kind === "tabular" && m.values) ? "" : (() => {
          const img = h("img", { alt: `${name} of sample ${i}: A | B | mixed` });
          images.push([img, m.image_url]);
          return img;
        })())))));
    old.forEach(URL.revokeObjectURL);
    await Promise.all(images.map(async ([img, url]) => {
      try {
        const objectUrl = await imageUrl(url, local);
        urls.push(objectUrl);
        img.src = objectUrl;
      } catch (error) {
        if (error.name !== "AbortError") img.alt = `could not load: ${error.message}`;
      }
    }));
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(draw, 250);
  }
  await draw();
}
