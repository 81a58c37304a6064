// The Tripwire dashboard: log in, then follow /ws/client live and use the REST API for what
// the stream does not carry (pending signals, decisions, closing by hand, history, analytics).
//
// REST endpoints that this server does not offer (yet) are not errors for the page: each panel
// says plainly what is unavailable and the rest keeps working from the stream.

import { clearSession, loadSession, login, request, saveSession } from "./api.js";
import {
  candlesFromMarket,
  curveFromAnalytics,
  curveFromPositions,
  drawCandles,
  drawEquity,
  statsFromAnalytics,
  tradeMarks,
} from "./chart.js";
import { finite, price, text, time } from "./format.js";
import { FINAL_STATES, alert as parseAlert, Store } from "./model.js";
import * as view from "./render.js";
import { ClientStream } from "./stream.js";
import "./position_edit.js"; // the "Edit" form of open positions (SL/TP, trailing, break-even)

const SIGNALS_EVERY_MS = 15_000;
const ANALYTICS_EVERY_MS = 30_000;
const MISSING_EVERY_MS = 120_000; // an endpoint that is not deployed is asked again rarely
const CONFIRM_MS = 4_000;
const EQUITY_MIN_INTERVAL_MS = 1_000;
// A close seen on the stream reaches the server's trade history a moment later: the analytics
// are asked again this long after it, a few times, until they count one more trade.
const AFTER_CLOSE_MS = 1_000;
const AFTER_CLOSE_TRIES = 5;
const CANDLES_EVERY_MS = 10_000;
const CANDLE_INTERVAL_S = 60;
const DAY_MS = 86_400_000;

const store = new Store();
const ui = { closing: new Map(), adopting: new Map() };
const signals = { list: [], busy: new Map() };
let analytics = null;
// The history's filter (symbol, and the close time in [fromMs, toMs)), and the chart's symbol.
const history = { symbol: "", fromMs: null, toMs: null };
const candles = { symbol: "", list: [] };
let session = null;
let stream = null;
// Bumped at every log-out: an answer that arrives for an older session is dropped.
let generation = 0;
const timeouts = new Set();
const intervals = new Set();
let status = { state: "offline" };

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

// -- rendering: sections are marked dirty and drawn together once per frame ---------------------

const dirty = new Set();
let frame = 0;
let equityDrawnMs = 0;
let equityQueued = false;
let afterCloseQueued = false;

function invalidate(...sections) {
  for (const section of sections) dirty.add(section);
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  const d = new Set(dirty);
  dirty.clear();
  if (d.has("positions")) {
    view.renderLivePositions(store, ui, onClose, onAdopt);
    view.renderClosedPositions(store, inHistoryFilter);
  } else if (d.has("prices")) {
    view.renderLivePositions(store, ui, onClose, onAdopt); // live prices move P&L
  }
  if (d.has("prices")) view.renderPrices(store);
  if (d.has("devices")) view.renderDevices(store);
  if (d.has("alerts")) view.renderAlerts(store);
  if (d.has("account") || d.has("positions") || d.has("prices")) view.renderAccount(store);
  if (d.has("candles") || d.has("positions")) renderCandles();
  if (d.has("signals")) view.renderSignals(signals.list, signals.busy, store.nowMs(), onDecide);
  if (d.has("equity") || d.has("positions") || d.has("account") || d.has("prices")) {
    // The curve's last point follows live prices, but redrawing a canvas 4 times a second
    // for a pixel's move is waste: at most once a second.
    const wait = equityDrawnMs + EQUITY_MIN_INTERVAL_MS - Date.now();
    if (wait <= 0 || d.has("equity")) renderEquity();
    else if (!equityQueued) {
      equityQueued = true;
      later(wait, () => {
        equityQueued = false;
        invalidate("equity");
      });
    }
  }
}

