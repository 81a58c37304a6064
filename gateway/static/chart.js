// The equity curve, drawn by hand on a <canvas> (no chart library: the page must work offline
// and without a build step). Points are {timeMs, equity}.

import { finite, money, signedMoney, time } from "./format.js";

/** The curve from /api/v1/analytics' `equity_curve`, or null if the answer is unusable. */
export function curveFromAnalytics(data) {
  if (!Array.isArray(data?.equity_curve)) return null;
  const points = [];
  for (const raw of data.equity_curve) {
    const timeMs = finite(raw?.time_ms);
    const equity = finite(raw?.equity);
    if (timeMs !== null && equity !== null) points.push({ timeMs, equity });
  }
  points.sort((a, b) => a.timeMs - b.timeMs);
  return points;
}

/**
 * The figures of an /api/v1/analytics answer, as the page shows them. A drawdown is a fraction
 * >= 0 (0.005 reads "0.50 %"), the drawdown guard's sign, so the account's drawdown and the
 * curve's maximum read alike. A figure the server could not give (null, with a reason: too few
 * trades for a Sharpe ratio, no closed trade for a drawdown) stays null, with its reason.
 */
export function statsFromAnalytics(data) {
  const reason = (value) => (typeof value === "string" && value ? value : null);
  const curve = curveFromAnalytics(data) ?? [];
  return {
    realized: finite(data?.pl?.realized),
    floating: finite(data?.pl?.floating),
    sharpe: finite(data?.sharpe),
    sharpeReason: reason(data?.sharpe_reason),
    maxDrawdown: finite(data?.max_drawdown),
    maxDrawdownReason: reason(data?.max_drawdown_reason),
    startingBalance: finite(data?.starting_balance),
    balance: finite(data?.balance),
    last: curve.length ? curve[curve.length - 1].equity : null,
  };
}

/**
 * The curve the page can build on its own: the realised P&L of the closed positions it knows,
 * summed in the order they closed, ending now at realised + floating P&L. It starts at zero
 * when the first of those positions (or of the open ones, `sinceMs`) was opened.
 *
 * It starts from zero rather than from the account balance on purpose: the balance in a
 * snapshot is the device's last account report, which can lag a close by a heartbeat, so
 * anchoring on it would misplace the whole curve by that close. P&L needs no anchor.
 */
export function curveFromPositions(closed, floating, nowMs, sinceMs = null) {
  const closes = closed
    .filter((p) => p.pl !== null && p.closeTimeMs !== null)
    .sort((a, b) => a.closeTimeMs - b.closeTimeMs);
  if (!closes.length && floating === null) return [];
  const starts = closes.map((p) => p.openTimeMs ?? p.closeTimeMs);
  if (sinceMs !== null) starts.push(sinceMs);
  const points = [{ timeMs: Math.min(nowMs, ...starts), equity: 0 }];
  let total = 0;
  for (const p of closes) {
    total += p.pl;
    points.push({ timeMs: p.closeTimeMs, equity: Math.round(total * 100) / 100 });
  }
  points.push({ timeMs: nowMs, equity: Math.round((total + (floating ?? 0)) * 100) / 100 });
  return points;
}

function colours(canvas) {
  const style = getComputedStyle(canvas);
  const read = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
  return {
    line: read("--chart-line", "#1f5fbf"),
    fill: read("--chart-fill", "rgba(31, 95, 191, 0.12)"),
    grid: read("--chart-grid", "#d8dde6"),
    label: read("--chart-label", "#3d4654"),
  };
}

/** Fit the canvas' backing store to its CSS size and the screen's pixel ratio. */
function fit(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth));
  const height = Math.max(1, Math.round(canvas.clientHeight));
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  return { context, width, height };
}

/**
 * Draw `points` on `canvas`; an empty list draws `emptyText`. Returns a one-line summary for
 * screen readers (the canvas itself is only a picture).
 */
