// Metric keys → which chart shows them, and merging new points into held curves.
export const CHARTS = [
  { id: "loss", title: "Loss", test: (k) => /loss|nll|brier/.test(k) },
  { id: "score", title: "Accuracy and scores", test: (k) => /acc|f1|map|recall|precision|auc/.test(k) },
  { id: "lr", title: "Learning rate", test: (k) => k === "lr", logY: true },
  { id: "other", title: "Other", test: () => true },
];

// test_* figures (and the calibration's temperature) are measured once, at the end:
// they are the run's final metrics, not curves
export function isCurve(key) {
  return !/^test_|^temperature|_time_s$/.test(key);
}

export function chartOf(key) {
  return CHARTS.find((c) => c.test(key)).id;
}

// A key's points as columns {step, epoch, value}, whichever shape the reply has.
export function columns(points) {
  if (!Array.isArray(points)) return points;
  return { step: points.map((p) => p.step), epoch: points.map((p) => p.epoch),
           value: points.map((p) => p.value) };
}

// Append the points of `fresh` with a later step than the key already holds.
export function merge(held, fresh) {
  for (const [key, raw] of Object.entries(fresh)) {
    const add = columns(raw);
    const curve = held[key] || (held[key] = { step: [], epoch: [], value: [] });
    const last = curve.step.length ? curve.step[curve.step.length - 1] : -Infinity;
    add.step.forEach((step, i) => {
      if (step > last) {
        curve.step.push(step);
        curve.epoch.push(add.epoch ? add.epoch[i] : null);
        curve.value.push(add.value[i]);
      }
    });
  }
  return held;
}

export function lastStep(held) {
  let top = -1;
  for (const curve of Object.values(held)) {
    if (curve.step.length) top = Math.max(top, curve.step[curve.step.length - 1]);
  }
  return top;
}