function renderEquity() {
  equityDrawnMs = Date.now();
  const canvas = $("equity-canvas");
  const currency = store.account?.currency ?? "";
  // The server's answer, even with no closed trade yet (an empty curve), is what the page
  // shows; only without one does it build a P&L curve from the positions it has received.
  const fromServer = analytics !== null;
  const live = store.livePositions();
  const points = fromServer
    ? analytics.curve
    : curveFromPositions(
        store.closedPositions(),
        live.length ? store.floatingPl() : null,
        store.nowMs(),
        live.length ? Math.min(...live.map((p) => p.openTimeMs ?? p.updatedMs)) : null,
      );
  const summary = drawEquity(canvas, points, {
    currency,
    signed: !fromServer,
    emptyText: fromServer ? "No closed trades yet" : "No closed positions yet",
  });
  const what = fromServer ? "Equity" : "Realised P&L";
  canvas.setAttribute("aria-label", `${what} curve: ${summary}`);
  $("equity-source").textContent = fromServer
    ? points.length
      ? "Equity from the server's analytics: the balance after each closed trade."
      : "Equity from the server's analytics: no closed trades yet."
    : !points.length
      ? ""
      : "The server's analytics are not available: this is the realised P&L of the closed " +
        "positions this page has received, ending now with the floating P&L.";
  view.renderAnalytics(analytics?.stats ?? null, currency);
}

// -- the candle chart -------------------------------------------------------------------------

/** The symbols the chart offers: those of positions, prices and pending signals. */
function chartSymbols() {
  const symbols = new Set([
    ...store.livePositions().map((p) => p.symbol),
    ...store.prices.keys(),
    ...signals.list.map((s) => s.symbol),
    ...store.closedPositions().slice(0, 20).map((p) => p.symbol),
  ]);
  return [...symbols].sort();
}

function renderCandles() {
  const select = $("candles-symbol");
  const symbols = chartSymbols();
  if (!candles.symbol && symbols.length) {
    candles.symbol = store.livePositions()[0]?.symbol ?? symbols[0];
    refreshCandles(); // the first symbol known: its candles now, not at the next poll
  }
  const wanted = symbols.includes(candles.symbol) || !candles.symbol ? symbols : [candles.symbol, ...symbols];
  if ([...select.options].map((o) => o.value).join() !== wanted.join()) {
    select.replaceChildren(...wanted.map((s) => new Option(s, s)));
  }
  if (select.value !== candles.symbol) select.value = candles.symbol;
  const canvas = $("candles-canvas");
  const marks = tradeMarks([...store.positions.values()], candles.symbol);
  // Axis values are not prices: format them at the symbol's digits (from a real price)
  // rather than through price(), which would learn their long decimals as the symbol's.
  const last = candles.list.at(-1);
  const digits = last ? (price(candles.symbol, last.c).split(".")[1]?.length ?? 0) : 2;
  const summary = drawCandles(canvas, candles.list, marks, {
    intervalMs: CANDLE_INTERVAL_S * 1000,
    priceText: (v) => v.toFixed(digits),
  });
  canvas.setAttribute("aria-label", `${candles.symbol || "No symbol"} candles: ${summary}`);
}

async function refreshCandles() {
  const gen = generation;
  if (!candles.symbol) {
    invalidate("candles"); // picks a symbol once there is one
    return 2_000;
  }
  const symbol = candles.symbol;
  try {
    const data = await request(
      "GET",
      `/api/v1/market/${encodeURIComponent(symbol)}/candles?interval_s=${CANDLE_INTERVAL_S}&limit=120`,
      { token: session.token },
    );
    if (gen !== generation || symbol !== candles.symbol) return CANDLES_EVERY_MS;
    candles.list = candlesFromMarket(data);
  } catch (error) {
    if (gen !== generation) return CANDLES_EVERY_MS;
    candles.list = [];
    return error.missing ? MISSING_EVERY_MS : CANDLES_EVERY_MS;
  }
  invalidate("candles");
  return CANDLES_EVERY_MS;
}

// -- the history filter and export ---------------------------------------------------------------

function inHistoryFilter(p) {
  const at = p.closeTimeMs ?? p.updatedMs;
  if (history.symbol && p.symbol !== history.symbol) return false;
  if (history.fromMs !== null && at < history.fromMs) return false;
  if (history.toMs !== null && at >= history.toMs) return false;
  return true;
}

