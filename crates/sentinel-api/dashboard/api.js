// The page's one way to the server: every call carries the token as a bearer header, and
// every failure becomes an `ApiError` with the server's own message (`{"error": "..."}`), so a
// page can say "your token lacks scope X" in the server's words.

const TOKEN_KEY = 'sentinel.token';

/** The token of this tab's session, or null. Session storage: it goes when the tab closes. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** A refused or failed call: the HTTP status and the server's message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** What the user should read for `error`: the server's message, with the reason for 401/403. */
export function describe(error) {
  if (!(error instanceof ApiError)) return String(error.message ?? error);
  if (error.status === 403) return `Not allowed: ${error.message}`;
  if (error.status === 401) return `Not signed in: ${error.message}`;
  return `${error.message} (HTTP ${error.status})`;
}

/** Calls `path` with the token; resolves to the parsed JSON (or text) answer, or rejects with
 * an ApiError. `options.body` may be a JS value (sent as JSON) or a Blob (sent as bytes). */
export async function call(path, options = {}) {
  const headers = { Authorization: `Bearer ${token() ?? ''}` };
  let body = options.body;
  if (body instanceof Blob) {
    headers['Content-Type'] = 'application/octet-stream';
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method: options.method ?? (body === undefined ? 'GET' : 'POST'), headers, body });
  } catch (failure) {
    throw new ApiError(0, `the server cannot be reached (${failure.message})`);
  }
  const type = response.headers.get('Content-Type') ?? '';
  const answer = type.startsWith('application/json') ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) {
    const message = answer && typeof answer === 'object' && typeof answer.error === 'string' ? answer.error : response.statusText;
    const error = new ApiError(response.status, message);
    if (response.status === 401) window.dispatchEvent(new CustomEvent('sentinel:unauthorized', { detail: message }));
    throw error;
  }
  return answer;
}

/** The URL of the WebSocket `path` on this server. */
export function websocketUrl(path) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${path}`;
}

/** Who the token belongs to: `{principal, scopes}` (GET /api/v1/whoami). */
export function whoami() {
  return call('/api/v1/whoami');
}

let grantedScopes = [];

export function setScopes(scopes) {
  grantedScopes = scopes;
}

/** Whether the signed-in token holds `scope` (`admin` holds every scope). */
export function holds(scope) {
  return grantedScopes.includes('admin') || grantedScopes.includes(scope);
}
