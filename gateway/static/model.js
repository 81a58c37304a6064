// What the page knows, and how each server message changes it. No DOM here: `apply` returns the
// names of the sections a message changed, and the app re-renders only those.
//
// Every message is checked field by field: anything malformed is dropped (or the one bad field
// is blanked), and unknown message types are ignored, as docs/protocol.md asks of clients.

import { finite, notePrice, text } from "./format.js";

const SIDES = new Set(["buy", "sell"]);
const LEVELS = new Set(["info", "warning", "critical"]);
const GUARD_LEVELS = new Set(["normal", "warning", "critical"]);
export const FINAL_STATES = new Set(["closed", "rejected"]);
const LIVE_PRICED = new Set(["open", "closing", "close_failed", "unknown"]);
const MAX_ALERTS = 200;
const MAX_POSITIONS = 1000;

function position(raw) {
  if (!raw || typeof raw !== "object") return null;
  const id = text(raw.id, 64);
  const symbol = text(raw.symbol, 32);
  if (!id || !symbol || !SIDES.has(raw.side)) return null;
  const flags = Array.isArray(raw.flags) ? raw.flags.map((f) => text(f, 64)).filter(Boolean) : [];
  return {
    id,
    symbol,
    side: raw.side,
    volume: finite(raw.volume),
    state: text(raw.state, 64).toLowerCase() || "unknown",
    origin: text(raw.origin, 16),
    // False: found on the terminal, not opened by the engine, and not adopted by the user: read
    // only (the server sends it no command) until adopted.
    adopted: raw.adopted !== false,
    deviceId: text(raw.device_id, 64),
    ticket: finite(raw.ticket),
    openPrice: finite(raw.open_price),
    openTimeMs: finite(raw.open_time_ms),
    sl: finite(raw.sl),
    tp: finite(raw.tp),
    currentPrice: finite(raw.current_price),
    pl: finite(raw.pl),
    // The terminal's figures, null from an EA that does not report them; pl excludes both.
    commission: finite(raw.commission),
    swap: finite(raw.swap),
    closePrice: finite(raw.close_price),
    closeTimeMs: finite(raw.close_time_ms),
    closeReason: text(raw.close_reason, 64),
    // Closed, its fill not known yet (the EA's deals bring it): no close price, no P&L.
    fillPending: raw.fill_pending === true,
    signalId: text(raw.signal_id, 160),
    flags,
    updatedMs: finite(raw.updated_ms) ?? 0,
  };
}

function device(raw) {
  if (!raw || typeof raw !== "object") return null;
  const id = text(raw.device_id, 64);
  if (!id || typeof raw.connected !== "boolean") return null;
  return {
    id,
    connected: raw.connected,
    stale: raw.stale === true,
    healthy: raw.healthy !== false,
    lastSeenMs: finite(raw.last_seen_ms),
    login: text(raw.account_login, 64),
    broker: text(raw.broker, 64),
  };
}

export function alert(raw) {
  if (!raw || typeof raw !== "object" || !LEVELS.has(raw.level)) return null;
  const kind = text(raw.kind, 64);
  const message = text(raw.message, 1024);
  const timeMs = finite(raw.time_ms);
  if (!kind || timeMs === null) return null;
  return {
    kind,
    level: raw.level,
    message,
    timeMs,
    symbol: text(raw.symbol, 32),
    deviceId: text(raw.device_id, 64),
    positionId: text(raw.position_id, 64),
    value: finite(raw.value),
    threshold: finite(raw.threshold),
  };
}

function account(raw, asOfMs) {
  if (!raw || typeof raw !== "object") return null;
  return {
    balance: finite(raw.balance),
    equity: finite(raw.equity),
    currency: text(raw.currency, 16),
    drawdown: finite(raw.drawdown),
    guardLevel: GUARD_LEVELS.has(raw.guard_level) ? raw.guard_level : "normal",
    opensBlocked: raw.opens_blocked === true,
    asOfMs, // when these figures were last known (drawdown alerts move it on)
  };
}

export class Store {
  constructor() {
    this.reset();
  }

