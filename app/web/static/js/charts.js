// Charts through Plotly (window.Plotly, from the plotly package's bundle).
const CONFIG = { responsive: true, displaylogo: false };
const MARGIN = { l: 56, r: 16, t: 64, b: 48 };

function layout(title, extra = {}) {
  return { title: { text: title, font: { size: 14 }, x: 0.02, xanchor: "left" }, margin: MARGIN,
           hovermode: "x unified",
           legend: { orientation: "h", x: 1, xanchor: "right", y: 1.02, yanchor: "bottom" }, ...extra };
}

// Metric curves: {name: {step: [...], value: [...]}} → one line per name.
export function curves(el, title, series, { yTitle = "", logY = false } = {}) {
  const data = Object.entries(series).map(([name, s]) => ({
    name, x: s.step, y: s.value, type: "scatter", mode: s.step.length > 60 ? "lines" : "lines+markers",
  }));
  return Plotly.react(el, data, layout(title, {
    xaxis: { title: { text: "step" } },
    yaxis: { title: { text: yTitle }, type: logY ? "log" : "linear" },
  }), CONFIG);
}

// Counts of a confusion matrix; row = true class, column = predicted class.
export function confusion(el, matrix, classNames, title = "Confusion matrix (test)") {
  const labels = classNames.map((name) => String(name));
  return Plotly.react(el, [{
    type: "heatmap", z: matrix, x: labels, y: labels, colorscale: "Blues", reversescale: true,
    hovertemplate: "true %{y}<br>predicted %{x}<br>%{z}<extra></extra>",
  }], layout(title, {
    xaxis: { title: { text: "predicted" }, type: "category" },
    yaxis: { title: { text: "true" }, type: "category", autorange: "reversed" },
    hovermode: "closest",
  }), CONFIG);
}

// A metric against a swept parameter: one line per group, mean ± std over seeds.
export function errorBars(el, title, groups, { xTitle, yTitle, logX = false, categorical = false,
                                              ticks = null }) {
  const data = groups.map((g) => ({
    name: g.name, x: g.x, y: g.mean, type: "scatter", mode: "lines+markers",
    error_y: { type: "data", array: g.std, visible: true },
    customdata: g.n, hovertemplate: "%{x}: %{y:.4f} ± %{error_y.array:.4f} (n=%{customdata})",
  }));
  return Plotly.react(el, data, layout(title, {
    // ticks at the swept values only (a log axis would otherwise label every minor tick)
    xaxis: { title: { text: xTitle }, type: categorical ? "category" : logX ? "log" : "linear",
             ...(ticks ? { tickvals: ticks } : {}) },
    yaxis: { title: { text: yTitle } },
    hovermode: "closest",
  }), CONFIG);
}

export function purge(el) {
  if (el && window.Plotly) Plotly.purge(el);
}
