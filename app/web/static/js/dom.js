// Small DOM helpers: every text a user sent goes in as a text node, never as HTML.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function link(href, text, attrs = {}) {
  return h("a", { href, "data-nav": true, ...attrs }, text);
}

export function badge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

export function bar(fraction, label) {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  return h("span", { class: "bar-wrap" },
    h("span", { class: "bar", title: label || `${pct.toFixed(0)} %` },
      h("span", { style: `width:${pct.toFixed(1)}%` })),
    label ? ` ${label}` : "");
}

export function num(value, digits = 3) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
  return Math.abs(value) >= 1000 || Math.abs(value) < 1e-3 && value !== 0
    ? value.toExponential(2) : value.toFixed(digits);
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

export function shortId(id) {
  return String(id).slice(0, 8);
}

export function notice(text, kind = "") {
  return h("div", { class: `notice ${kind}` }, text);
}

export function table(columns, rows, { rowAttrs } = {}) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.label)))),
    h("tbody", {}, rows.map((row) => h("tr", rowAttrs ? rowAttrs(row) : {},
      columns.map((c) => h("td", { class: c.num ? "num" : "" }, c.cell(row)))))));
}

// Wait between two refreshes of a page, unless it has gone (signal aborted).
export function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