export function drawEquity(
  canvas,
  points,
  { currency = "", emptyText = "No data yet", signed = false } = {},
) {
  const { context: g, width, height } = fit(canvas);
  const c = colours(canvas);
  g.font = "12px system-ui, sans-serif";
  if (!points.length) {
    g.fillStyle = c.label;
    g.textAlign = "center";
    g.textBaseline = "middle";
    g.fillText(emptyText, width / 2, height / 2);
    return emptyText;
  }
  const pad = { left: 84, right: 16, top: 14, bottom: 26 };
  const plotW = Math.max(1, width - pad.left - pad.right);
  const plotH = Math.max(1, height - pad.top - pad.bottom);
  // One point (or several at one instant) is drawn as a level line across the plot.
  const series = points.length === 1 ? [points[0], points[0]] : points;
  const t0 = series[0].timeMs;
  const t1 = series.at(-1).timeMs;
  let lo = Math.min(...series.map((p) => p.equity));
  let hi = Math.max(...series.map((p) => p.equity));
  // A flat curve still needs a vertical range; otherwise add 10 % headroom on each side.
  const span = hi - lo || Math.max(1, Math.abs(hi) * 0.01);
  lo -= span * 0.1;
  hi += span * 0.1;
  const n = series.length;
  const x = (p, i) =>
    pad.left + (t1 === t0 ? (i / (n - 1)) * plotW : ((p.timeMs - t0) / (t1 - t0)) * plotW);
  const y = (v) => pad.top + (1 - (v - lo) / (hi - lo)) * plotH;

  // Grid and value labels.
  g.strokeStyle = c.grid;
  g.fillStyle = c.label;
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let i = 0; i <= 3; i += 1) {
    const v = lo + ((hi - lo) * i) / 3;
    const yy = Math.round(y(v)) + 0.5;
    g.beginPath();
    g.moveTo(pad.left, yy);
    g.lineTo(width - pad.right, yy);
    g.stroke();
    g.fillText(signed ? signedMoney(v) : money(v), pad.left - 8, yy);
  }
  g.textBaseline = "alphabetic";
  g.textAlign = "left";
  g.fillText(time(t0), pad.left, height - 8);
  g.textAlign = "right";
  g.fillText(time(t1), width - pad.right, height - 8);

  // The curve, the area under it, then the last point.
  g.beginPath();
  series.forEach((p, i) => (i ? g.lineTo(x(p, i), y(p.equity)) : g.moveTo(x(p, i), y(p.equity))));
  g.strokeStyle = c.line;
  g.lineWidth = 2;
  g.stroke();
  g.lineTo(x(series.at(-1), n - 1), pad.top + plotH);
  g.lineTo(x(series[0], 0), pad.top + plotH);
  g.closePath();
  g.fillStyle = c.fill;
  g.fill();
  const last = series.at(-1);
  g.beginPath();
  g.arc(x(last, n - 1), y(last.equity), 3.5, 0, Math.PI * 2);
  g.fillStyle = c.line;
  g.fill();

  const show = signed ? signedMoney : money;
  return (
    `from ${show(points[0].equity, currency)} to ${show(last.equity, currency)}, ` +
    `${points.length} points between ${time(t0)} and ${time(t1)}.`
  );
}

// -- candles ----------------------------------------------------------------------------------

/** The candles of /api/v1/market/{symbol}/candles, checked ({t, o, h, l, c}, oldest first). */
export function candlesFromMarket(data) {
  if (!Array.isArray(data?.candles)) return [];
  const out = [];
  for (const raw of data.candles) {
    const c = { t: finite(raw?.t), o: finite(raw?.o), h: finite(raw?.h), l: finite(raw?.l), c: finite(raw?.c) };
    if (Object.values(c).every((v) => v !== null) && c.l <= Math.min(c.o, c.c) && c.h >= Math.max(c.o, c.c)) {
      out.push(c);
    }
  }
  return out.sort((a, b) => a.t - b.t);
}

/**
 * What the chart marks for `symbol` among `positions` (the page's views): an entry per
 * opened position, an exit per closed one, and the SL and TP lines of the live ones.
 */
export function tradeMarks(positions, symbol) {
  const marks = { entries: [], exits: [], lines: [] };
  for (const p of positions) {
    if (p.symbol !== symbol) continue;
    if (p.openPrice !== null && p.openTimeMs !== null) {
      marks.entries.push({ timeMs: p.openTimeMs, price: p.openPrice, side: p.side });
    }
    if (p.closePrice !== null && p.closeTimeMs !== null) {
      marks.exits.push({ timeMs: p.closeTimeMs, price: p.closePrice });
    } else if (p.state !== "closed" && p.state !== "rejected") {
      if (p.sl !== null) marks.lines.push({ kind: "sl", price: p.sl });
      if (p.tp !== null) marks.lines.push({ kind: "tp", price: p.tp });
    }
  }
  return marks;
}

/**
 * Candles with the trades drawn over them. Only marks inside the candles' time span are
 * drawn (an entry before the first candle has no place on it); SL/TP lines always are, and
 * the price range stretches to show them. Returns a summary for screen readers.
 */