/** The history's filters as query parameters (dates are local days, `to` inclusive). */
function historyParams() {
  const params = new URLSearchParams({ state: "closed" });
  if (history.symbol) params.set("symbol", history.symbol);
  if (history.fromMs !== null) params.set("from_ms", String(history.fromMs));
  if (history.toMs !== null) params.set("to_ms", String(history.toMs));
  return params;
}

function dayStart(value) {
  if (!value) return null;
  const ms = new Date(`${value}T00:00:00`).getTime();
  return Number.isFinite(ms) && ms >= 0 ? ms : null;
}

function setHistoryStatus(message) {
  $("history-status").textContent = message;
}

function readHistoryFilter() {
  history.symbol = $("history-symbol").value.trim().toUpperCase();
  history.fromMs = dayStart($("history-from").value);
  const to = dayStart($("history-to").value);
  history.toMs = to === null ? null : to + DAY_MS;
  if (history.fromMs !== null && history.toMs !== null && history.toMs <= history.fromMs) {
    setHistoryStatus("“To” is before “From”: nothing can match.");
  } else setHistoryStatus("");
  invalidate("positions");
  loadHistory();
}

async function exportCsv() {
  const gen = generation;
  const button = $("history-export");
  button.disabled = true;
  setHistoryStatus("Exporting…");
  try {
    // A link cannot carry the bearer token: fetch the file, then hand it to the browser.
    const response = await fetch(`/api/v1/positions.csv?${historyParams()}`, {
      headers: { Authorization: `Bearer ${session.token}` },
      cache: "no-store",
    });
    if (gen !== generation) return;
    if (!response.ok) {
      setHistoryStatus(`Export failed: the server answered ${response.status}.`);
      return;
    }
    const blob = await response.blob();
    const disposition = response.headers.get("Content-Disposition") ?? "";
    const name = /filename="([^"]+)"/.exec(disposition)?.[1] ?? "positions.csv";
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    setHistoryStatus(`Exported ${name}.`);
  } catch {
    if (gen === generation) setHistoryStatus("Export failed: the server cannot be reached.");
  } finally {
    button.disabled = false;
  }
}

// -- timers that die with the session ---------------------------------------------------------

function later(ms, fn) {
  const id = setTimeout(() => {
    timeouts.delete(id);
    fn();
  }, ms);
  timeouts.add(id);
}

function every(ms, fn) {
  intervals.add(setInterval(fn, ms));
}

function cancelTimers() {
  for (const id of timeouts) clearTimeout(id);
  for (const id of intervals) clearInterval(id);
  timeouts.clear();
  intervals.clear();
}

/** Run `task` now and again after each run, at the interval it returns (ms). */
function poll(task, fallbackMs) {
  const gen = generation;
  const run = async () => {
    let nextMs = fallbackMs;
    try {
      nextMs = await task();
    } catch (error) {
      console.error("dashboard: a refresh failed", error); // a bug, not a server answer
    }
    if (gen === generation) later(nextMs, run);
  };
  run();
}

// -- connection status ------------------------------------------------------------------------

function onStatus(next) {
  status = { ...next, sinceMs: Date.now() };
  showStatus();
}

function showStatus() {
  const pill = $("connection-status");
  const { state, attempt = 0, delayMs = 0, reason = "", sinceMs = 0 } = status;
  let label = "Offline";
  if (state === "live") label = "Live";
  else if (state === "connecting") label = "Connecting…";
  else if (state === "reconnecting" && delayMs) {
    const left = Math.max(0, Math.ceil((sinceMs + delayMs - Date.now()) / 1000));
    label = left ? `Reconnecting in ${left} s (attempt ${attempt})` : "Reconnecting…";
  } else if (state === "reconnecting") label = "Reconnecting…";
  else if (state === "failed") label = `Disconnected: ${reason}`;
  if (pill.textContent !== label) pill.textContent = label;
  if (pill.dataset.state !== state) {
    // Screen readers hear the state once, not every tick of the reconnect countdown.
    $("connection-announce").textContent = `Connection: ${label}`;
  }
  pill.dataset.state = state;
  pill.title = reason ? `Last problem: ${reason}` : "";
  const banner = $("stale-banner");
  const stale = Boolean(session) && state !== "live";
  banner.hidden = !stale;
  if (stale) {
    const why = reason ? ` (${reason})` : "";
    banner.textContent = `Live data paused${why}. Figures below may be out of date.`;
  }
}

