// Parsing and formatting helpers. Every function accepts anything and never throws: a malformed
// field from the server shows as a dash instead of breaking a render half-way through.

export const DASH = "—";

/** The value if it is a finite number, else null. */
export function finite(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

/** The value if it is a string (cut to `max` characters), else "". */
export function text(value, max = 1024) {
  return typeof value === "string" ? value.slice(0, max) : "";
}

/** Decimals needed to show `value` exactly (0..8). */
function decimalsOf(value) {
  for (let d = 0; d <= 8; d += 1) {
    const scaled = value * 10 ** d;
    if (Math.abs(scaled - Math.round(scaled)) < 1e-6) return d;
  }
  return 8;
}

// The server sends prices rounded to the instrument's digits, but a float such as 1284.1 hides
// its trailing zero. Remembering the most decimals seen per symbol keeps columns aligned and
// stops the last digit from flickering in and out.
const priceDecimals = new Map();

export function notePrice(symbol, value) {
  const v = finite(value);
  if (v === null) return;
  const seen = priceDecimals.get(symbol) ?? 0;
  const d = decimalsOf(v);
  if (d > seen) priceDecimals.set(symbol, d);
}

export function price(symbol, value) {
  const v = finite(value);
  if (v === null) return DASH;
  notePrice(symbol, v);
  return v.toFixed(priceDecimals.get(symbol) ?? 2);
}

const moneyFormat = new Intl.NumberFormat(undefined, {
  minimumFractionDigits: 2,
  maximumFractionDigits: 2,
});

export function money(value, currency = "") {
  const v = finite(value);
  if (v === null) return DASH;
  const amount = moneyFormat.format(v);
  return currency ? `${amount} ${currency}` : amount;
}

/** Money with an explicit sign, for profit and loss. */
export function signedMoney(value, currency = "") {
  const v = finite(value);
  if (v === null) return DASH;
  const formatted = money(Math.abs(v), currency);
  if (v > 0) return `+${formatted}`;
  if (v < 0) return `−${formatted}`;
  return formatted;
}

/** "positive", "negative" or "" (the CSS class that colours a P&L). */
export function tone(value) {
  const v = finite(value);
  if (v === null || v === 0) return "";
  return v > 0 ? "positive" : "negative";
}

export function percent(fraction, digits = 2) {
  const v = finite(fraction);
  return v === null ? DASH : `${(v * 100).toFixed(digits)} %`;
}

export function volume(value) {
  const v = finite(value);
  return v === null ? DASH : String(Number(v.toFixed(8)));
}

/** Local time of a ms timestamp; the date too when it is not today. */
export function time(ms) {
  const v = finite(ms);
  if (v === null || v <= 0) return DASH;
  const date = new Date(v);
  const clock = date.toLocaleTimeString(undefined, { hour12: false });
  if (date.toDateString() === new Date().toDateString()) return clock;
  return `${date.toLocaleDateString()} ${clock}`;
}

/** "12 s", "4 min", "2 h" until (positive) or since (negative) a moment. */
export function duration(ms) {
  const seconds = Math.round(Math.abs(ms) / 1000);
  if (seconds < 90) return `${seconds} s`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}
