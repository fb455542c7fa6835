// GraphQL over HTTP with the signed-in API key. Errors come back typed so the UI can tell an
// invalid key (back to sign-in) from everything else (shown in place).

export class AuthError extends Error {}

export class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

const isAuthCode = (code) => code === "UNAUTHENTICATED";

/** Throws AuthError for a 401 or an UNAUTHENTICATED error, ApiError for any other error. */
export function createApi(getKey) {
  async function gql(operationName, query, variables = {}) {
    const headers = { "content-type": "application/json" };
    const key = getKey();
    if (key) headers.authorization = `Bearer ${key}`;
    let resp;
    try {
      resp = await fetch("/graphql", { method: "POST", headers, body: JSON.stringify({ operationName, query, variables }) });
    } catch (e) {
      throw new ApiError(`cannot reach the server (${e.message})`, "NETWORK");
    }
    if (resp.status === 401) throw new AuthError("invalid key");
    let body;
    try {
      body = await resp.json();
    } catch {
      throw new ApiError(`the server answered HTTP ${resp.status}`, "HTTP");
    }
    const errors = body.errors || [];
    if (errors.some((e) => isAuthCode(e.extensions?.code))) throw new AuthError("invalid key");
    if (errors.length) throw new ApiError(errors.map((e) => e.message).join("; "), errors[0].extensions?.code);
    if (!resp.ok) throw new ApiError(`the server answered HTTP ${resp.status}`, "HTTP");
    return body.data;
  }
  return { gql };
}