// -- the stream -------------------------------------------------------------------------------

function onMessage(message) {
  if (message.type === "snapshot") stream.confirmed();
  let changed;
  try {
    changed = store.apply(message);
  } catch (error) {
    // A message the page cannot digest is skipped; the next snapshot or delta repairs it.
    console.error("dashboard: message skipped", message.type, error);
    return;
  }
  if (message.type === "position" && changed.length) {
    // A close request is finished with once the position has left the states it applied to.
    const p = store.positions.get(text(message.position?.id, 64));
    if (p && p.state !== "open" && p.state !== "close_failed") ui.closing.delete(p.id);
    if (p && FINAL_STATES.has(p.state)) refreshAfterClose();
  }
  // The curve ends at the balance: when the terminal reports another one (a close's report
  // coming after the curve was fetched, a commission, swap or deposit), the curve is asked for
  // again, so the card and the curve never disagree for longer than one request.
  if (message.type === "account" && changed.includes("account")) refreshIfBalanceMoved();
  if (changed.length) invalidate(...changed);
  if (changed.includes("positions")) watchPrices();
  if (message.type === "snapshot") {
    loadHistory();
  }
}

/** Ask for the prices of pending signals' symbols as well as those of open positions. */
function watchPrices() {
  stream?.wantPrices(new Set(signals.list.map((s) => s.symbol)), store.symbolsOfPositions());
}

function startStream() {
  stream = new ClientStream({
    token: session.token,
    onMessage,
    onStatus,
    onAuthFailure: (reason) => leave(`The server ended the session: ${reason}. Log in again.`),
  });
  stream.start();
}

// -- REST panels ------------------------------------------------------------------------------

/** Closed positions and alerts from before this page was opened (when the API offers them). */
async function loadHistory() {
  const gen = generation;
  const token = session.token;
  const [closed, alerts] = await Promise.allSettled([
    request("GET", `/api/v1/positions?${historyParams()}&limit=100`, { token }),
    request("GET", "/api/v1/alerts", { token }),
  ]);
  if (gen !== generation) return;
  // The stream's snapshot already carries the latest closes and every new alert; these only
  // reach further back, so a failure here needs no message.
  if (closed.status === "fulfilled" && Array.isArray(closed.value.positions)) {
    for (const raw of closed.value.positions) store.upsertPosition(raw);
    invalidate("positions");
  }
  if (alerts.status === "fulfilled") {
    const list = Array.isArray(alerts.value) ? alerts.value : alerts.value.alerts;
    if (Array.isArray(list)) {
      for (const raw of list) if (parseAlert(raw)) invalidate(...store.addAlert(raw));
    }
  }
}

function normaliseSignal(raw) {
  if (!raw || typeof raw !== "object") return null;
  const strategyId = text(raw.strategy_id, 64);
  const signalId = text(raw.signal_id, 64);
  const version = finite(raw.version);
  const symbol = text(raw.symbol, 32);
  if (!strategyId || !signalId || version === null || !symbol) return null;
  if (raw.side !== "buy" && raw.side !== "sell") return null;
  if (raw.decision) return null; // decided already: not pending whatever the list says
  return {
    key: text(raw.key, 200) || `${strategyId}/${signalId}/${version}`,
    strategyId,
    signalId,
    version,
    symbol,
    side: raw.side,
    orderType: text(raw.order_type, 16),
    entry: finite(raw.entry),
    sl: finite(raw.sl),
    tp: finite(raw.tp),
    volume: finite(raw.volume),
    riskPercent: finite(raw.risk_percent),
    createdAtMs: finite(raw.created_at_ms),
    expiresAtMs: finite(raw.expires_at_ms),
    comment: text(raw.comment, 256),
  };
}

function setSignalsStatus(message) {
  const node = $("signals-status");
  node.textContent = message;
  node.hidden = !message;
}

function setSignalsMessage(message, kind) {
  const node = $("signals-message");
  node.textContent = message;
  node.dataset.kind = kind;
  node.hidden = !message;
}

