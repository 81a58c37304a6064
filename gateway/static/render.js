// Rendering: the store into the DOM. Data only ever reaches the page through textContent and
// dataset (never innerHTML), so a hostile symbol or alert message is shown, not run.
//
// Lists are reconciled by key: a row that already exists is updated in place, never rebuilt.
// Prices arrive several times a second; rebuilding rows would swallow clicks on their buttons
// and make screen readers re-announce whole tables.

import {
  DASH,
  duration,
  money,
  percent,
  price,
  signedMoney,
  time,
  tone,
  volume,
} from "./format.js";

const STALE_PRICE_MS = 15_000;

/** Create an element. `data` goes to dataset, `attrs` through setAttribute, `text` as text. */
export function el(tag, { className = "", text = null, data = {}, attrs = {} } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  for (const [k, v] of Object.entries(data)) node.dataset[k] = v;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

/** Make `container`'s children match `items`, one node per key, in order. */
export function syncKeyed(container, items, keyOf, create, update) {
  const existing = new Map();
  for (const node of container.children) existing.set(node.dataset.key, node);
  const wanted = items.map((item) => {
    const key = keyOf(item);
    let node = existing.get(key);
    if (node) existing.delete(key);
    else {
      node = create(item);
      node.dataset.key = key;
    }
    update(node, item);
    return node;
  });
  for (const node of existing.values()) node.remove();
  wanted.forEach((node, i) => {
    if (container.children[i] !== node) container.insertBefore(node, container.children[i] ?? null);
  });
}

/** Set a cell's text (and optionally its class) only when it changed. */
function set(node, value, className = null) {
  if (node.textContent !== value) node.textContent = value;
  if (className !== null && node.className !== className) node.className = className;
}

function cell(testid, className = "") {
  return el("td", { className, data: { testid } });
}

function part(row, testid) {
  return row.querySelector(`[data-testid="${testid}"]`);
}

function badge(label, kind) {
  return el("span", { className: `badge ${kind}`, text: label });
}

function stateBadge(node, state) {
  const label = state.toUpperCase();
  const span = node.firstElementChild ?? node.appendChild(el("span"));
  set(span, label, `badge state-${state.replace(/[^a-z_]/g, "")}`);
}

function sideText(side) {
  return side === "buy" ? "BUY" : "SELL";
}

function showEmpty(node, empty) {
  if (node.hidden !== !empty) node.hidden = !empty;
}

// -- positions -------------------------------------------------------------------------------

/**
 * @param {object} ui per-position UI state: ui.closing.get(id) -> {step, message}
 * @param {(id: string, button: HTMLButtonElement) => void} onClose
 * @param {(id: string, button: HTMLButtonElement) => void} onAdopt
 */
export function renderLivePositions(store, ui, onClose, onAdopt) {
  const body = document.querySelector('[data-testid="positions-body"]');
  const positions = store.livePositions();
  const currency = store.account?.currency ?? "";
  syncKeyed(
    body,
    positions,
    (p) => p.id,
    () => {
      // Cells marked "opt" give way on a narrow screen (style.css): symbol, side, P&L and the
      // actions stay, so a phone shows what matters without scrolling sideways.
      const row = el("tr", { data: { testid: "position-row" } }, [
        cell("pos-opened", "opt"),
        cell("pos-ticket", "num opt"),
        cell("pos-symbol"),
        cell("pos-side"),
        cell("pos-volume", "num opt"),
        cell("pos-open", "num opt"),
        cell("pos-sl", "num opt"),
        cell("pos-tp", "num opt"),
        cell("pos-price", "num opt"),
        cell("pos-commission", "num opt"),
        cell("pos-swap", "num opt"),
        cell("pos-pl", "num"),
        cell("pos-state", "opt"),
        cell("pos-reason", "opt"),
        cell("pos-actions", "actions"),
      ]);
      const button = el("button", {
        className: "danger small",
        text: "Close",
        data: { testid: "pos-close" },
        attrs: { type: "button" },
      });
      button.addEventListener("click", () => onClose(row.dataset.positionId, button));
      // The hook for editing SL/TP and trailing (position_edit.js binds it; nothing here).
      const edit = el("button", {
        className: "small edit-position",
        text: "Edit",
        data: { testid: "pos-edit" },
        attrs: { type: "button" },
      });
      // A position found on the terminal is the trader's until adopted: this is its only action.
      const adopt = el("button", {
        className: "small",
        text: "Adopt",
        data: { testid: "pos-adopt" },
        attrs: { type: "button" },
      });
      adopt.addEventListener("click", () => onAdopt(row.dataset.positionId, adopt));
      const note = el("span", { className: "note", data: { testid: "pos-action-note" } });
      part(row, "pos-actions").append(button, edit, adopt, note);
      return row;
    },
    (row, p) => {
      row.dataset.positionId = p.id;
      row.dataset.state = p.state;
      row.dataset.adopted = String(p.adopted);
      const edit = part(row, "pos-edit");
      edit.dataset.positionId = p.id;
      edit.hidden = !p.adopted;
      edit.setAttribute("aria-label", `Edit ${p.symbol} ${sideText(p.side)} ${p.id}`);
      const adopting = ui.adopting.get(p.id);
      const adopt = part(row, "pos-adopt");
      adopt.hidden = p.adopted;
      adopt.disabled = adopting?.step === "sending";
      set(adopt, adopting?.step === "sending" ? "Adopting…" : "Adopt");
      adopt.setAttribute("aria-label", `Adopt ${p.symbol} ${sideText(p.side)} ${p.id}`);
      set(part(row, "pos-opened"), time(p.openTimeMs));
      set(part(row, "pos-ticket"), p.ticket === null ? DASH : String(p.ticket));
      set(part(row, "pos-symbol"), p.symbol);
      set(part(row, "pos-side"), sideText(p.side), `side-${p.side}`);
      set(part(row, "pos-volume"), volume(p.volume));
      set(part(row, "pos-open"), price(p.symbol, p.openPrice));
      set(part(row, "pos-sl"), price(p.symbol, p.sl));
      set(part(row, "pos-tp"), price(p.symbol, p.tp));
      set(part(row, "pos-price"), price(p.symbol, store.mark(p)));
      // Costs as the terminal reported them (a dash from an EA that does not); the P&L beside
      // them is the price P&L, so the trader's net is the three together.
      set(part(row, "pos-commission"), signedMoney(p.commission), `num opt ${tone(p.commission)}`);
      set(part(row, "pos-swap"), signedMoney(p.swap), `num opt ${tone(p.swap)}`);
      const pl = store.livePl(p);
      set(part(row, "pos-pl"), signedMoney(pl, currency), `num ${tone(pl)}`);
      stateBadge(part(row, "pos-state"), p.state);
      const origin = p.adopted ? "" : "external, not adopted";
      const reason = [origin, p.closeReason, ...p.flags].filter(Boolean).join(" · ");
      set(part(row, "pos-reason"), reason || "");
      const closable = p.state === "open" || p.state === "close_failed";
      const request = ui.closing.get(p.id);
      const button = part(row, "pos-close");
      button.hidden = !closable || !p.adopted;
      button.disabled = request?.step === "sending";
      const label = request?.step === "confirm" ? "Confirm close" : "Close";
      set(button, request?.step === "sending" ? "Closing…" : label);
      button.setAttribute("aria-label", `${label} ${p.symbol} ${sideText(p.side)} ${p.id}`);
      set(part(row, "pos-action-note"), (p.adopted ? request : adopting)?.message ?? "");
    },
  );
  showEmpty(document.querySelector('[data-testid="positions-empty"]'), positions.length === 0);
  document.querySelector('[data-testid="positions-table"]').hidden = positions.length === 0;
  set(document.querySelector('[data-testid="positions-count"]'), String(positions.length));
}

/** @param {(p: object) => boolean} keep the history filter (symbol and dates) */
export function renderClosedPositions(store, keep = () => true) {
  const body = document.querySelector('[data-testid="closed-body"]');
  const positions = store.closedPositions().filter(keep).slice(0, 100);
  const currency = store.account?.currency ?? "";
  syncKeyed(
    body,
    positions,
    (p) => p.id,
    () =>
      el("tr", { data: { testid: "closed-row" } }, [
        cell("pos-ticket", "num opt"),
        cell("pos-symbol"),
        cell("pos-side", "opt"),
        cell("pos-volume", "num opt"),
        cell("pos-open", "num opt"),
        cell("pos-close-price", "num opt"),
        cell("pos-pl", "num"),
        cell("pos-state", "opt"),
        cell("pos-reason"),
        cell("pos-opened", "opt"),
        cell("pos-closed-at"),
      ]),
    (row, p) => {
      row.dataset.positionId = p.id;
      row.dataset.state = p.state;
      row.dataset.symbol = p.symbol;
      set(part(row, "pos-ticket"), p.ticket === null ? DASH : String(p.ticket));
      set(part(row, "pos-opened"), time(p.openTimeMs));
      set(part(row, "pos-symbol"), p.symbol);
      set(part(row, "pos-side"), sideText(p.side), `side-${p.side}`);
      set(part(row, "pos-volume"), volume(p.volume));
      set(part(row, "pos-open"), price(p.symbol, p.openPrice));
      set(part(row, "pos-close-price"), price(p.symbol, p.closePrice));
      if (p.fillPending) set(part(row, "pos-pl"), "fill pending", "num fill-pending");
      else set(part(row, "pos-pl"), signedMoney(p.pl, currency), `num ${tone(p.pl)}`);
      stateBadge(part(row, "pos-state"), p.state);
      const why = [p.closeReason, p.fillPending ? "fill pending" : ""].filter(Boolean);
      set(part(row, "pos-reason"), why.join(" · ") || DASH);
      set(part(row, "pos-closed-at"), time(p.closeTimeMs ?? p.updatedMs));
    },
  );
  showEmpty(document.querySelector('[data-testid="closed-empty"]'), positions.length === 0);
  document.querySelector('[data-testid="closed-table"]').hidden = positions.length === 0;
}

// -- prices, devices, alerts, account ---------------------------------------------------------

export function renderPrices(store) {
  const list = document.querySelector('[data-testid="prices"]');
  const now = store.nowMs();
  const symbols = [...store.prices.keys()].sort();
  syncKeyed(
    list,
    symbols,
    (s) => s,
    () =>
      el("li", { className: "quote", data: { testid: "price" } }, [
        el("span", { className: "symbol", data: { testid: "price-symbol" } }),
        el("span", { className: "bid num", data: { testid: "price-bid" } }),
        el("span", { className: "ask num", data: { testid: "price-ask" } }),
        el("span", { className: "spread num", data: { testid: "price-spread" } }),
      ]),
    (item, symbol) => {
      const q = store.prices.get(symbol);
      item.dataset.symbol = symbol;
      const stale = now - q.timeMs > STALE_PRICE_MS;
      const move = q.move > 0 ? "up" : q.move < 0 ? "down" : "";
      item.className = `quote ${move}${stale ? " stale" : ""}`;
      item.title = `${symbol} at ${time(q.timeMs)}${stale ? " (stale)" : ""}`;
      set(part(item, "price-symbol"), symbol);
      set(part(item, "price-bid"), price(symbol, q.bid));
      set(part(item, "price-ask"), price(symbol, q.ask));
      const digits = price(symbol, q.bid).split(".")[1]?.length ?? 0;
      set(part(item, "price-spread"), `spread ${(q.ask - q.bid).toFixed(digits)}`);
    },
  );
  showEmpty(document.querySelector('[data-testid="prices-empty"]'), symbols.length === 0);
}

export function renderDevices(store) {
  const list = document.querySelector('[data-testid="devices"]');
  const devices = [...store.devices.values()].sort((a, b) => a.id.localeCompare(b.id));
  syncKeyed(
    list,
    devices,
    (d) => d.id,
    () =>
      el("li", { className: "device", data: { testid: "device-row" } }, [
        el("span", { className: "device-id", data: { testid: "device-id" } }),
        el("span", { className: "badges", data: { testid: "device-badges" } }),
        el("span", { className: "muted", data: { testid: "device-detail" } }),
      ]),
    (item, d) => {
      item.dataset.deviceId = d.id;
      item.dataset.connected = String(d.connected);
      set(part(item, "device-id"), d.id);
      const badges = part(item, "device-badges");
      badges.replaceChildren(
        d.connected ? badge("connected", "good") : badge("disconnected", "bad"),
        ...(d.stale ? [badge("stale", "warn")] : []),
        d.healthy ? badge("healthy", "good") : badge("unhealthy", "bad"),
      );
      const who = [d.broker, d.login && `#${d.login}`].filter(Boolean).join(" ");
      const seen = d.lastSeenMs ? `last seen ${time(d.lastSeenMs)}` : "never seen";
      set(part(item, "device-detail"), [who, seen].filter(Boolean).join(" · "));
    },
  );
  showEmpty(document.querySelector('[data-testid="devices-empty"]'), devices.length === 0);
}

const alertKey = (a) =>
  `${a.timeMs}|${a.kind}|${a.level}|${a.symbol}|${a.positionId}|${a.message}`;

export function renderAlerts(store) {
  const list = document.querySelector('[data-testid="alerts"]');
  syncKeyed(
    list,
    store.alerts,
    alertKey,
    (a) =>
      el("li", { className: `alert level-${a.level}`, data: { testid: "alert-item", level: a.level } }, [
        el("span", { className: `badge level-${a.level}`, text: a.level.toUpperCase() }),
        el("time", { className: "muted", text: time(a.timeMs) }),
        el("strong", { text: [a.kind, a.symbol].filter(Boolean).join(" · ") }),
        el("span", { className: "message", text: a.message, data: { testid: "alert-message" } }),
      ]),
    () => {},
  );
  showEmpty(document.querySelector('[data-testid="alerts-empty"]'), store.alerts.length === 0);
}

export function renderAccount(store) {
  const a = store.account;
  const currency = a?.currency ?? "";
  const field = (testid) => document.querySelector(`[data-testid="${testid}"]`);
  set(field("account-balance"), money(a?.balance, currency));
  set(field("account-equity"), money(a?.equity, currency));
  const floating = store.floatingPl();
  set(field("account-floating"), signedMoney(floating, currency), tone(floating));
  set(field("account-drawdown"), a ? percent(a.drawdown) : DASH);
  const level = a?.guardLevel ?? "normal";
  const guard = field("account-guard");
  set(guard, a ? level.toUpperCase() : DASH, a ? `badge guard-${level}` : "");
  set(field("account-blocked"), a ? (a.opensBlocked ? "blocked" : "allowed") : DASH,
    a?.opensBlocked ? "negative" : "");
  set(field("account-asof"), a ? `as of ${time(a.asOfMs)}` : "");
}

// -- signals ---------------------------------------------------------------------------------

/**
 * @param {object[]} signals normalised pending signals
 * @param {Map<string, string>} busy signal key -> "approve" | "reject" while a request runs
 * @param {(signal: object, decision: string) => void} onDecide
 */
export function renderSignals(signals, busy, nowMs, onDecide) {
  const body = document.querySelector('[data-testid="signals-body"]');
  syncKeyed(
    body,
    signals,
    (s) => s.key,
    (s) => {
      const approve = el("button", {
        className: "primary small",
        text: "Approve",
        data: { testid: "signal-approve" },
        attrs: { type: "button", "aria-label": `Approve ${s.symbol} ${s.side} signal ${s.signalId}` },
      });
      const reject = el("button", {
        className: "small",
        text: "Reject",
        data: { testid: "signal-reject" },
        attrs: { type: "button", "aria-label": `Reject ${s.symbol} ${s.side} signal ${s.signalId}` },
      });
      const row = el("tr", { data: { testid: "signal-row" } }, [
        cell("sig-created", "opt"),
        cell("sig-symbol"),
        cell("sig-side"),
        cell("sig-entry", "num"),
        cell("sig-sl", "num"),
        cell("sig-tp", "num"),
        cell("sig-size", "num"),
        cell("sig-expires", "opt"),
        cell("sig-comment", "comment opt"),
        cell("sig-actions", "actions"),
      ]);
      // An optional lot size for the approval; empty keeps the sizing rule's.
      const lots = el("input", {
        className: "lots",
        data: { testid: "sig-volume" },
        attrs: {
          type: "number", min: "0", step: "any", inputmode: "decimal", placeholder: "lots",
          "aria-label": `Lot size to approve ${s.symbol} ${s.side} signal ${s.signalId} with`,
        },
      });
      part(row, "sig-actions").append(lots, approve, reject);
      approve.addEventListener("click", () => onDecide(row.signal, "approve", lots.value));
      reject.addEventListener("click", () => onDecide(row.signal, "reject"));
      return row;
    },
    (row, s) => {
      row.signal = s;
      row.dataset.signalKey = s.key;
      set(part(row, "sig-created"), time(s.createdAtMs));
      set(part(row, "sig-symbol"), s.symbol);
      set(part(row, "sig-side"), sideText(s.side), `side-${s.side}`);
      const entry = s.entry === null ? `${s.orderType || "market"}` : price(s.symbol, s.entry);
      set(part(row, "sig-entry"), entry);
      set(part(row, "sig-sl"), price(s.symbol, s.sl));
      set(part(row, "sig-tp"), price(s.symbol, s.tp));
      const size = s.volume !== null ? `${volume(s.volume)} lot` : s.riskPercent !== null
        ? `${s.riskPercent} % risk` : DASH;
      set(part(row, "sig-size"), size);
      const expired = s.expiresAtMs !== null && s.expiresAtMs <= nowMs;
      const expires = s.expiresAtMs === null ? "never" : expired ? "expired"
        : `in ${duration(s.expiresAtMs - nowMs)}`;
      set(part(row, "sig-expires"), expires, expired ? "negative" : "");
      set(part(row, "sig-comment"), s.comment);
      const pending = busy.get(s.key);
      const [, approve, reject] = part(row, "sig-actions").children;
      approve.disabled = Boolean(pending) || expired;
      reject.disabled = Boolean(pending);
      set(approve, pending === "approve" ? "Approving…" : "Approve");
      set(reject, pending === "reject" ? "Rejecting…" : "Reject");
    },
  );
  document.querySelector('[data-testid="signals-table"]').hidden = signals.length === 0;
}

// -- equity ----------------------------------------------------------------------------------

export function renderAnalytics(stats, currency) {
  const field = (testid) => document.querySelector(`[data-testid="${testid}"]`);
  const box = field("analytics");
  box.hidden = !stats;
  if (!stats) return;
  set(field("analytics-realized"), signedMoney(stats.realized, currency), tone(stats.realized));
  set(field("analytics-floating"), signedMoney(stats.floating, currency), tone(stats.floating));
  // A figure the server could not give reads as a dash, its reason on hover and for screen
  // readers: never a number it did not compute.
  const figure = (node, shown, reason) => {
    set(node, shown);
    const why = shown === DASH && reason ? reason : "";
    if (node.title !== why) node.title = why;
    if (why) node.setAttribute("aria-description", why);
    else node.removeAttribute("aria-description");
  };
  const sharpe = stats.sharpe === null ? DASH : stats.sharpe.toFixed(2);
  figure(field("analytics-sharpe"), sharpe, stats.sharpeReason);
  figure(field("analytics-drawdown"), percent(stats.maxDrawdown), stats.maxDrawdownReason);
}

