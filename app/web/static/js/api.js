// The /v1 API from the browser: the API key (if the server asks for one) lives in
// this tab's sessionStorage and goes out as `Authorization: Bearer …`.
const KEY_NAME = "mixlab.key";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_NAME);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
  window.dispatchEvent(new Event("mixlab:key"));
}

export function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

// FastAPI's error shapes: {"detail": "text"} or {"detail": [{loc, msg}, …]}
async function errorText(response) {
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    }
    return String(body.detail ?? response.statusText);
  } catch {
    return response.statusText;
  }
}

export async function checked(response) {
  if (response.ok) return response;
  if (response.status === 401) window.dispatchEvent(new Event("mixlab:auth-needed"));
  throw new ApiError(response.status, await errorText(response));
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await checked(await fetch(path, init));
  return response.status === 204 ? null : response.json();
}

// An image behind the API key: <img src> cannot send headers, so fetch it and hand
// the page an object URL (the caller revokes it when the page goes).
export async function imageUrl(url, signal) {
  const response = await checked(await fetch(url, { headers: authHeaders(), signal }));
  return URL.createObjectURL(await response.blob());
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