  reset() {
    /** @type {Map<string, object>} position id -> latest view */
    this.positions = new Map();
    /** @type {Map<string, {bid: number, ask: number, timeMs: number, move: number}>} */
    this.prices = new Map();
    this.devices = new Map();
    this.alerts = [];
    this.alertKeys = new Set();
    this.account = null;
    // Per symbol, the money one lot makes when the price moves by 1.0, learned from the
    // server's own P&L (see learnContract). Lets open P&L follow every price update.
    this.contracts = new Map();
    this.serverTimeOffsetMs = 0;
  }

  /** Apply one server message; returns the sections it changed (empty if it was ignored). */
  apply(message) {
    switch (message.type) {
      case "snapshot":
        return this.applySnapshot(message);
      case "position":
        return this.upsertPosition(message.position) ? ["positions"] : [];
      case "price":
        return this.applyPrice(message) ? ["prices", "positions"] : [];
      case "alert":
        return this.addAlert(message.alert);
      case "device":
        return this.upsertDevice(message.device) ? ["devices"] : [];
      case "account":
        return this.applyAccount(message) ? ["account"] : [];
      default:
        return []; // pong, error (handled by the stream) and types from the future
    }
  }

  applySnapshot(message) {
    const now = finite(message.time_ms);
    if (now !== null) this.serverTimeOffsetMs = now - Date.now();
    // A snapshot is the whole truth about open positions, but the closed ones it carries are
    // only the latest few: keep older closed rows the page already had (from REST or earlier).
    for (const [id, p] of this.positions) {
      if (!FINAL_STATES.has(p.state)) this.positions.delete(id);
    }
    for (const raw of Array.isArray(message.positions) ? message.positions : []) {
      this.upsertPosition(raw, true);
    }
    this.devices.clear();
    for (const raw of Array.isArray(message.devices) ? message.devices : []) this.upsertDevice(raw);
    for (const raw of Array.isArray(message.alerts) ? message.alerts : []) this.addAlert(raw);
    this.account = account(message.account, now ?? Date.now());
    return ["positions", "devices", "alerts", "account", "prices"];
  }

  /** Keep the newest state of a position; `force` replaces even an equally old one. */
  upsertPosition(raw, force = false) {
    const p = position(raw);
    if (!p) return false;
    const known = this.positions.get(p.id);
    // Deltas are coalesced and in order on one connection, but REST answers can race the
    // stream: never let an older view overwrite a newer one.
    if (known && !force && p.updatedMs < known.updatedMs) return false;
    this.positions.set(p.id, p);
    this.learnContract(p);
    this.trim();
    return true;
  }

  trim() {
    if (this.positions.size <= MAX_POSITIONS) return;
    const closed = [...this.positions.values()]
      .filter((p) => FINAL_STATES.has(p.state))
      .sort((a, b) => (a.closeTimeMs ?? a.updatedMs) - (b.closeTimeMs ?? b.updatedMs));
    for (const p of closed.slice(0, this.positions.size - MAX_POSITIONS)) {
      this.positions.delete(p.id);
    }
  }

  /**
   * The server values an open position at its current price: pl = (price - open) x side x
   * volume x contract size. The page does not know contract sizes, but it can read them back
   * from that equation; the estimate from the largest move is the most precise (the P&L is
   * rounded to cents). Closed positions are skipped: their P&L is the broker's realised one.
   */
  learnContract(p) {
    if (!LIVE_PRICED.has(p.state)) return;
    if ([p.pl, p.currentPrice, p.openPrice, p.volume].includes(null) || p.volume <= 0) return;
    const move = (p.currentPrice - p.openPrice) * (p.side === "buy" ? 1 : -1);
    const weight = Math.abs(move) * p.volume;
    const known = this.contracts.get(p.symbol);
    if (weight === 0 || (known && known.weight >= weight)) return;
    this.contracts.set(p.symbol, { perLot: p.pl / (move * p.volume), weight });
  }