async function refreshSignals() {
  const gen = generation;
  try {
    const data = await request("GET", "/api/v1/signals?status=pending", { token: session.token });
    if (gen !== generation) return SIGNALS_EVERY_MS;
    const list = Array.isArray(data.signals) ? data.signals : [];
    signals.list = list.map(normaliseSignal).filter(Boolean);
    signals.list.sort((a, b) => (b.createdAtMs ?? 0) - (a.createdAtMs ?? 0));
    setSignalsStatus(signals.list.length ? "" : "No pending signals.");
    invalidate("signals");
    watchPrices();
    return SIGNALS_EVERY_MS;
  } catch (error) {
    if (gen !== generation) return SIGNALS_EVERY_MS;
    if (error.missing) {
      signals.list = [];
      invalidate("signals");
      setSignalsStatus(
        "Signals are not available: this server has no signals API yet " +
          `(GET /api/v1/signals answered ${error.status}). Approving from the dashboard ` +
          "needs it; positions, prices and alerts still stream live.",
      );
      return MISSING_EVERY_MS;
    }
    setSignalsStatus(`Could not load signals: ${error.message}. Retrying.`);
    return SIGNALS_EVERY_MS;
  }
}

const REFUSALS = {
  guard_blocked: "the risk guard blocks new positions (drawdown is critical)",
  late_signal: "the signal is too old to act on",
  sizing_refused: "the position cannot be sized (volume or risk outside the limits)",
};

function decisionError(error) {
  if (error.status === 0 && error.code === "timeout") {
    return "No answer in time: the decision may or may not be recorded. The list will tell.";
  }
  if (error.status === 0) return "The server cannot be reached: the decision was not sent.";
  if (error.status === 409) return `Already decided: ${error.message}`;
  if (error.status === 403) return "This signal is not yours to decide.";
  if (error.status === 422) {
    const limits = error.details ?? {};
    const why =
      error.code === "sizing_refused" && finite(limits.step) !== null
        ? `${error.message} (lots from ${limits.min} to ${limits.max}, in steps of ${limits.step})`
        : REFUSALS[error.code] ?? error.message;
    return `Refused (${error.code}): ${why}.`;
  }
  if (error.missing) {
    return (
      `Not available (${error.status}): this server has no decision endpoint yet, or the ` +
      `signal is gone. Server said: ${error.message}`
    );
  }
  return `The server answered ${error.status} (${error.code}): ${error.message}`;
}

async function onDecide(signal, decision, lots = "") {
  if (!signal || signals.busy.has(signal.key)) return;
  const body = { decision };
  if (decision === "approve" && String(lots).trim() !== "") {
    const volume = Number(lots);
    if (!Number.isFinite(volume) || volume <= 0) {
      setSignalsMessage(`${signal.symbol}: the lot size must be a positive number.`, "bad");
      return;
    }
    body.volume = volume;
  }
  const gen = generation;
  signals.busy.set(signal.key, decision);
  setSignalsMessage("", "");
  invalidate("signals");
  const path =
    `/api/v1/signals/${encodeURIComponent(signal.strategyId)}/` +
    `${encodeURIComponent(signal.signalId)}/${encodeURIComponent(signal.version)}/decision`;
  const what = `${signal.symbol} ${signal.side.toUpperCase()}`;
  try {
    const data = await request("POST", path, { token: session.token, body });
    if (gen !== generation) return;
    const positionId = text(data.approval?.position_id, 64);
    const done =
      decision === "approve"
        ? `Approved ${what}${positionId ? `: position ${positionId} is opening.` : "."}`
        : `Rejected ${what}.`;
    setSignalsMessage(done, "good");
    signals.list = signals.list.filter((s) => s.key !== signal.key);
  } catch (error) {
    if (gen !== generation || error.status === 401) return;
    setSignalsMessage(`${what}: ${decisionError(error)}`, "bad");
  } finally {
    signals.busy.delete(signal.key);
    invalidate("signals");
  }
  if (gen === generation) refreshSignals();
}

