// The ringex web view: the public market data feed (docs/market-data.md) in a page.
//
// Messages only change state (the book, the tape, the candles, your orders) and mark
// what changed; one requestAnimationFrame callback draws what changed, once per frame.
// So a burst of a thousand trades a second costs one JSON.parse and a few array writes
// per message, and the DOM and the chart are touched at most 60 times a second.
//
// The depth ladder follows "Keeping a local book in sync" in docs/market-data.md: a
// snapshot, then updates whose seq must follow on; a gap unsubscribes and subscribes
// again. A lost connection (the notifier restarting) reconnects with backoff and
// subscribes (and logs in) again; the snapshots put the book right.
"use strict";

(() => {
  const LEVELS = 20; // depth levels a side (one of the sizes the notifier always serves)
  const TAPE_ROWS = 40;
  const TAPE_KEEP = 200; // trades kept per symbol for the tape
  const ORDER_ROWS = 100;
  const FILL_ROWS = 100;
  // The notifier heartbeats an idle session every 5 s: two missed means a dead link.
  const SILENCE_MS = 12000;
  const BACKOFF_MIN_MS = 250;
  const BACKOFF_MAX_MS = 4000;
  const LAG_WINDOW_MS = 1000;
  // The chart repaints its canvases on every update; ten times a second is as smooth
  // as a candle chart needs, and leaves the frames to the ladder and the tape.
  const CHART_EVERY_MS = 100;
  // lightweight-charts draws UTC; shift times so its axis shows the viewer's clock.
  const TZ_SHIFT_S = -new Date().getTimezoneOffset() * 60;

  const $ = (id) => document.getElementById(id);
  // thousands separators by hand: toLocaleString goes through Intl, ~50x slower, and
  // the ladder and tape format a few hundred numbers a frame under load
  const fmtInt = (n) => (n === null || n === undefined ? "" : String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ","));
  const fmtTime = (ms) => {
    const d = new Date(ms);
    const p = (n, w = 2) => String(n).padStart(w, "0");
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  };

  // ---- state ---------------------------------------------------------------------------

  const app = {
    symbols: [],
    symbol: null,
    interval: 5,
    ws: null,
    state: "connecting",
    reconnects: 0,
    backoff: BACKOFF_MIN_MS,
    lastMessageAt: 0,
    book: null,
    markets: new Map(), // symbol -> {seq, gaps, tape: [], candles: [] (1 s), last}
    creds: null, // {account, token} as digit strings (a token is a u64: beyond a JS number)
    account: null,
    loginError: "",
    orders: new Map(), // "SYM:order_id" -> row
    fills: [],
    lags: [], // [receivedAt, lag ms] within LAG_WINDOW_MS
    counted: [], // message receive times within the last second
  };
  const dirty = { ladder: true, tape: true, chart: true, chartReset: true, orders: true, status: true };
  const perf = { frames: 0, renderMs: [], renderTotalMs: 0, parts: {}, longTasks: [], messages: 0, resyncs: 0, gaps: 0 };

  function market(symbol) {
    let m = app.markets.get(symbol);
    if (!m) {
      m = { seq: null, gaps: 0, tape: [], candles: [], last: null };
      app.markets.set(symbol, m);
    }
    return m;
  }

  function newBook(symbol) {
    return { symbol, seq: null, bids: new Map(), asks: new Map(), buffered: [], synced: false };
  }

  // ---- the connection ------------------------------------------------------------------

  function feedUrl() {
    return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  }

  function send(obj) {
    if (app.ws && app.ws.readyState === WebSocket.OPEN) app.ws.send(typeof obj === "string" ? obj : JSON.stringify(obj));
  }

  function setState(state) {
    app.state = state;
    dirty.status = true;
    schedule();
  }

  function connect() {
    const ws = new WebSocket(feedUrl());
    app.ws = ws;
    setState(app.reconnects ? "reconnecting" : "connecting");
    ws.onopen = () => {
      if (ws !== app.ws) return;
      app.backoff = BACKOFF_MIN_MS;
      app.lastMessageAt = performance.now();
      setState("live");
      subscribeAll();
    };
    ws.onmessage = (ev) => {
      if (ws !== app.ws) return;
      app.lastMessageAt = performance.now();
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      onMessage(m);
    };
    ws.onclose = () => {
      if (ws !== app.ws) return;
      app.ws = null;
      app.account = null;
      app.reconnects += 1;
      setState("reconnecting");
      const delay = app.backoff;
      app.backoff = Math.min(app.backoff * 2, BACKOFF_MAX_MS);
      setTimeout(connect, delay);
    };
  }

  function subscribeAll() {
    // every symbol's trades (the chart keeps each symbol's session history), the
    // selected symbol's depth, and the private channel if logged in
    for (const symbol of app.symbols) {
      market(symbol).seq = null;
      send({ op: "subscribe", channel: "trades", symbol });
    }
    if (app.symbol) subscribeDepth(app.symbol);
    if (app.creds) sendLogin();
  }

  function subscribeDepth(symbol) {
    app.book = newBook(symbol);
    dirty.ladder = true;
    send({ op: "subscribe", channel: "depth", symbol, levels: LEVELS });
  }

  function sendLogin() {
    // built by hand: JSON.stringify would round a u64 token to a double
    send(`{"op":"login","account":${app.creds.account},"token":${app.creds.token}}`);
  }

  // a half-open link (no RST, no heartbeats) would otherwise look live forever
  setInterval(() => {
    if (app.ws && app.ws.readyState === WebSocket.OPEN && performance.now() - app.lastMessageAt > SILENCE_MS) {
      app.ws.close();
    }
  }, 1000);

  // ---- messages ------------------------------------------------------------------------

  function onMessage(m) {
    perf.messages += 1;
    app.counted.push(performance.now());
    switch (m.type) {
      case "trade":
        return onTrade(m);
      case "depth_snapshot":
        return onDepthSnapshot(m);
      case "depth_update":
        return onDepthUpdate(m);
      case "subscribed":
        return onSubscribed(m);
      case "logged_in":
        app.account = m.account;
        app.loginError = "";
        dirty.orders = true;
        send({ op: "subscribe", channel: "orders" });
        return schedule();
      case "orders_snapshot":
        return onOrdersSnapshot(m);
      case "accepted":
      case "fill":
      case "replaced":
      case "cancelled":
      case "rejected":
        if (m.channel === "orders") onOrderEvent(m);
        return;
      case "error":
        return onError(m);
      default:
        return; // heartbeat, pong, unsubscribed
    }
  }

  function noteLag(tsNs) {
    const now = Date.now();
    app.lags.push([performance.now(), now - tsNs / 1e6]);
  }

  function onSubscribed(m) {
    if (m.channel === "trades") {
      market(m.symbol).seq = m.seq;
    } else if (m.channel === "depth" && app.book && m.symbol === app.book.symbol && m.levels === LEVELS) {
      app.book.seq = null; // the snapshot comes next
      app.book.buffered = [];
    }
  }

  function onTrade(m) {
    const mk = market(m.symbol);
    if (mk.seq !== null && m.seq !== mk.seq + 1) {
      mk.gaps += 1; // trades have no history to fetch: counted, and shown on the tape
      perf.gaps += 1;
    }
    mk.seq = m.seq;
    const ms = m.ts_ns / 1e6;
    const trade = { ms, price: m.price, qty: m.qty, side: m.taker_side, id: m.trade_id };
    mk.tape.push(trade);
    if (mk.tape.length > TAPE_KEEP * 2) mk.tape.splice(0, mk.tape.length - TAPE_KEEP);
    mk.last = trade;
    addToCandles(mk.candles, 1, Math.floor(ms / 1000), m.price, m.qty);
    if (m.symbol === app.symbol) {
      addToCandles(view.candles, app.interval, Math.floor(ms / 1000), m.price, m.qty, view);
      dirty.tape = true;
      dirty.chart = true;
      noteLag(m.ts_ns);
      schedule();
    }
  }

  // Candles of ``interval`` seconds in ``list`` (time order); ``track.changedFrom`` is
  // the first index the chart has not been given yet.
  function addToCandles(list, interval, sec, price, qty, track) {
    const time = Math.floor(sec / interval) * interval + TZ_SHIFT_S;
    let last = list[list.length - 1];
    if (last && time <= last.time) {
      // same bucket (or a clock step back: never draw backwards)
      last.high = Math.max(last.high, price);
      last.low = Math.min(last.low, price);
      last.close = price;
      last.volume += qty;
      if (track) track.changedFrom = Math.min(track.changedFrom, list.length - 1);
      return;
    }
    last = { time, open: price, high: price, low: price, close: price, volume: qty };
    list.push(last);
    if (track) track.changedFrom = Math.min(track.changedFrom, list.length - 1);
  }

  function onDepthSnapshot(m) {
    const b = app.book;
    if (!b || m.symbol !== b.symbol || m.levels !== LEVELS) return;
    b.bids = new Map(m.bids);
    b.asks = new Map(m.asks);
    b.seq = m.seq;
    b.synced = true;
    const buffered = b.buffered;
    b.buffered = [];
    for (const u of buffered) onDepthUpdate(u);
    if (app.state === "resyncing") setState("live");
    dirty.ladder = true;
    schedule();
  }

  function onDepthUpdate(m) {
    const b = app.book;
    if (!b || m.symbol !== b.symbol || m.levels !== LEVELS) return;
    if (b.seq === null) {
      b.buffered.push(m);
      return;
    }
    if (m.seq <= b.seq) return;
    if (m.seq !== b.seq + 1) return resync();
    for (const [price, qty] of m.bids) qty ? b.bids.set(price, qty) : b.bids.delete(price);
    for (const [price, qty] of m.asks) qty ? b.asks.set(price, qty) : b.asks.delete(price);
    b.seq = m.seq;
    noteLag(m.ts_ns);
    dirty.ladder = true;
    schedule();
  }

  function resync() {
    // we missed an update: start again from a snapshot (docs/market-data.md)
    perf.resyncs += 1;
    const symbol = app.book.symbol;
    send({ op: "unsubscribe", channel: "depth", symbol, levels: LEVELS });
    subscribeDepth(symbol);
    setState("resyncing");
  }

  function onOrdersSnapshot(m) {
    // The account's open orders when the subscription began: those placed before the
    // page was opened, or while it was reconnecting. A snapshot says what is open, not
    // what was ordered or has filled: those stay blank until an event says.
    for (const s of m.orders) {
      const key = `${s.symbol}:${s.order_id}`;
      if (app.orders.has(key)) continue;
      app.orders.set(key, {
        key,
        account: m.account,
        symbol: s.symbol,
        order_id: s.order_id,
        client_order_id: s.client_order_id,
        side: s.side,
        price: s.price,
        qty: null,
        filled: null,
        open: s.remaining,
        status: "open",
        ms: null,
      });
    }
    dirty.orders = true;
    schedule();
  }

  function onOrderEvent(m) {
    const key = `${m.symbol}:${m.order_id}`;
    let o = app.orders.get(key);
    if (!o) {
      o = {
        key,
        account: m.account,
        symbol: m.symbol,
        order_id: m.order_id,
        client_order_id: m.client_order_id,
        side: m.side,
        price: m.price,
        qty: m.qty,
        filled: 0,
        open: 0,
        status: "",
        ms: 0,
      };
    }
    app.orders.delete(key); // re-inserted: the Map's order is "latest event last"
    app.orders.set(key, o);
    o.ms = m.ts_ns / 1e6;
    switch (m.type) {
      case "accepted":
        Object.assign(o, { price: m.price, qty: m.qty, open: m.remaining, status: "open" });
        break;
      case "fill":
        if (o.filled !== null) o.filled += m.qty; // unknown since a snapshot: stays blank
        o.open = m.remaining;
        o.status = m.remaining ? "partly filled" : "filled";
        app.fills.push({
          ms: o.ms,
          account: m.account,
          symbol: m.symbol,
          order_id: m.order_id,
          side: m.side,
          price: m.price,
          qty: m.qty,
          liquidity: m.liquidity,
        });
        if (app.fills.length > FILL_ROWS * 2) app.fills.splice(0, app.fills.length - FILL_ROWS);
        break;
      case "replaced":
        Object.assign(o, { price: m.price, qty: m.qty, open: m.remaining, status: "replaced" });
        break;
      case "cancelled":
        Object.assign(o, { open: 0, status: `cancelled: ${m.reason}` });
        break;
      case "rejected":
        o.status = `rejected: ${m.reason}`;
        break;
    }
    if (app.orders.size > ORDER_ROWS * 2) {
      for (const k of [...app.orders.keys()].slice(0, app.orders.size - ORDER_ROWS)) app.orders.delete(k);
    }
    dirty.orders = true;
    schedule();
  }

  function onError(m) {
    const reason = String(m.reason || "");
    if (app.creds && app.account === null && /credentials|failed logins|logged in|token|account/.test(reason)) {
      // the notifier closes the session after a refused login: reconnect without it
      app.creds = null;
      app.loginError = reason;
      dirty.orders = true;
      schedule();
    }
  }

  // ---- drawing, once per animation frame -----------------------------------------------

  let scheduled = false;
  let chartDrawnAt = 0;
  function schedule() {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(frame);
    }
  }

  function timed(part, draw) {
    const t0 = performance.now();
    draw();
    const ms = performance.now() - t0;
    const p = perf.parts[part] || (perf.parts[part] = { n: 0, ms: 0, max: 0 });
    p.n += 1;
    p.ms += ms;
    p.max = Math.max(p.max, ms);
  }

  function frame() {
    scheduled = false;
    const t0 = performance.now();
    if (dirty.status) drawStatus();
    if (dirty.ladder) timed("ladder", drawLadder);
    if (dirty.tape) timed("tape", drawTape);
    if (dirty.chart) {
      if (t0 - chartDrawnAt >= CHART_EVERY_MS || dirty.chartReset) {
        chartDrawnAt = t0;
        timed("chart", drawChart);
      } else {
        schedule(); // not yet: a later frame draws it
      }
    }
    if (dirty.orders) timed("orders", drawOrders);
    const took = performance.now() - t0;
    perf.frames += 1;
    perf.renderTotalMs += took;
    perf.renderMs.push(took);
    if (perf.renderMs.length > 5000) perf.renderMs.splice(0, 2500);
  }

  // the ladder's rows, made once: 20 asks (worst at the top), the spread, 20 bids
  const ladderRows = { asks: [], bids: [] };
  function makeLadder() {
    for (const side of ["asks", "bids"]) {
      const body = $(side);
      for (let i = 0; i < LEVELS; i++) {
        const tr = document.createElement("tr");
        tr.className = `level ${side === "asks" ? "ask" : "bid"} empty`;
        const price = document.createElement("td");
        price.className = "price";
        const size = document.createElement("td");
        size.className = "size";
        const bar = document.createElement("div");
        bar.className = "bar";
        const sizeText = document.createElement("span");
        size.append(bar, sizeText);
        const total = document.createElement("td");
        tr.append(price, size, total);
        body.append(tr);
        ladderRows[side].push({ tr, price, bar, sizeText, total, key: "" });
      }
    }
  }

  function drawLadder() {
    dirty.ladder = false;
    const b = app.book;
    const bids = b ? [...b.bids].sort((x, y) => y[0] - x[0]).slice(0, LEVELS) : [];
    const asks = b ? [...b.asks].sort((x, y) => x[0] - y[0]).slice(0, LEVELS) : [];
    let max = 1;
    for (const [, q] of bids) max = Math.max(max, q);
    for (const [, q] of asks) max = Math.max(max, q);
    // asks: best is the row next to the spread, i.e. the last one
    fill(ladderRows.asks, asks, max, (i) => LEVELS - 1 - i);
    fill(ladderRows.bids, bids, max, (i) => i);
    const spread = $("spread");
    if (bids.length && asks.length) {
      const s = asks[0][0] - bids[0][0];
      spread.textContent = `spread ${fmtInt(s)}  ·  mid ${fmtInt((asks[0][0] + bids[0][0]) / 2)}`;
    } else {
      spread.textContent = "spread –";
    }
    $("book-symbol").textContent = b ? b.symbol : "";
    $("book-state").textContent = b && !b.synced ? "(waiting for snapshot)" : "";
  }

  function fill(rows, levels, max, rowOf) {
    let total = 0;
    const used = new Set();
    levels.forEach(([price, qty], i) => {
      total += qty;
      const r = rows[rowOf(i)];
      used.add(r);
      const key = `${price}:${qty}:${total}:${i === 0}:${max}`;
      if (r.key === key) return;
      r.key = key;
      r.price.textContent = fmtInt(price);
      r.sizeText.textContent = fmtInt(qty);
      r.total.textContent = fmtInt(total);
      r.bar.style.width = `${((100 * qty) / max).toFixed(1)}%`;
      r.tr.dataset.price = price;
      r.tr.dataset.qty = qty;
      r.tr.classList.remove("empty");
      r.tr.classList.toggle("best", i === 0);
    });
    for (const r of rows) {
      if (used.has(r) || r.key === "") continue;
      r.key = "";
      r.price.textContent = "";
      r.sizeText.textContent = "";
      r.total.textContent = "";
      r.bar.style.width = "0";
      delete r.tr.dataset.price;
      delete r.tr.dataset.qty;
      r.tr.classList.add("empty");
      r.tr.classList.remove("best");
    }
  }

  const tapeRows = [];
  function makeTape() {
    const body = $("tape");
    for (let i = 0; i < TAPE_ROWS; i++) {
      const tr = document.createElement("tr");
      const cells = [0, 1, 2, 3].map(() => document.createElement("td"));
      tr.append(...cells);
      body.append(tr);
      tapeRows.push({ tr, cells, id: null });
    }
  }

  function drawTape() {
    dirty.tape = false;
    const tape = app.symbol ? market(app.symbol).tape : [];
    for (let i = 0; i < TAPE_ROWS; i++) {
      const t = tape[tape.length - 1 - i];
      const r = tapeRows[i];
      const id = t ? `${app.symbol}:${t.id}` : null;
      if (r.id === id) continue;
      r.id = id;
      if (!t) {
        r.cells.forEach((c) => (c.textContent = ""));
        r.tr.className = "";
        delete r.tr.dataset.price;
        continue;
      }
      // formatted once, when first drawn: under load a trade moves down a row or more
      // every frame
      const text = t.text || (t.text = [fmtTime(t.ms), fmtInt(t.price), fmtInt(t.qty), t.side]);
      for (let c = 0; c < 4; c++) r.cells[c].textContent = text[c];
      r.tr.className = t.side;
      r.tr.dataset.price = t.price;
      r.tr.dataset.qty = t.qty;
      r.tr.dataset.tradeId = t.id;
    }
    const last = app.symbol ? market(app.symbol).last : null;
    $("last-price").textContent = last ? `last ${fmtInt(last.price)}` : "";
  }

  // the chart: candles and volume of the selected symbol at the selected interval
  let chart = null;
  let candleSeries = null;
  let volumeSeries = null;
  const view = { candles: [], changedFrom: 0 };

  function makeChart() {
    if (!window.LightweightCharts) return;
    const L = window.LightweightCharts;
    chart = L.createChart($("chart"), {
      autoSize: true,
      layout: { background: { type: "solid", color: "#151b23" }, textColor: "#aab4c0", attributionLogo: true },
      grid: { vertLines: { color: "#1f2630" }, horzLines: { color: "#1f2630" } },
      timeScale: { timeVisible: true, secondsVisible: true, borderColor: "#262e38" },
      rightPriceScale: { borderColor: "#262e38", scaleMargins: { top: 0.08, bottom: 0.28 } },
      crosshair: { mode: 0 },
    });
    candleSeries = chart.addSeries(L.CandlestickSeries, {
      upColor: "#2ea043",
      downColor: "#e5534b",
      wickUpColor: "#2ea043",
      wickDownColor: "#e5534b",
      borderVisible: false,
      priceFormat: { type: "price", precision: 0, minMove: 1 },
    });
    volumeSeries = chart.addSeries(L.HistogramSeries, {
      priceScaleId: "volume",
      priceFormat: { type: "volume" },
      lastValueVisible: false,
      priceLineVisible: false,
    });
    chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  }

  function rebuildView() {
    // the selected interval's candles from the symbol's 1 s candles (its session history)
    view.candles = [];
    const base = app.symbol ? market(app.symbol).candles : [];
    for (const c of base) {
      const sec = c.time - TZ_SHIFT_S;
      const time = Math.floor(sec / app.interval) * app.interval + TZ_SHIFT_S;
      const last = view.candles[view.candles.length - 1];
      if (last && last.time === time) {
        last.high = Math.max(last.high, c.high);
        last.low = Math.min(last.low, c.low);
        last.close = c.close;
        last.volume += c.volume;
      } else {
        view.candles.push({ ...c, time });
      }
    }
    view.changedFrom = view.candles.length;
    dirty.chartReset = true;
    dirty.chart = true;
  }

  const volumeBar = (c) => ({
    time: c.time,
    value: c.volume,
    color: c.close >= c.open ? "rgba(46,160,67,0.45)" : "rgba(229,83,75,0.45)",
  });

  function drawChart() {
    dirty.chart = false;
    $("chart-symbol").textContent = app.symbol || "";
    if (!chart) return;
    if (dirty.chartReset) {
      dirty.chartReset = false;
      candleSeries.setData(view.candles.map((c) => ({ ...c })));
      volumeSeries.setData(view.candles.map(volumeBar));
    } else {
      for (let i = view.changedFrom; i < view.candles.length; i++) {
        const c = view.candles[i];
        candleSeries.update({ ...c });
        volumeSeries.update(volumeBar(c));
      }
    }
    view.changedFrom = view.candles.length;
  }

  function drawRows(body, items, cellsOf, classOf, keyOf) {
    // few rows, changed rarely: rebuilt whole, but only in a frame where they changed
    const frag = document.createDocumentFragment();
    for (const item of items) {
      const tr = document.createElement("tr");
      tr.className = classOf(item);
      for (const text of cellsOf(item)) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      Object.assign(tr.dataset, keyOf(item));
      frag.append(tr);
    }
    body.replaceChildren(frag);
  }

  function drawOrders() {
    dirty.orders = false;
    const loggedIn = app.account !== null;
    $("private-account").textContent = loggedIn
      ? `account ${app.account}`
      : app.creds
        ? "logging in…"
        : "(log in to see your orders and fills)";
    $("login-state").textContent = app.loginError ? `login failed: ${app.loginError}` : loggedIn ? `account ${app.account}` : "";
    $("login-state").classList.toggle("error", Boolean(app.loginError));
    $("logout-button").hidden = !app.creds;
    for (const id of ["account", "secret", "login-button"]) $(id).hidden = Boolean(app.creds);
    const orders = [...app.orders.values()].reverse().slice(0, ORDER_ROWS);
    drawRows(
      $("orders"),
      orders,
      (o) => [o.ms === null ? "" : fmtTime(o.ms), o.symbol, o.order_id, o.side, fmtInt(o.price), fmtInt(o.qty), fmtInt(o.filled), fmtInt(o.open), o.status],
      (o) => `${o.side} ${o.status === "open" || o.status === "partly filled" || o.status === "replaced" ? "" : "done"}`,
      (o) => ({ orderId: o.order_id, symbol: o.symbol, account: o.account, status: o.status, clientOrderId: o.client_order_id }),
    );
    const fills = app.fills.slice(-FILL_ROWS).reverse();
    drawRows(
      $("fills"),
      fills,
      (f) => [fmtTime(f.ms), f.symbol, f.order_id, f.side, fmtInt(f.price), fmtInt(f.qty), f.liquidity],
      (f) => f.side,
      (f) => ({ orderId: f.order_id, symbol: f.symbol, account: f.account }),
    );
  }

  function drawStatus() {
    dirty.status = false;
    const conn = $("conn");
    conn.dataset.state = app.state;
    conn.dataset.reconnects = app.reconnects;
    conn.textContent = {
      connecting: "connecting…",
      live: "live",
      reconnecting: "reconnecting…",
      resyncing: "resyncing the book…",
    }[app.state];
  }

  // feed lag and message rate, once a second (not per frame: a number nobody can read
  // at 60 Hz)
  setInterval(() => {
    const now = performance.now();
    while (app.lags.length && app.lags[0][0] < now - LAG_WINDOW_MS) app.lags.shift();
    while (app.counted.length && app.counted[0] < now - 1000) app.counted.shift();
    const lag = $("lag");
    if (app.lags.length) {
      const worst = Math.max(...app.lags.map((x) => x[1]));
      lag.textContent = `feed lag ${Math.max(0, worst).toFixed(0)} ms`;
      lag.dataset.ms = worst.toFixed(1);
    } else {
      lag.textContent = "feed lag –";
      delete lag.dataset.ms;
    }
    $("rate").textContent = app.counted.length ? `${fmtInt(app.counted.length)} msg/s` : "";
  }, 1000);

  // ---- controls ------------------------------------------------------------------------

  function selectSymbol(symbol) {
    if (!app.symbols.includes(symbol) || symbol === app.symbol) return;
    if (app.book) send({ op: "unsubscribe", channel: "depth", symbol: app.book.symbol, levels: LEVELS });
    app.symbol = symbol;
    $("symbol").value = symbol;
    if (location.hash.slice(1) !== symbol) history.replaceState(null, "", `#${symbol}`);
    subscribeDepth(symbol);
    rebuildView();
    for (const r of tapeRows) r.id = undefined;
    dirty.tape = true;
    schedule();
  }

  $("symbol").addEventListener("change", (e) => selectSymbol(e.target.value));
  window.addEventListener("hashchange", () => selectSymbol(location.hash.slice(1)));
  $("interval").addEventListener("change", (e) => {
    app.interval = Number(e.target.value);
    rebuildView();
    schedule();
  });

  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    const account = $("account").value.trim();
    const token = $("secret").value.trim();
    if (!/^\d{1,20}$/.test(account) || !/^\d{1,20}$/.test(token)) {
      app.loginError = "account and secret are numbers";
      dirty.orders = true;
      return schedule();
    }
    app.creds = { account, token };
    app.loginError = "";
    $("secret").value = "";
    dirty.orders = true;
    schedule();
    sendLogin();
  });

  $("logout-button").addEventListener("click", () => {
    app.creds = null;
    app.account = null;
    app.orders.clear();
    app.fills = [];
    dirty.orders = true;
    schedule();
    // the notifier has no logout: a new session is a logged-out one
    app.backoff = BACKOFF_MIN_MS;
    if (app.ws) app.ws.close();
  });

  // ---- measurements, for the tests and for anyone curious (window.ringex) -------------

  if (window.PerformanceObserver && PerformanceObserver.supportedEntryTypes.includes("longtask")) {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) perf.longTasks.push([e.startTime, e.duration]);
    }).observe({ type: "longtask", buffered: true });
  }

  window.ringex = {
    app,
    perf,
    // what the chart's series hold (the library's own copy)
    candles: () => (candleSeries ? candleSeries.data() : []),
    volumes: () => (volumeSeries ? volumeSeries.data() : []),
    selectSymbol,
  };

  // ---- start ---------------------------------------------------------------------------

  async function loadSymbols() {
    for (;;) {
      try {
        const r = await fetch("/symbols.json", { cache: "no-store" });
        if (r.ok) return (await r.json()).symbols;
      } catch (_) {
        // the notifier is not up (yet): try again
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  async function start() {
    makeLadder();
    makeTape();
    makeChart();
    app.symbols = await loadSymbols();
    const select = $("symbol");
    for (const s of app.symbols) select.append(new Option(s, s));
    const wanted = location.hash.slice(1);
    app.symbol = app.symbols.includes(wanted) ? wanted : app.symbols[0];
    select.value = app.symbol;
    app.book = newBook(app.symbol);
    rebuildView();
    connect();
    schedule();
  }

  start();
})();
