// A minimal client of the graphql-transport-ws protocol (what the `graphql-ws` library speaks),
// enough for the console's subscriptions: one socket, lazily opened, the API key in the
// connection_init payload, and every active subscription sent again after a reconnect
// (`taskUpdated` starts with the current state, so nothing is missed across the gap).
// A key the server refuses closes the socket with 4403 (4401 for a subscribe before init): the
// console treats both like an HTTP 401, back to sign-in.

const AUTH_CLOSE_CODES = new Set([4401, 4403]);

export class SubscriptionClient {
  /**
   * @param {string} url ws:// or wss:// URL of /graphql/ws
   * @param {() => string} getKey the API key ('' for none)
   * @param {{onAuthError: (reason: string, code?: number) => void, onState?: (s: string) => void}} hooks
   */
  constructor(url, getKey, hooks) {
    this.url = url;
    this.getKey = getKey;
    this.hooks = hooks;
    this.subs = new Map();
    this.nextId = 1;
    this.socket = null;
    this.ready = false;
    this.closedByUs = false;
    this.retryDelay = 250;
  }

  /** Subscribes; returns a function that stops the subscription. */
  subscribe(query, variables, handlers) {
    const id = String(this.nextId++);
    this.subs.set(id, { query, variables, handlers });
    if (this.ready) this.#sendSubscribe(id);
    else this.#open();
    return () => {
      if (this.subs.delete(id) && this.ready) this.#send({ id, type: "complete" });
    };
  }

  close() {
    this.closedByUs = true;
    this.subs.clear();
    this.socket?.close(1000, "bye");
    this.socket = null;
    this.ready = false;
  }

  #send(msg) {
    this.socket?.send(JSON.stringify(msg));
  }

  #sendSubscribe(id) {
    const s = this.subs.get(id);
    if (s) this.#send({ id, type: "subscribe", payload: { query: s.query, variables: s.variables } });
  }

  #open() {
    if (this.socket) return;
    this.closedByUs = false;
    const socket = new WebSocket(this.url, "graphql-transport-ws");
    this.socket = socket;
    this.hooks.onState?.("connecting");
    socket.onopen = () => {
      const key = this.getKey();
      this.#send({ type: "connection_init", payload: key ? { authorization: `Bearer ${key}` } : {} });
    };
    socket.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.#onMessage(msg);
    };
    socket.onclose = (ev) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.ready = false;
      this.hooks.onState?.("disconnected");
      if (AUTH_CLOSE_CODES.has(ev.code)) {
        this.subs.clear();
        this.hooks.onAuthError(ev.reason || "invalid key", ev.code);
        return;
      }
      if (this.closedByUs || this.subs.size === 0) return;
      const delay = this.retryDelay;
      this.retryDelay = Math.min(this.retryDelay * 2, 5000);
      setTimeout(() => this.#open(), delay);
    };
  }

  #onMessage(msg) {
    switch (msg.type) {
      case "connection_ack":
        this.ready = true;
        this.retryDelay = 250;
        this.hooks.onState?.("connected");
        for (const id of this.subs.keys()) this.#sendSubscribe(id);
        break;
      case "ping":
        this.#send({ type: "pong" });
        break;
      case "next": {
        const s = this.subs.get(msg.id);
        const errors = msg.payload?.errors;
        if (errors?.some((e) => e.extensions?.code === "UNAUTHENTICATED")) {
          this.close();
          this.hooks.onAuthError("invalid key");
        } else if (errors?.length) s?.handlers.error?.(errors);
        else s?.handlers.next(msg.payload.data);
        break;
      }
      case "error": {
        const s = this.subs.get(msg.id);
        this.subs.delete(msg.id);
        if (msg.payload?.some?.((e) => e.extensions?.code === "UNAUTHENTICATED")) {
          this.close();
          this.hooks.onAuthError("invalid key");
        } else s?.handlers.error?.(msg.payload);
        break;
      }
      case "complete": {
        const s = this.subs.get(msg.id);
        this.subs.delete(msg.id);
        s?.handlers.complete?.();
        break;
      }
      default:
        break;
    }
  }
}