/** The server's curve and figures, again, soon after a close (see AFTER_CLOSE_MS). */
function refreshAfterClose(tries = AFTER_CLOSE_TRIES) {
  if (afterCloseQueued || !session) return;
  afterCloseQueued = true;
  const before = analytics?.trades ?? -1;
  later(AFTER_CLOSE_MS, async () => {
    afterCloseQueued = false;
    await refreshAnalytics();
    if ((analytics?.trades ?? -1) <= before && tries > 1) refreshAfterClose(tries - 1);
  });
}

/** The server's curve again if it does not end at the account's balance (once at a time). */
function refreshIfBalanceMoved() {
  const balance = store.account?.balance ?? null;
  const end = analytics?.stats?.balance ?? null;
  if (balance === null || end === null || Math.abs(balance - end) < 0.005) return;
  if (afterCloseQueued || !session) return;
  afterCloseQueued = true;
  later(0, async () => {
    afterCloseQueued = false;
    await refreshAnalytics();
  });
}

async function refreshAnalytics() {
  const gen = generation;
  try {
    const data = await request("GET", "/api/v1/analytics", { token: session.token });
    if (gen !== generation) return ANALYTICS_EVERY_MS;
    analytics = {
      curve: curveFromAnalytics(data) ?? [],
      stats: statsFromAnalytics(data),
      trades: finite(data.trades),
    };
    invalidate("equity");
    return ANALYTICS_EVERY_MS;
  } catch (error) {
    if (gen !== generation) return ANALYTICS_EVERY_MS;
    // Without analytics the page draws the curve from the positions it receives.
    analytics = null;
    invalidate("equity");
    return error.missing ? MISSING_EVERY_MS : ANALYTICS_EVERY_MS;
  }
}

// -- closing a position by hand ---------------------------------------------------------------

function closeError(error) {
  if (error.status === 0) return "Close not sent: the server cannot be reached.";
  if (error.missing) return `Closing by hand is not available on this server (${error.status}).`;
  if (error.status === 409 || error.status === 422) return `Close refused: ${error.message}`;
  return `Close failed (${error.status} ${error.code}): ${error.message}`;
}

// Two clicks: the first arms the button for a few seconds, the second sends. A confirm()
// dialog would block the page (and the stream's rendering) while it is open.
async function onClose(id, button) {
  const request_ = ui.closing.get(id);
  if (request_?.step === "sending") return;
  if (request_?.step !== "confirm") {
    ui.closing.set(id, { step: "confirm", message: "Click again to close" });
    later(CONFIRM_MS, () => {
      if (ui.closing.get(id)?.step === "confirm") {
        ui.closing.delete(id);
        invalidate("positions");
      }
    });
    invalidate("positions");
    return;
  }
  const gen = generation;
  ui.closing.set(id, { step: "sending", message: "" });
  invalidate("positions");
  try {
    await request("POST", `/api/v1/positions/${encodeURIComponent(id)}/close`, {
      token: session.token,
    });
    if (gen !== generation) return;
    ui.closing.set(id, { step: "sent", message: "Close requested" });
  } catch (error) {
    if (gen !== generation || error.status === 401) return;
    ui.closing.set(id, { step: "error", message: closeError(error) });
  }
  invalidate("positions");
  button.focus();
}

// -- adopting a position found on the terminal ------------------------------------------------

// One click: adopting sends nothing to the terminal (it only has the engine watch the SL/TP
// the broker holds), and adopting twice is harmless. The stream's delta shows the result.
async function onAdopt(id, button) {
  if (ui.adopting.get(id)?.step === "sending") return;
  const gen = generation;
  ui.adopting.set(id, { step: "sending", message: "" });
  invalidate("positions");
  try {
    const adopted = await request("POST", `/api/v1/positions/${encodeURIComponent(id)}/adopt`, {
      token: session.token,
    });
    if (gen !== generation) return;
    ui.adopting.delete(id);
    if (adopted) store.upsertPosition(adopted);
  } catch (error) {
    if (gen !== generation || error.status === 401) return;
    const why = error.status === 0 ? "the server cannot be reached" : error.message;
    ui.adopting.set(id, { step: "error", message: `Adopt failed: ${why}` });
  }
  invalidate("positions");
  button.focus();
}

// -- logging in and out -----------------------------------------------------------------------