export function drawCandles(canvas, candles, marks, { intervalMs = 60_000, priceText = String } = {}) {
  const { context: g, width, height } = fit(canvas);
  const c = colours(canvas);
  g.font = "12px system-ui, sans-serif";
  if (!candles.length) {
    g.fillStyle = c.label;
    g.textAlign = "center";
    g.textBaseline = "middle";
    g.fillText("No candles yet", width / 2, height / 2);
    return "no candles yet";
  }
  const pad = { left: 84, right: 12, top: 12, bottom: 24 };
  const plotW = Math.max(1, width - pad.left - pad.right);
  const plotH = Math.max(1, height - pad.top - pad.bottom);
  const t0 = candles[0].t;
  const t1 = candles.at(-1).t + intervalMs;
  const inSpan = (m) => m.timeMs >= t0 && m.timeMs <= t1;
  const entries = marks.entries.filter(inSpan);
  const exits = marks.exits.filter(inSpan);
  const prices = [
    ...candles.flatMap((k) => [k.h, k.l]),
    ...entries.map((m) => m.price),
    ...exits.map((m) => m.price),
    ...marks.lines.map((m) => m.price),
  ];
  let lo = Math.min(...prices);
  let hi = Math.max(...prices);
  const span = hi - lo || Math.max(1e-6, Math.abs(hi) * 0.001);
  lo -= span * 0.05;
  hi += span * 0.05;
  const x = (ms) => pad.left + ((ms - t0) / (t1 - t0)) * plotW;
  const y = (v) => pad.top + (1 - (v - lo) / (hi - lo)) * plotH;
  const style = getComputedStyle(canvas);
  const up = style.getPropertyValue("--good").trim() || "#0a6b2d";
  const down = style.getPropertyValue("--bad").trim() || "#b0231b";

  g.strokeStyle = c.grid;
  g.fillStyle = c.label;
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let i = 0; i <= 3; i += 1) {
    const v = lo + ((hi - lo) * i) / 3;
    const yy = Math.round(y(v)) + 0.5;
    g.beginPath();
    g.moveTo(pad.left, yy);
    g.lineTo(width - pad.right, yy);
    g.stroke();
    g.fillText(priceText(v), pad.left - 6, yy);
  }
  g.textBaseline = "alphabetic";
  g.textAlign = "left";
  g.fillText(time(t0), pad.left, height - 6);
  g.textAlign = "right";
  g.fillText(time(t1), width - pad.right, height - 6);

  const body = Math.max(1, Math.min(12, (plotW / candles.length) * 0.6));
  for (const k of candles) {
    const cx = x(k.t + intervalMs / 2);
    const colour = k.c >= k.o ? up : down;
    g.strokeStyle = g.fillStyle = colour;
    g.beginPath();
    g.moveTo(cx, y(k.h));
    g.lineTo(cx, y(k.l));
    g.stroke();
    const top = y(Math.max(k.o, k.c));
    g.fillRect(cx - body / 2, top, body, Math.max(1, y(Math.min(k.o, k.c)) - top));
  }

  g.setLineDash([6, 4]);
  g.lineWidth = 1.5;
  for (const line of marks.lines) {
    const yy = y(line.price);
    g.strokeStyle = line.kind === "sl" ? down : up;
    g.beginPath();
    g.moveTo(pad.left, yy);
    g.lineTo(width - pad.right, yy);
    g.stroke();
    g.fillStyle = g.strokeStyle;
    g.textAlign = "left";
    g.fillText(line.kind.toUpperCase(), pad.left + 4, yy - 3);
  }
  g.setLineDash([]);
  g.lineWidth = 2;
  for (const m of entries) {
    const cx = x(m.timeMs);
    const cy = y(m.price);
    const dir = m.side === "buy" ? 1 : -1; // ▲ under a buy's price, ▼ over a sell's
    g.fillStyle = c.line;
    g.beginPath();
    g.moveTo(cx, cy);
    g.lineTo(cx - 6, cy + dir * 10);
    g.lineTo(cx + 6, cy + dir * 10);
    g.closePath();
    g.fill();
  }
  for (const m of exits) {
    const cx = x(m.timeMs);
    const cy = y(m.price);
    g.strokeStyle = c.label;
    g.beginPath();
    g.moveTo(cx - 5, cy - 5);
    g.lineTo(cx + 5, cy + 5);
    g.moveTo(cx + 5, cy - 5);
    g.lineTo(cx - 5, cy + 5);
    g.stroke();
  }
  const count = (kind) => marks.lines.filter((m) => m.kind === kind).length;
  return (
    `${candles.length} candles between ${time(t0)} and ${time(t1)}, ${entries.length} entries, ` +
    `${exits.length} exits, ${count("sl")} stop-loss lines, ${count("tp")} take-profit lines.`
  );
}
