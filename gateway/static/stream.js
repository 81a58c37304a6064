// The /ws/client connection: subscribe, hand every decoded message to the app, keep it alive,
// reconnect with backoff, and tell authentication failures apart from everything else.
//
// Close codes (docs/protocol.md, "Close codes"): 1008 is an authentication failure and 4001 an
// expired token, so reconnecting cannot help: the user must log in again. 1013 means "you read
// too slowly" and everything else is worth a retry, with exponential backoff and jitter so a
// restarted server is not stormed by every dashboard at the same instant.

const SUBPROTOCOL = "tripwire.v1.json";
const CHANNELS = ["positions", "prices", "alerts", "devices"];
const AUTH_CODES = new Set(["unauthorized", "bad_signature", "expired"]);
const AUTH_CLOSES = new Set([1008, 4001]);
const FATAL_CLOSES = new Set([4002]); // the server no longer speaks our protocol revision
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const PING_EVERY_MS = 15_000;
// Prices come several times a second only while there is something to price, so silence is
// judged against our own pings: no frame at all for this long means the link is dead.
const SILENCE_LIMIT_MS = 40_000;

export class ClientStream {
  /**
   * @param {object} options
   * @param {string} options.token the JWT.
   * @param {(message: object) => void} options.onMessage every decoded server message.
   * @param {(status: object) => void} options.onStatus {state, attempt, delayMs, reason}.
   * @param {(reason: string) => void} options.onAuthFailure the token was refused.
   */
  constructor({ token, onMessage, onStatus, onAuthFailure }) {
    this.token = token;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.onAuthFailure = onAuthFailure;
    this.socket = null;
    this.attempt = 0;
    this.stopped = true;
    this.retryTimer = null;
    this.pingTimer = null;
    this.lastFrameMs = 0;
    this.pingSeq = 0;
    this.authError = "";
    this.symbols = new Set();
    this.onOnline = () => this.retryNow();
  }

  start() {
    this.stopped = false;
    window.addEventListener("online", this.onOnline);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.retryTimer);
    this.drop(1000, "logged out");
    this.onStatus({ state: "offline" });
  }

  /** Send a message if the socket is open; returns whether it was sent. */
  send(message) {
    if (this.socket?.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  /**
   * Ask for the prices of `extra` symbols too. The server prices the symbols of the user's
   * open positions (`covered`) until a client names symbols; from then on it prices only the
   * named ones, so once we name any we name them all, and the set only grows.
   */
  wantPrices(extra, covered) {
    const uncovered = [...extra].some((s) => !covered.has(s));
    if (!this.symbols.size && !uncovered) return;
    const all = new Set([...this.symbols, ...covered, ...extra]);
    if (all.size === this.symbols.size) return;
    const symbols = [...all].slice(0, 64); // the protocol's limit
    if (this.send({ type: "subscribe", channels: ["prices"], symbols })) {
      this.symbols = new Set(symbols);
    }
  }

  /** A snapshot arrived: the connection is useful, so the next failure starts backoff afresh. */
  confirmed() {
    this.attempt = 0;
    this.onStatus({ state: "live" });
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws/client?token=${encodeURIComponent(this.token)}`;
    this.authError = "";
    this.symbols = new Set(); // a new subscription starts with the server's default symbols
    this.onStatus({ state: this.attempt ? "reconnecting" : "connecting", attempt: this.attempt });
    let socket;
    try {
      socket = new WebSocket(url, SUBPROTOCOL);
    } catch (error) {
      this.scheduleRetry(String(error?.message ?? error));
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.lastFrameMs = Date.now();
      socket.send(JSON.stringify({ type: "subscribe", v: 1, channels: CHANNELS, symbols: [] }));
      this.pingTimer = setInterval(() => this.keepAlive(), PING_EVERY_MS);
    };
    socket.onmessage = (event) => this.receive(event);
    socket.onclose = (event) => this.closed(socket, event.code, event.reason);
    // An error is always followed by a close event, which decides what to do.
    socket.onerror = () => {};
  }

  receive(event) {
    this.lastFrameMs = Date.now();
    if (typeof event.data !== "string") return; // we asked for JSON: ignore anything else
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!message || typeof message !== "object" || typeof message.type !== "string") return;
    if (message.type === "error" && AUTH_CODES.has(message.code)) {
      this.authError = typeof message.message === "string" ? message.message : message.code;
    }
    this.onMessage(message);
  }

  keepAlive() {
    if (Date.now() - this.lastFrameMs > SILENCE_LIMIT_MS) {
      // Do not wait for a closing handshake over a dead link: drop it and retry.
      this.drop(4000, "silent");
      this.scheduleRetry("no data from the server");
      return;
    }
    this.pingSeq += 1;
    this.send({ type: "ping", seq: this.pingSeq });
  }

  closed(socket, code, reason) {
    if (socket !== this.socket) return; // an old socket we already gave up on
    this.drop();
    if (this.stopped) return;
    if (this.authError || AUTH_CLOSES.has(code)) {
      this.stopped = true;
      this.onAuthFailure(this.authError || reason || "the server refused the session");
      return;
    }
    if (FATAL_CLOSES.has(code)) {
      this.stopped = true;
      this.onStatus({ state: "failed", reason: reason || `closed with ${code}` });
      return;
    }
    const why = code === 1013 ? "the connection fell behind" : reason || `closed (${code})`;
    this.scheduleRetry(why);
  }

  /** Forget the current socket (closing it if it is still open). */
  drop(code = 1000, reason = "") {
    clearInterval(this.pingTimer);
    const socket = this.socket;
    this.socket = null;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) {
      socket.close(code, reason);
    }
  }

  scheduleRetry(reason) {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delayMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.attempt += 1;
    this.onStatus({ state: "reconnecting", attempt: this.attempt, delayMs, reason });
    this.retryTimer = setTimeout(() => this.connect(), delayMs);
  }

  /** The browser is back online: do not sit out the rest of a long backoff. */
  retryNow() {
    if (this.stopped || this.socket) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }
}
