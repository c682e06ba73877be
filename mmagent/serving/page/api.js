// Calls to the agent's HTTP API, with the API key kept in this tab (sessionStorage).
const KEY_STORE = "mmagent-api-key";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.field = body && body.field ? String(body.field) : null;
    this.problems = (body && body.problems) || [];
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORE);
}

// A header value must be visible ASCII: anything else cannot be a key the server accepts.
export function validKey(key) {
  return /^[\x21-\x7e]+$/.test(key);
}

export function saveKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORE);
}

// fetch() with the key header; a non-2xx answer becomes an ApiError carrying the API's
// {"error", "field"} body, a network failure an ApiError with status 0.
export async function call(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = storedKey();
  if (key) headers.set("X-API-Key", key);
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, { error: `cannot reach the server (${e.message})` });
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = { error: `HTTP ${response.status} ${response.statusText}` };
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}
