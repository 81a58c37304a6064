// Unit checks of the dashboard's modules, run inside Chromium by test_dashboard.py (the page has
// no build step and the project no npm, so the browser is the JavaScript runtime we test in).
// Evaluated as one async function: it returns the names of the checks that failed.
async () => {
  const { Store } = await import("/static/model.js");
  const { curveFromAnalytics, curveFromPositions, statsFromAnalytics } = await import(
    "/static/chart.js"
  );
  const format = await import("/static/format.js");
  const failed = [];
  const check = (name, ok) => {
    if (!ok) failed.push(name);
  };
  const view = (over = {}) => ({
    id: "P1",
    symbol: "XAUUSD",
    side: "buy",
    volume: 0.1,
    state: "open",
    open_price: 1284.0,
    current_price: 1285.0,
    pl: 10.0,
    sl: 1280.0,
    tp: 1290.0,
    updated_ms: 1000,
    ...over,
  });

  // Malformed and unknown messages are dropped without a trace.
  const s = new Store();
  const junk = [
    { type: "position" },
    { type: "position", position: { id: "P9", symbol: "XAUUSD", side: "up" } },
    { type: "position", position: { id: 7, symbol: "XAUUSD", side: "buy" } },
    { type: "price", symbol: "XAUUSD", bid: "1", ask: 2 },
    { type: "price", symbol: "XAUUSD", bid: 2, ask: 1 },
    { type: "price", symbol: "XAUUSD", bid: Number.NaN, ask: 1 },
    { type: "alert", alert: { kind: "x", level: "panic", message: "m", time_ms: 1 } },
    { type: "alert", alert: null },
    { type: "device", device: { device_id: "d1" } },
    { type: "from-the-future", anything: [1, 2, 3] },
    { type: "pong", seq: 1, time_ms: 1 },
  ];
  for (const message of junk) check(`ignored ${JSON.stringify(message)}`, !s.apply(message).length);
  check("nothing kept from junk", !s.positions.size && !s.prices.size && !s.alerts.length);
  s.apply({ type: "snapshot", time_ms: 1000, positions: "no", devices: null, alerts: [null, 1] });
  check("a garbled snapshot leaves an empty store", !s.positions.size && !s.devices.size);
  check("a garbled snapshot has no account", s.account === null);

  // A snapshot, then deltas: the newest state wins, closed positions move over.
  s.apply({
    type: "snapshot",
    time_ms: 1000,
    positions: [view(), { bad: true }],
    devices: [{ device_id: "paper-1", connected: true, stale: false }],
    account: { user_id: "u", balance: 10000, equity: 10010, currency: "USD", guard_level: "odd" },
  });
  check("snapshot position kept", s.positions.get("P1")?.state === "open");
  check("unknown guard level reads normal", s.account.guardLevel === "normal");
  check("device kept", s.devices.get("paper-1")?.connected === true);
  s.apply({ type: "position", position: view({ state: "closing", updated_ms: 900 }) });
  check("an older delta is ignored", s.positions.get("P1").state === "open");

  // Live P&L follows prices once the contract size is read back from the server's P&L.
  check("contract learned", Math.abs(s.contracts.get("XAUUSD").perLot - 100) < 1e-9);
  s.apply({ type: "price", symbol: "XAUUSD", bid: 1286.0, ask: 1286.3, time_ms: 1100 });
  const p1 = s.positions.get("P1");
  check("a long is marked at the bid", s.mark(p1) === 1286.0);
  check("live P&L", s.livePl(p1) === 20);
  check("floating P&L", s.floatingPl() === 20);
  s.apply({ type: "price", symbol: "XAUUSD", bid: 1285.0, ask: 1285.3, time_ms: 1050 });
  check("an older price is ignored", s.prices.get("XAUUSD").bid === 1286.0);

  s.apply({
    type: "position",
    position: view({ state: "closed", pl: -4.5, close_price: 1283.55, close_time_ms: 1200,
      close_reason: "sl", updated_ms: 1200 }),
  });
  check("closed leaves the live list", s.livePositions().length === 0);
  check("closed is listed", s.closedPositions()[0]?.closeReason === "sl");
  check("closed P&L is the server's", s.livePl(s.positions.get("P1")) === -4.5);
  check("no open positions: floating is zero", s.floatingPl() === 0);
  s.apply({ type: "snapshot", time_ms: 1300, positions: [] });
  check("a snapshot keeps closed rows it does not repeat", s.positions.has("P1"));
  check("a filled close is not pending", s.positions.get("P1").fillPending === false);
  s.apply({
    type: "position",
    position: view({ id: "P9", state: "closed", pl: null, close_price: null, fill_pending: true,
      close_reason: "sl", updated_ms: 1250 }),
  });
  const pending = s.positions.get("P9");
  check("a fill-pending close is read as pending", pending.fillPending === true);
  check("a fill-pending close has no P&L", s.livePl(pending) === null);

  // Alerts: deduplicated, newest first.
  const drawdown = { kind: "drawdown", level: "critical", message: "m", time_ms: 1400, value: 0.12 };
  s.apply({
    type: "snapshot",
    time_ms: 1300,
    account: { user_id: "u", balance: 1, guard_level: "normal" },
  });
  s.apply({ type: "alert", alert: drawdown });
  s.apply({ type: "alert", alert: drawdown });
  s.apply({ type: "alert", alert: { ...drawdown, kind: "spread", level: "info", time_ms: 1350 } });
  check("alerts deduplicated", s.alerts.length === 2);
  check("alerts newest first", s.alerts[0].timeMs === 1400);
  // The account card is the stream's account messages, whole; alerts do not touch it (the
  // figures would disagree with the engine's until the next snapshot).
  check("a drawdown alert leaves the account alone", s.account.guardLevel === "normal");
  const live = { user_id: "u", balance: 9993.13, equity: 9990, currency: "USD", drawdown: 0.12,
    guard_level: "critical", opens_blocked: true };
  check("an account message changes the card",
    s.apply({ type: "account", account: live, time_ms: 1500 }).includes("account"));
  check("the live balance", s.account.balance === 9993.13 && s.account.asOfMs === 1500);
  check("the live guard", s.account.guardLevel === "critical" && s.account.opensBlocked);
  s.apply({ type: "account", account: { ...live, balance: 1 }, time_ms: 1450 });
  check("an older account message is ignored", s.account.balance === 9993.13);
  check("a garbled account message is ignored",
    s.apply({ type: "account", account: "x", time_ms: 1600 }).length === 0);

  // The equity curve: realised P&L in close order, then now; analytics answers are filtered.
  const closes = [
    { pl: 5, closeTimeMs: 300, openTimeMs: 100 },
    { pl: -2, closeTimeMs: 200, openTimeMs: 150 },
    { pl: null, closeTimeMs: 250 },
  ];
  const curve = curveFromPositions(closes, 1.5, 400).map((p) => p.equity);
  check("curve from positions", JSON.stringify(curve) === JSON.stringify([0, -2, 3, 4.5]));
  check("no data, no curve", curveFromPositions([], null, 1).length === 0);
  const open = curveFromPositions([], -3, 500, 120);
  check("open positions only", open.length === 2 && open[0].timeMs === 120 && open[1].equity === -3);
  const served = curveFromAnalytics({ equity_curve: [{ time_ms: 2, equity: 5 }, { x: 1 },
    { time_ms: 1, equity: 4 }] });
  check("analytics curve sorted and filtered", served.length === 2 && served[0].equity === 4);
  check("analytics without a curve", curveFromAnalytics({}) === null);

  // Analytics figures: the drawdown keeps the guard's sign (>= 0, "0.07 %", never "-0.07 %"),
  // and a figure the server could not give stays null with its reason, never a number.
  const answer = {
    pl: { realized: -6.87, floating: 0 },
    sharpe: null,
    sharpe_reason: "needs at least 30 returns, has 2",
    max_drawdown: 0.000687,
    max_drawdown_reason: null,
    starting_balance: 10000,
    balance: 9993.13,
    equity_curve: [
      { time_ms: 1, equity: 10000 },
      { time_ms: 2, equity: 9997 },
      { time_ms: 3, equity: 9993.13 },
    ],
  };
  const stats = statsFromAnalytics(answer);
  check("sharpe without a sample is null", stats.sharpe === null);
  check("sharpe's reason kept", stats.sharpeReason === "needs at least 30 returns, has 2");
  check("drawdown kept as served", stats.maxDrawdown === 0.000687);
  check("drawdown shown with the guard's sign", format.percent(stats.maxDrawdown) === "0.07 %");
  check("the curve ends at the balance", stats.last === stats.balance && stats.balance === 9993.13);
  const none = statsFromAnalytics({ sharpe: "185", max_drawdown: null, max_drawdown_reason: 7 });
  check("a garbled sharpe is no number", none.sharpe === null && none.maxDrawdown === null);
  check("a garbled reason is dropped", none.maxDrawdownReason === null && none.last === null);
  check("no answer, no figures", statsFromAnalytics(null).realized === null);

  // Formatting never throws and keeps a symbol's digits.
  format.notePrice("EURUSD", 1.38105);
  check("digits remembered", format.price("EURUSD", 1.381) === "1.38100");
  check("money of garbage", format.money("12") === format.DASH);
  check("signed money", format.signedMoney(-3).startsWith("−") && format.signedMoney(3)[0] === "+");
  return failed;
};
