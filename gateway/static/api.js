// The REST side: the session kept in sessionStorage, and one fetch wrapper that turns every
// failure (network, timeout, an error body) into an ApiError with a status and a stable code.

import { finite, text } from "./format.js";

const SESSION_KEY = "tripwire.session";
const TIMEOUT_MS = 10_000;

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status, 0 when the server could not be reached.
   * @param {string} code the server's stable error code (or one made up from the status).
   * @param {string} message human-readable, from the server when it sent one.
   * @param {object} details the error's details object, if any.
   */
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** The endpoint is not there (not deployed yet) rather than refusing this request. */
  get missing() {
    return this.status === 404 || this.status === 405 || this.status === 501;
  }
}

// Session storage, not local storage: the token dies with the tab, and another tab must log in
// on its own. The token is never put in a URL that the page navigates to.
export function loadSession() {
  let raw;
  try {
    raw = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
  } catch {
    raw = null;
  }
  if (!raw || typeof raw !== "object") return null;
  const token = text(raw.token, 4096);
  const expiresAtMs = finite(raw.expiresAtMs);
  const username = text(raw.username, 64);
  if (!token || expiresAtMs === null || expiresAtMs <= Date.now()) {
    clearSession();
    return null;
  }
  return { token, expiresAtMs, username, role: text(raw.role, 16) };
}

export function saveSession(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

export function clearSession() {
  sessionStorage.removeItem(SESSION_KEY);
}

const STATUS_CODES = {
  400: "malformed",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  405: "method_not_allowed",
  409: "conflict",
  422: "refused",
  429: "rate_limited",
  503: "unavailable",
};

/**
 * Call the API. Resolves with the decoded JSON body ({} when there is none); rejects with an
 * ApiError. `onUnauthorized` (set by the app) hears every 401 of an authenticated call, so an
 * expired token anywhere sends the user back to the login form.
 */
export async function request(method, path, { token = null, body = undefined } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch (error) {
    const timedOut = error?.name === "AbortError";
    throw new ApiError(
      0,
      timedOut ? "timeout" : "network",
      timedOut ? "the server did not answer in time" : "the server cannot be reached",
    );
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  if ((response.headers.get("Content-Type") ?? "").includes("json")) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = new ApiError(
      response.status,
      text(data?.code, 64) || STATUS_CODES[response.status] || `http_${response.status}`,
      text(data?.message, 300) || response.statusText || `HTTP ${response.status}`,
      data?.details && typeof data.details === "object" ? data.details : {},
    );
    if (response.status === 401 && token) request.onUnauthorized?.(error);
    throw error;
  }
  return data && typeof data === "object" ? data : {};
}

/** Log in: resolves with the session to keep. */
export async function login(username, password) {
  const data = await request("POST", "/api/v1/auth/login", { body: { username, password } });
  const token = text(data.access_token, 4096);
  const expiresAt = finite(data.expires_at);
  if (!token || expiresAt === null) {
    throw new ApiError(200, "malformed", "the server's login answer has no token");
  }
  return {
    token,
    expiresAtMs: expiresAt * 1000,
    username: text(data.user?.username, 64) || username,
    role: text(data.user?.role, 16),
  };
}
