// The admin REST API (/api/v1) with the admin key of this browser session.

const KEY = 'sensegate.adminKey';

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(k) { if (k) sessionStorage.setItem(KEY, k); else sessionStorage.removeItem(KEY); },
};

/** An API refusal: `status`, `code` (`invalid_request`, `conflict`…), `field`. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error;
    this.field = body?.field;
  }
}

/** Called when the key is refused (401): the app shows the sign-in page. */
export let onUnauthorized = () => {};
export const setOnUnauthorized = (f) => { onUnauthorized = f; };

export async function api(method, path, body, key = session.key) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(`/api/v1${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store', credentials: 'omit',
    });
  } catch {
    throw new ApiError(0, { message: 'The server cannot be reached.' });
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    if (res.status === 401 && key === session.key) onUnauthorized(err);
    throw err;
  }
  return data;
}

/** One page: `{items, nextCursor}`. */
export function page(path, { cursor, name, limit = 50 } = {}) {
  const q = new URLSearchParams({ limit });
  if (cursor) q.set('cursor', cursor);
  if (name) q.set('name', name);
  return api('GET', `${path}?${q}`);
}

/** Every row of a list, following cursors (200 per request). */
export async function all(path) {
  const rows = [];
  let cursor;
  do {
    const p = await page(path, { cursor, limit: 200 });
    rows.push(...p.items);
    cursor = p.nextCursor;
  } while (cursor);
  return rows;
}

export const enc = encodeURIComponent;