  applyPrice(message) {
    const symbol = text(message.symbol, 32);
    const bid = finite(message.bid);
    const ask = finite(message.ask);
    const timeMs = finite(message.time_ms) ?? Date.now();
    if (!symbol || bid === null || ask === null || bid <= 0 || ask < bid) return false;
    const known = this.prices.get(symbol);
    if (known && timeMs < known.timeMs) return false;
    const mid = (bid + ask) / 2;
    const lastMid = known ? (known.bid + known.ask) / 2 : mid;
    const move = mid === lastMid ? (known?.move ?? 0) : Math.sign(mid - lastMid);
    notePrice(symbol, bid);
    notePrice(symbol, ask);
    this.prices.set(symbol, { bid, ask, timeMs, move });
    return true;
  }

  /** The account's latest figures, whole (the server sends them when any of them changes). */
  applyAccount(message) {
    const asOfMs = finite(message.time_ms) ?? this.nowMs();
    const next = account(message.account, asOfMs);
    if (!next) return false;
    if (this.account && asOfMs < this.account.asOfMs) return false; // an older view
    this.account = next;
    return true;
  }

  upsertDevice(raw) {
    const d = device(raw);
    if (!d) return false;
    this.devices.set(d.id, d);
    return true;
  }

  /** Add an alert unless it is a repeat (a reconnect can send the same one again). */
  addAlert(raw) {
    const a = alert(raw);
    if (!a) return [];
    const key = `${a.timeMs}|${a.kind}|${a.level}|${a.symbol}|${a.positionId}|${a.message}`;
    if (this.alertKeys.has(key)) return [];
    this.alertKeys.add(key);
    this.alerts.push(a);
    this.alerts.sort((x, y) => y.timeMs - x.timeMs);
    for (const dropped of this.alerts.splice(MAX_ALERTS)) {
      this.alertKeys.delete(
        `${dropped.timeMs}|${dropped.kind}|${dropped.level}|${dropped.symbol}|` +
          `${dropped.positionId}|${dropped.message}`,
      );
    }
    // The account card follows only the stream's account messages: a drawdown alert says
    // what the guard did, and the account message sent with it carries the figures.
    return ["alerts"];
  }

  // -- derived values ------------------------------------------------------------------------

  /** The price a position is valued at now: the bid for a long, the ask for a short. */
  mark(p) {
    if (FINAL_STATES.has(p.state)) return p.closePrice ?? p.currentPrice;
    const quote = this.prices.get(p.symbol);
    if (quote && quote.timeMs >= p.updatedMs) return p.side === "buy" ? quote.bid : quote.ask;
    return p.currentPrice;
  }

  /** P&L at the live price when it can be computed, else the server's last figure. */
  livePl(p) {
    if (!LIVE_PRICED.has(p.state)) return p.pl;
    const contract = this.contracts.get(p.symbol);
    const mark = this.mark(p);
    if (!contract || mark === null || p.openPrice === null || p.volume === null) return p.pl;
    const pl = (mark - p.openPrice) * (p.side === "buy" ? 1 : -1) * p.volume * contract.perLot;
    return Math.round(pl * 100) / 100;
  }

  livePositions() {
    return [...this.positions.values()]
      .filter((p) => !FINAL_STATES.has(p.state))
      .sort((a, b) => (b.openTimeMs ?? b.updatedMs) - (a.openTimeMs ?? a.updatedMs));
  }

  closedPositions() {
    return [...this.positions.values()]
      .filter((p) => FINAL_STATES.has(p.state))
      .sort((a, b) => (b.closeTimeMs ?? b.updatedMs) - (a.closeTimeMs ?? a.updatedMs));
  }

  /** Sum of the live P&L of open positions: 0 with none, null if none can be valued. */
  floatingPl() {
    const live = this.livePositions();
    const pls = live.map((p) => this.livePl(p)).filter((pl) => pl !== null);
    if (live.length && !pls.length) return null;
    return Math.round(pls.reduce((sum, pl) => sum + pl, 0) * 100) / 100;
  }

  /** Symbols whose price the page wants: those of live positions (and of pending signals). */
  symbolsOfPositions() {
    return new Set(this.livePositions().map((p) => p.symbol));
  }

  /** Server time now, as far as the last snapshot tells. */
  nowMs() {
    return Date.now() + this.serverTimeOffsetMs;
  }
}
