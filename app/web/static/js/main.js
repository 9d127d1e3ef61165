// The dashboard's router: one shell, a page per path; a page gets an AbortSignal that
// fires when the user leaves it (its streams, polls and images stop there).
import { apiKey, setApiKey } from "./api.js";
import { h, notice, replace } from "./dom.js";
import { comparePage } from "./pages/compare.js";
import { datasetsPage } from "./pages/datasets.js";
import { previewsPage } from "./pages/previews.js";
import { runPage } from "./pages/run.js";
import { runsPage } from "./pages/runs.js";
import { sweepPage, sweepsPage } from "./pages/sweeps.js";

const ROUTES = [
  [/^\/ui\/?$/, "runs", runsPage],
  [/^\/ui\/runs\/([0-9a-f-]{36})\/?$/, "runs", runPage],
  [/^\/ui\/compare\/?$/, "compare", comparePage],
  [/^\/ui\/sweeps\/?$/, "sweeps", sweepsPage],
  [/^\/ui\/sweeps\/([0-9a-f-]{36})\/?$/, "sweeps", sweepPage],
  [/^\/ui\/previews\/?$/, "previews", previewsPage],
  [/^\/ui\/datasets\/?$/, "datasets", datasetsPage],
];

const view = document.getElementById("view");
let leave = null;

async function render() {
  if (leave) leave.abort();
  leave = new AbortController();
  const signal = leave.signal;
  const path = location.pathname;
  const route = ROUTES.find(([pattern]) => pattern.test(path));
  for (const a of document.querySelectorAll("nav a[data-page]")) {
    a.classList.toggle("active", route !== undefined && a.dataset.page === route[1]);
  }
  replace(view);
  if (!route) {
    view.append(h("h1", {}, "Not found"), notice(`No page at ${path}.`, "error"));
    return;
  }
  const [pattern, , page] = route;
  const args = path.match(pattern).slice(1);
  try {
    await page(view, { args, params: new URLSearchParams(location.search), signal, navigate });
  } catch (error) {
    if (signal.aborted || error.name === "AbortError") return;
    view.append(notice(error.status === 401
      ? "This server needs an API key: enter it above."
      : `Could not load the page: ${error.message}`, "error"));
  }
}

// quiet: only record the page's state in the address (the page redraws itself)
export function navigate(url, { replaceState = false, quiet = false } = {}) {
  if (replaceState) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  if (!quiet) render();
}

// in-app links change the page without reloading the shell
document.addEventListener("click", (event) => {
  const a = event.target.closest("a[data-nav]");
  if (!a || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", render);

// the key form: shown when a request is refused for want of a key
const keyForm = document.getElementById("key-form");
const keyStatus = document.getElementById("key-status");
function showKeyState() {
  replace(keyStatus);
  if (apiKey()) {
    keyStatus.append("API key set · ",
      h("a", { href: "#", onclick: (e) => { e.preventDefault(); setApiKey(null); } }, "forget"));
  }
}
window.addEventListener("mixlab:auth-needed", () => {
  keyForm.hidden = false;
  document.getElementById("key-input").focus();
});
window.addEventListener("mixlab:key", () => { showKeyState(); render(); });
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  const key = input.value.trim();
  if (!key) return;
  input.value = "";
  keyForm.hidden = true;
  setApiKey(key);
});

showKeyState();
render();
