// The console's only way to the server: the same /v1 API, as the signed-in principal. The token is
// kept in this module's memory (never in a cookie or storage), so a request is authorised only by
// the Authorization header a script on this origin sets — which also makes the console CSRF-safe.

let token = null;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(`${message} (${code})`);
    this.status = status;
    this.code = code;
    this.detail = message;
  }
}

export function signIn(t) { token = t.trim(); }
export function signOut() { token = null; }

/** One API call. `json` sends a JSON body, `toml` a policy; answers JSON or text. */
export async function api(method, path, { json, toml, auth = true } = {}) {
  const headers = {};
  if (auth) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(json); }
  if (toml !== undefined) { headers['Content-Type'] = 'application/toml'; body = toml; }
  const res = await fetch(path, { method, headers, body, credentials: 'omit', cache: 'no-store' });
  const type = res.headers.get('Content-Type') || '';
  if (!res.ok) {
    let err = { code: 'internal', message: res.statusText };
    try { err = (await res.json()).error; } catch { /* not JSON: keep the status text */ }
    throw new ApiError(res.status, err.code, err.message);
  }
  return type.includes('application/json') ? res.json() : res.text();
}

export const get = (path, opts) => api('GET', path, opts);
export const post = (path, json) => api('POST', path, { json });

/** `path?query` with empty values left out. */
export function withQuery(path, query) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== '' && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

export const enc = encodeURIComponent;
