// Editing an open position: SL/TP, trailing stop and break-even, through
// PATCH /api/v1/positions/{id}.
//
// The positions table renders an "Edit" button (class `edit-position`, `data-position-id`) on
// each open row. This module listens for those clicks on the document (event delegation: rows
// are re-rendered on every delta, so listeners on the buttons themselves would be lost), reads
// the position fresh from the server to fill a small form in a <dialog>, and sends only the
// fields the user changed: a field sent unchanged would move a stop back if it had trailed
// meanwhile. The row itself updates from /ws/client, like any other change.

import { ApiError, loadSession, request } from "./api.js";
import { finite } from "./format.js";

const FIELDS = [
  ["sl", "Stop-loss"],
  ["tp", "Take-profit"],
  ["trailing-distance", "Trailing distance"],
  ["trailing-step", "Trailing step"],
  ["be-trigger", "Break-even trigger"],
  ["be-offset", "Break-even offset"],
];

let dialog = null;
let current = null; // { id, values } of the position being edited

function element(tag, attributes = {}, textContent = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (textContent) node.textContent = textContent;
  return node;
}

function build() {
  const form = element("form", { method: "dialog", "data-testid": "position-edit-form" });
  form.append(element("h2", { "data-testid": "position-edit-title" }, "Edit position"));
  form.append(
    element(
      "p",
      { class: "muted small" },
      "Prices and distances in price units. Empty removes a level or a rule.",
    ),
  );
  for (const [name, label] of FIELDS) {
    const id = `position-edit-${name}`;
    form.append(element("label", { for: id }, label));
    form.append(
      element("input", {
        id,
        name,
        type: "number",
        step: "any",
        min: "0",
        inputmode: "decimal",
        "data-testid": id,
      }),
    );
  }
  const message = element("p", { class: "error", role: "alert", "data-testid": "position-edit-message" });
  message.hidden = true;
  const save = element("button", { type: "submit", class: "primary", "data-testid": "position-edit-save" }, "Save");
  const cancel = element("button", { type: "button", "data-testid": "position-edit-cancel" }, "Cancel");
  cancel.addEventListener("click", () => dialog.close());
  form.append(message, save, cancel);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void submit(form, message);
  });
  const node = element("dialog", { class: "card", "data-testid": "position-edit" });
  node.append(form);
  document.body.append(node);
  return node;
}

function valuesOf(position) {
  return {
    sl: finite(position.sl),
    tp: finite(position.tp),
    "trailing-distance": finite(position.trailing?.distance),
    "trailing-step": finite(position.trailing?.step),
    "be-trigger": finite(position.break_even?.trigger),
    "be-offset": finite(position.break_even?.offset),
  };
}

function read(form) {
  const values = {};
  for (const [name] of FIELDS) {
    const raw = form.elements[name].value.trim();
    values[name] = raw === "" ? null : Number(raw);
  }
  return values;
}

/** The PATCH body: only what changed (null removes a level or a rule). */
export function changes(before, after) {
  const body = {};
  const differs = (...names) => names.some((n) => before[n] !== after[n]);
  if (differs("sl")) body.sl = after.sl;
  if (differs("tp")) body.tp = after.tp;
  if (differs("trailing-distance", "trailing-step")) {
    body.trailing =
      after["trailing-distance"] === null
        ? null
        : { distance: after["trailing-distance"], step: after["trailing-step"] ?? 0 };
  }
  if (differs("be-trigger", "be-offset")) {
    body.break_even =
      after["be-trigger"] === null
        ? null
        : { trigger: after["be-trigger"], offset: after["be-offset"] ?? 0 };
  }
  return body;
}

function say(message, text) {
  message.textContent = text;
  message.hidden = !text;
}

async function open(id) {
  const session = loadSession();
  if (!session) return;
  dialog ??= build();
  const form = dialog.querySelector("form");
  const message = dialog.querySelector("[role=alert]");
  say(message, "");
  form.reset();
  let position;
  try {
    position = await request("GET", `/api/v1/positions/${encodeURIComponent(id)}`, {
      token: session.token,
    });
  } catch (error) {
    say(message, error instanceof ApiError ? error.message : String(error));
    dialog.showModal();
    return;
  }
  current = { id, values: valuesOf(position) };
  dialog.querySelector("h2").textContent = `Edit ${position.symbol ?? ""} ${position.side ?? ""}`.trim();
  for (const [name, value] of Object.entries(current.values)) {
    form.elements[name].value = value === null ? "" : String(value);
  }
  dialog.showModal();
}

async function submit(form, message) {
  const session = loadSession();
  if (!session || !current) return;
  const after = read(form);
  if (Object.values(after).some((v) => v !== null && !Number.isFinite(v))) {
    say(message, "Every field must be a number, or empty.");
    return;
  }
  const body = changes(current.values, after);
  if (Object.keys(body).length === 0) {
    dialog.close();
    return;
  }
  try {
    const position = await request("PATCH", `/api/v1/positions/${encodeURIComponent(current.id)}`, {
      token: session.token,
      body,
    });
    current.values = valuesOf(position);
    say(message, "");
    dialog.close();
  } catch (error) {
    say(message, error instanceof ApiError ? error.message : String(error));
  }
}

/** Hook the "Edit" buttons of the positions table (once, for the page's lifetime). */
export function initPositionEdit(root = document) {
  root.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest(".edit-position") : null;
    const id = button?.getAttribute("data-position-id");
    if (id) void open(id);
  });
}

// Loaded by app.js for its effect: the page has one positions table and one form.
if (typeof document !== "undefined") initPositionEdit();