function loginError(error) {
  if (error.status === 401) return "Wrong username or password.";
  if (error.status === 429) {
    const wait = finite(error.details?.retry_after_s);
    return `Too many attempts. Try again${wait ? ` in ${Math.ceil(wait)} s` : " later"}.`;
  }
  if (error.status === 0) return "The server cannot be reached. Check the address and retry.";
  if (error.status === 400 || error.status === 422) return "Enter a username and a password.";
  return `Login failed (${error.status}): ${error.message}`;
}

/** Show the login form, with a message: "error" (red) or "info" (a plain note). */
function showLogin(message = "", kind = "error") {
  $("who").hidden = true;
  document.getElementById("dashboard-view").hidden = true;
  document.getElementById("login-view").hidden = false;
  const note = $("login-message");
  note.textContent = message;
  note.className = kind === "info" ? "muted" : "error";
  note.hidden = !message;
  $("login-username").focus();
}

/** Start the dashboard for a session (fresh from the form or restored from the tab). */
function enter(next, restored = false) {
  session = next;
  saveSession(next);
  $("username").textContent = next.username;
  $("who").hidden = false;
  $("who").title = `Session valid until ${time(next.expiresAtMs)}`;
  document.getElementById("login-view").hidden = true;
  document.getElementById("dashboard-view").hidden = false;
  setSignalsStatus("Loading…");
  // setTimeout cannot wait longer than ~24.8 days; tokens live far less.
  later(Math.min(next.expiresAtMs - Date.now(), 2 ** 31 - 1), () =>
    leave("Your session has expired. Log in again."),
  );
  every(1000, () => {
    showStatus(); // the reconnect countdown
    invalidate("prices", "signals"); // staleness of prices, expiry of signals
  });
  if (restored) {
    // A token from an earlier visit may have been revoked by a server restart: check it.
    request("GET", "/api/v1/auth/me", { token: next.token }).catch(() => {});
  }
  startStream();
  poll(refreshSignals, SIGNALS_EVERY_MS);
  poll(refreshAnalytics, ANALYTICS_EVERY_MS);
  poll(refreshCandles, CANDLES_EVERY_MS);
  invalidate("positions", "prices", "devices", "alerts", "account", "signals", "equity");
}

/** Back to the login form, forgetting everything of the session. */
function leave(message = "", kind = "error") {
  generation += 1;
  stream?.stop();
  stream = null;
  session = null;
  cancelTimers();
  equityQueued = false;
  afterCloseQueued = false;
  clearSession();
  store.reset();
  ui.closing.clear();
  signals.list = [];
  signals.busy.clear();
  analytics = null;
  candles.symbol = "";
  candles.list = [];
  setSignalsMessage("", "");
  onStatus({ state: "offline" });
  invalidate("positions", "prices", "devices", "alerts", "account", "signals", "equity");
  showLogin(message, kind);
}

function wireLoginForm() {
  const form = $("login-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const username = $("login-username").value.trim();
    const password = $("login-password").value;
    if (!username || !password) {
      showLogin("Enter your username and password.");
      return;
    }
    const submit = $("login-submit");
    submit.disabled = true;
    try {
      const next = await login(username, password);
      $("login-password").value = "";
      $("login-message").hidden = true;
      enter(next);
    } catch (error) {
      showLogin(loginError(error));
    } finally {
      submit.disabled = false;
    }
  });
  $("logout").addEventListener("click", () => leave("You have logged out.", "info"));
  $("history-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    readHistoryFilter();
  });
  $("history-clear").addEventListener("click", () => {
    $("history-filter").reset();
    readHistoryFilter();
  });
  $("history-export").addEventListener("click", () => exportCsv());
  $("candles-symbol").addEventListener("change", (event) => {
    candles.symbol = event.target.value;
    candles.list = [];
    invalidate("candles");
    refreshCandles();
  });
}

function boot() {
  request.onUnauthorized = () => {
    if (session) leave("Your session is no longer valid. Log in again.");
  };
  wireLoginForm();
  new ResizeObserver(() => invalidate("equity")).observe($("equity-canvas"));
  new ResizeObserver(() => invalidate("candles")).observe($("candles-canvas"));
  const restored = loadSession();
  if (restored) enter(restored, true);
  else showLogin();
}

boot();
