// Client for the Django REST API under /api/v1/ (session auth).
// Every POST carries the CSRF token from GET auth/csrf/ in the X-CSRFToken header.
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

let csrfToken = null;

async function getCsrfToken() {
  if (!csrfToken) csrfToken = (await request("auth/csrf/")).csrfToken;
  return csrfToken;
}

async function request(path, { method = "GET", json, body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRFToken"] = await getCsrfToken();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(API_ROOT + path, { method, headers, body, credentials: "same-origin" });
  } catch (err) {
    throw new ApiError(0, "network_error", err.message);
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok || data === null) {
    throw new ApiError(response.status, data?.error ?? `http_${response.status}`,
                       data?.detail ?? response.statusText);
  }
  return data;
}

export const getMe = () => request("auth/me/");
export const getModel = () => request("model/");
export const listClassifications = (page) => request(`classifications/?page=${page}`);

export async function login(username, password) {
  const user = await request("auth/login/", { method: "POST", json: { username, password } });
  csrfToken = null; // Django rotates the token when the session changes
  return user;
}

export async function logout() {
  await request("auth/logout/", { method: "POST" });
  csrfToken = null;
}

export function classify(file) {
  const body = new FormData();
  body.append("image", file);
  return request("classifications/", { method: "POST", body });
}
