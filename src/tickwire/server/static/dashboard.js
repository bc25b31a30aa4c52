// tickwire dashboard: live charts fed by the gateway's server-sent events
// (/api/v1/stream). No framework and no CDN: uPlot (vendored) draws the charts.
//
// Everything shown is also kept in `window.tickwire` (samples, book, slow table,
// connectivity report, chart data) so tests and curious operators can read exactly what is drawn.
"use strict";

(function () {
  const KEEP = 300; // points: five minutes at one a second
  const DEPTH = 50; // book levels a side on the depth chart
  const COLORS = {
    deliveries: "#4c9be8",
    bytes: "#c678dd",
    p50: "#26a269",
    p99: "#f0b429",
    connections: "#e8914c",
    bid: "#26a269",
    ask: "#e05252",
    axis: "#8a96a3",
    grid: "#2a323c",
  };

  const state = {
    connected: false,
    events: 0,
    epoch: null,
    symbols: [],
    symbol: null,
    samples: [],
    book: null,
    slow: [],
    report: null,
    charts: {},
    depth: { x: [], bids: [], asks: [] },
  };
  window.tickwire = state;

  const $ = (id) => document.getElementById(id);

  // -- formatting --------------------------------------------------------------------

  function si(value, unit) {
    if (value == null || !isFinite(value)) return "–";
    const abs = Math.abs(value);
    const steps = [
      [1e9, "G"],
      [1e6, "M"],
      [1e3, "k"],
    ];
    for (const [size, prefix] of steps) {
      if (abs >= size) return (value / size).toFixed(abs >= size * 10 ? 0 : 1) + " " + prefix + (unit || "");
    }
    return (abs >= 100 || value === Math.round(value) ? value.toFixed(0) : value.toFixed(1)) + (unit ? " " + unit : "");
  }

  function ms(value) {
    if (value == null || !isFinite(value)) return "–";
    if (value < 1) return (value * 1000).toFixed(0) + " µs";
    return value.toFixed(value < 10 ? 2 : 1) + " ms";
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + (s % 60) + "s";
  }

  // -- charts ------------------------------------------------------------------------

  function axes(format) {
    const common = { stroke: COLORS.axis, grid: { stroke: COLORS.grid, width: 1 }, ticks: { stroke: COLORS.grid, width: 1 } };
    return [
      Object.assign({}, common),
      Object.assign({}, common, { size: 70, values: (u, vals) => vals.map(format) }),
    ];
  }

  function sizeOf(el, height) {
    return { width: Math.max(el.clientWidth - 14, 200), height: height };
  }

  function timeChart(id, series, format) {
    const el = $(id);
    const opts = Object.assign(sizeOf(el, 170), {
      cursor: { drag: { x: false, y: false } },
      legend: { show: series.length > 1 },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: axes(format),
      series: [{}].concat(
        series.map((s) => ({ label: s.label, stroke: s.color, width: 2, fill: s.fill ? s.color + "22" : undefined, spanGaps: true })),
      ),
    });
    const data = [[]].concat(series.map(() => []));
    const chart = new uPlot(opts, data, el);
    state.charts[id] = { chart: chart, data: data, fields: series.map((s) => s.field) };
    return chart;
  }

  function depthChart() {
    const el = $("chart-depth");
    const opts = Object.assign(sizeOf(el, 260), {
      cursor: { drag: { x: false, y: false } },
      legend: { show: true },
      scales: { x: { time: false }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.05 : 1] } },
      axes: (() => {
        const [x, y] = axes((v) => si(v));
        // Prices: plain decimals (no thousands separators), spaced so they never overlap.
        x.space = 90;
        x.values = (u, vals) => vals.map((v) => String(+v.toFixed(8)));
        return [x, y];
      })(),
      series: [
        { label: "price" },
        { label: "bids", stroke: COLORS.bid, fill: COLORS.bid + "33", width: 2, paths: uPlot.paths.stepped({ align: -1 }) },
        { label: "asks", stroke: COLORS.ask, fill: COLORS.ask + "33", width: 2, paths: uPlot.paths.stepped({ align: 1 }) },
      ],
    });
    const chart = new uPlot(opts, [[], [], []], el);
    state.charts["chart-depth"] = { chart: chart, data: null, fields: ["bids", "asks"] };
    return chart;
  }

  const charts = {};

  function buildCharts() {
    charts.deliveries = timeChart("chart-deliveries", [{ label: "deliveries/s", field: "deliveries_s", color: COLORS.deliveries, fill: true }], (v) => si(v));
    charts.bytes = timeChart("chart-bytes", [{ label: "bytes/s", field: "bytes_s", color: COLORS.bytes, fill: true }], (v) => si(v, "B"));
    charts.latency = timeChart(
      "chart-latency",
      [
        { label: "p50", field: "p50_ms", color: COLORS.p50 },
        { label: "p99", field: "p99_ms", color: COLORS.p99 },
      ],
      (v) => (v < 1 ? v.toFixed(2) : v.toFixed(1)),
    );
    charts.connections = timeChart("chart-connections", [{ label: "connections", field: "connections", color: COLORS.connections, fill: true }], (v) => si(v));
    charts.depth = depthChart();
    const resize = () => {
      for (const id of Object.keys(state.charts)) {
        const { chart } = state.charts[id];
        chart.setSize(sizeOf($(id), id === "chart-depth" ? 260 : 170));
      }
    };
    new ResizeObserver(resize).observe(document.body);
  }

  function redrawTimeCharts() {
    const samples = state.samples;
    for (const id of ["chart-deliveries", "chart-bytes", "chart-latency", "chart-connections"]) {
      const entry = state.charts[id];
      const data = [samples.map((s) => s.t)];
      for (const field of entry.fields) data.push(samples.map((s) => (s[field] == null ? null : s[field])));
      entry.data = data;
      entry.chart.setData(data);
    }
  }

  // -- events ------------------------------------------------------------------------

  function onSample(point) {
    state.samples.push(point);
    if (state.samples.length > KEEP) state.samples.splice(0, state.samples.length - KEEP);
    redrawTimeCharts();
    $("kpi-deliveries").textContent = si(point.deliveries_s);
    $("kpi-bytes").textContent = si(point.bytes_s, "B");
    $("kpi-latency").textContent = ms(point.p50_ms) + " / " + ms(point.p99_ms);
    $("kpi-connections").textContent = String(point.connections);
    $("kpi-source").textContent = si(point.source_s);
    $("kpi-lag").textContent = ms(point.loop_lag_ms);
    $("kpi-slow").textContent = point.paused + " / " + si(point.conflations_s) + "/s / " + point.slow_closes;
    const totals = point.totals;
    if (totals) {
      $("uptime").textContent = duration(totals.uptime_s);
      showReady(totals.ready);
    }
  }

  function showReady(ready) {
    const pill = $("ready");
    pill.textContent = ready ? "ready" : "not ready";
    pill.className = "pill " + (ready ? "on" : "off");
  }

  function onBook(book) {
    state.book = book;
    $("book-seq").textContent = String(book.seq);
    $("book-checksum").textContent = String(book.checksum);
    $("book-levels").textContent = book.levels[0] + " bids / " + book.levels[1] + " asks";
    $("tob-bid").textContent = book.best_bid ? book.best_bid[0] : "–";
    $("tob-bid-qty").textContent = book.best_bid ? book.best_bid[1] : "–";
    $("tob-ask").textContent = book.best_ask ? book.best_ask[0] : "–";
    $("tob-ask-qty").textContent = book.best_ask ? book.best_ask[1] : "–";
    $("tob-spread").textContent = book.spread || "–";
    $("tob-mid").textContent = book.mid || "–";
    $("tob-last").textContent = book.last || "–";
    $("tob-trades").textContent = String(book.trades);

    // Ladder: the top ten levels of each side, best first.
    const rows = [];
    for (let i = 0; i < 10; i++) {
      const b = book.bids[i] || ["", ""];
      const a = book.asks[i] || ["", ""];
      rows.push("<tr><td>" + b[1] + "</td><td>" + b[0] + "</td><td>" + a[0] + "</td><td>" + a[1] + "</td></tr>");
    }
    document.querySelector("#ladder tbody").innerHTML = rows.join("");

    // Depth: cumulative quantity away from the touch, bids left, asks right, on one
    // shared price axis (uPlot wants one x array; each side is null on the other's).
    // Between two levels a bid step shows the quantity at or above the price (the
    // right-hand level's total: align -1), an ask step the quantity at or below it
    // (the left-hand level's: align 1).
    const bids = book.bids.map(([p, q]) => [parseFloat(p), parseFloat(q)]);
    const asks = book.asks.map(([p, q]) => [parseFloat(p), parseFloat(q)]);
    const x = [];
    const yb = [];
    const ya = [];
    let cum = 0;
    const bidPts = bids.map(([p, q]) => [p, (cum += q)]).reverse(); // ascending price
    cum = 0;
    const askPts = asks.map(([p, q]) => [p, (cum += q)]);
    for (const [p, c] of bidPts) {
      x.push(p);
      yb.push(c);
      ya.push(null);
    }
    for (const [p, c] of askPts) {
      x.push(p);
      yb.push(null);
      ya.push(c);
    }
    state.depth = { x: x, bids: yb, asks: ya };
    state.charts["chart-depth"].data = [x, yb, ya];
    charts.depth.setData([x, yb, ya]);
  }

  function onSlow(rows) {
    state.slow = rows;
    const body = document.querySelector("#slow-table tbody");
    if (!rows.length) {
      body.innerHTML = '<tr class="empty"><td colspan="7">no lagging subscription, no buffered bytes</td></tr>';
      return;
    }
    const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
    body.innerHTML = rows
      .map(
        (r) =>
          '<tr class="' + (r.lagging ? "lagging" : "") + '"><td>' + r.conn + "</td><td>" + esc(r.peer) + "</td><td>" + esc(r.ch) + "</td><td>" +
          r.lag_seq + "</td><td>" + r.lag_ms + "</td><td>" + si(r.buffered, "B") + "</td><td>" + r.conflated + "</td></tr>",
      )
      .join("");
  }

  // -- connectivity report (only when the gateway keeps one: hello.report) -----------

  let reportTimer = null;

  function secs(value) {
    return value == null ? "–" : value.toFixed(2) + " s";
  }

  function onReport(data) {
    state.report = data;
    $("report").hidden = false;
    const t = data.totals;
    $("report-totals").textContent =
      t.connections + " connections, " + t.faults + " faults, " + t.detected + " detected, " + t.recovered + " recovered, " +
      t.never_noticed + " never noticed, " + t.storms + " storms";
    const body = document.querySelector("#report-table tbody");
    const rows = data.faults.slice(-50).reverse();
    if (!rows.length) {
      body.innerHTML = '<tr class="empty"><td colspan="11">no fault applied yet</td></tr>';
      return;
    }
    const esc = (s) => String(s == null ? "–" : s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
    const yes = (v) => (v == null ? "–" : v ? "yes" : "no");
    body.innerHTML = rows
      .map(
        (f) =>
          '<tr class="' + (f.never_noticed ? "never " : "") + (f.storm ? "storm" : "") + '"><td>' + f.n + "</td><td>" + esc(f.kind) + "</td><td>" +
          esc(f.venue) + "</td><td>" + esc(f.symbol || f.channel) + "</td><td>" + esc(f.conn == null ? "*" : f.conn) + "</td><td>" + esc(f.client) +
          "</td><td>" + esc(f.reaction || (f.pending ? "pending" : "none")) + "</td><td>" + secs(f.reaction_s) + "</td><td>" + secs(f.time_to_book_s) +
          "</td><td>" + yes(f.never_noticed) + "</td><td>" + yes(f.storm) + "</td></tr>",
      )
      .join("");
  }

  function pollReport() {
    fetch("/api/v1/report", { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : null))
      .then((data) => data && onReport(data))
      .catch(() => {});
  }

  function onHello(hello) {
    if (hello.report && reportTimer === null) {
      pollReport();
      reportTimer = setInterval(pollReport, 2000);
    }
    state.epoch = hello.epoch;
    state.symbols = hello.symbols;
    state.samples = hello.samples.slice(-KEEP);
    $("epoch").textContent = hello.epoch;
    showReady(hello.ready);
    const select = $("symbol");
    if (select.options.length !== hello.symbols.length) {
      select.innerHTML = hello.symbols.map((s) => "<option>" + s.replace(/[<&]/g, "") + "</option>").join("");
    }
    select.value = hello.symbol;
    redrawTimeCharts();
  }

  let source = null;

  function connect(symbol) {
    if (source) source.close();
    state.symbol = symbol;
    $("rest-link").href = "/api/v1/book/" + encodeURIComponent(symbol || "") + "?depth=10";
    const query = "depth=" + DEPTH + (symbol ? "&symbol=" + encodeURIComponent(symbol) : "");
    source = new EventSource("/api/v1/stream?" + query);
    const on = (name, handler) =>
      source.addEventListener(name, (ev) => {
        state.events++;
        handler(JSON.parse(ev.data));
      });
    on("hello", (hello) => {
      state.symbol = hello.symbol;
      $("rest-link").href = "/api/v1/book/" + encodeURIComponent(hello.symbol) + "?depth=10";
      onHello(hello);
    });
    on("sample", onSample);
    on("book", onBook);
    on("slow", onSlow);
    source.onopen = () => {
      state.connected = true;
      $("status").textContent = "live";
      $("status").className = "pill on";
    };
    source.onerror = () => {
      // EventSource reconnects by itself; a gateway restart shows a new epoch.
      state.connected = false;
      $("status").textContent = "reconnecting";
      $("status").className = "pill off";
    };
  }

  buildCharts();
  $("symbol").addEventListener("change", (ev) => {
    const symbol = ev.target.value;
    history.replaceState(null, "", "#" + encodeURIComponent(symbol));
    connect(symbol);
  });
  const fromUrl = new URLSearchParams(location.search).get("symbol") || decodeURIComponent(location.hash.slice(1));
  connect(fromUrl || null);
})();
