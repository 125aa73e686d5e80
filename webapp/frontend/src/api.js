// Client for the Django REST API under /api/v1/ (session auth).
// Every POST/DELETE carries the CSRF token in the X-CSRFToken header: the current
// csrftoken cookie (Django rotates it at each login, in any tab), else the token from
// GET auth/csrf/; a csrf_failed answer is retried once with a freshly fetched token.
const API_ROOT = "/api/v1/";

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || code);
    this.name = "ApiError";
    this.status = status; // 0: the server could not be reached
    this.code = code;
    this.detail = detail;
  }
}

// Someone signed out elsewhere, the session expired or the token was revoked:
// whoever listens (the App) shows the sign-in form again.
const sessionListeners = new Set();
export function onSessionEnded(listener) {
  sessionListeners.add(listener);
  return () => sessionListeners.delete(listener);
}
const SESSION_ENDED = new Set(["not_authenticated", "authentication_failed"]);
const ASKS_WHO = new Set(["auth/me/", "auth/login/"]); // their 401/403 are answers, not news

function csrfCookie() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : null;
}

let fetchedToken = null;

async function freshCsrfToken() {
  fetchedToken = (await request("auth/csrf/")).csrfToken;
  return fetchedToken;
}

async function csrfToken() {
  return csrfCookie() ?? fetchedToken ?? (await freshCsrfToken());
}

async function send(path, method, headers, body) {
  try {
    return await fetch(API_ROOT + path, { method, headers, body, credentials: "same-origin" });
  } catch (err) {
    throw new ApiError(0, "network_error", err.message);
  }
}

async function request(path, { method = "GET", json, body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRFToken"] = await csrfToken();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response = await send(path, method, headers, body);
  let data = response.status === 204 ? null : await response.json().catch(() => null);
  if (method !== "GET" && response.status === 403 && data?.error === "csrf_failed") {
    const fresh = await freshCsrfToken(); // the one sent was from before a login elsewhere
    response = await send(path, method, { ...headers, "X-CSRFToken": fresh }, body);
    data = response.status === 204 ? null : await response.json().catch(() => null);
  }
  if (response.status === 204) return null;
  if (!response.ok || data === null) {
    const error = new ApiError(response.status, data?.error ?? `http_${response.status}`,
                               data?.detail ?? response.statusText);
    if ((response.status === 401 || SESSION_ENDED.has(error.code)) && !ASKS_WHO.has(path)) {
      sessionListeners.forEach((listener) => listener(error));
    }
    throw error;
  }
  return data;
}

export const getMe = () => request("auth/me/");
export const getModel = () => request("model/");
export const listClassifications = (page) => request(`classifications/?page=${page}`);

export async function login(username, password) {
  const user = await request("auth/login/", { method: "POST", json: { username, password } });
  fetchedToken = null; // Django rotates the token when the session changes
  return user;
}

export async function logout() {
  await request("auth/logout/", { method: "POST" });
  fetchedToken = null;
}

export function classify(file) {
  const body = new FormData();
  body.append("image", file);
  return request("classifications/", { method: "POST", body });
}

export const deleteClassification = (id) => request(`classifications/${id}/`, { method: "DELETE" });
