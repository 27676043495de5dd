// The API client: bearer token, the tenant parameter of multi-tenant tokens,
// problem+json errors. The session module tells it whose credentials to send
// (connect), so this module depends on nothing else.

export class ApiError extends Error {
  constructor(status, detail, body = null) {
    super(detail);
    this.status = status;
    this.body = body;
  }
}

// Thrown when there is no session (any more): callers stop quietly, the page
// shows the sign-in.
export class SignedOut extends Error {}

let credentials = () => ({ token: null, tenants: null, tenant: null });
let unauthorized = () => {};

// credentialsFn() -> {token, tenants, tenant}; onUnauthorized(detail) on a 401.
export function connect(credentialsFn, onUnauthorized) {
  credentials = credentialsFn;
  unauthorized = onUnauthorized;
}

export async function problemBody(resp) {
  try {
    return await resp.json();
  } catch {
    return {};
  }
}

function detailOf(resp, body) {
  return (body && (body.detail || body.error_description || body.error)) || `${resp.status} ${resp.statusText}`;
}

export async function problemDetail(resp) {
  return detailOf(resp, await problemBody(resp));
}

export async function api(path, params = {}, { accept = "application/json", tenantless = false } = {}) {
  const { token, tenants, tenant } = credentials();
  if (!token) throw new SignedOut();
  if (!tenantless && tenants !== null && !tenant) throw new ApiError(400, "Choose a tenant first (top right).");
  const url = new URL(path, window.location.origin);
  const scoped = !tenantless && tenants !== null && tenant ? { tenant } : {};
  for (const [key, value] of Object.entries({ ...params, ...scoped })) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const resp = await fetch(url, { headers: { Authorization: `Bearer ${token}`, Accept: accept } });
  if (resp.status === 401) {
    unauthorized(await problemDetail(resp));
    throw new SignedOut();
  }
  if (!resp.ok) {
    const body = await problemBody(resp);
    throw new ApiError(resp.status, detailOf(resp, body), body);
  }
  return resp;
}

export function errorText(err) {
  if (err instanceof ApiError) return err.message;
  return `Could not reach the server (${err.message || err}).`;
}

// Events per page of the list and the timeline.
export const PAGE_SIZE = 50;
