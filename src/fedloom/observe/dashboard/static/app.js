// fedloom dashboard: one EventSource, a snapshot then updates; hand-drawn SVG charts.
"use strict";
(function () {
  const STATES = ["start_round", "distribute", "train", "upload", "aggregate", "close_round",
    "finish"];
  const CHARTS = [
    { id: "accuracy", title: "accuracy", keys: ["accuracy"] },
    { id: "loss", title: "loss", keys: ["train_loss", "test_loss"] },
    { id: "bytes", title: "bytes", keys: ["bytes_up", "bytes_down"] },
    { id: "seconds", title: "seconds per round", keys: ["seconds"] },
    { id: "epsilon", title: "privacy: epsilon", match: /epsilon/ },
  ];
  const COLORS = ["#2d6cdf", "#d64545", "#1f9d55", "#c98a14", "#7b4fd6"];
  const SVG = "http://www.w3.org/2000/svg";
  const token = new URLSearchParams(location.search).get("token");
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  const model = { run: null, status: null, records: [], clients: null, report: null };
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, text) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
      : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return v.toLocaleString("en");
      return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4);
    }
    return String(v);
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
  }

  // -- the run ---------------------------------------------------------------------------------
  function drawRun() {
    const run = model.run;
    $("run-name").textContent = run.name + (run.mode === "replay" ? " (run directory)" : "");
    document.title = "fedloom · " + run.name;
    const table = $("config");
    table.replaceChildren();
    for (const [k, v] of run.config) {
      const tr = el("tr");
      tr.append(el("td", {}, k), el("td", {}, fmt(v)));
      table.append(tr);
    }
    const states = $("states");
    states.replaceChildren(...STATES.map((s) => el("span", { "data-state": s }, s)));
    $("clients-card").hidden = !run.deployment;
    $("topology-card").hidden = !run.topology;
  }

  // -- status ----------------------------------------------------------------------------------
  function drawStatus() {
    const s = model.status;
    const phase = $("phase");
    phase.textContent = s.phase;
    phase.dataset.phase = s.phase;
    $("round").textContent = s.round;
    $("rounds-total").textContent = s.rounds === null ? "?" : s.rounds;
    $("round-bar").style.width = s.rounds ? (100 * s.round / s.rounds) + "%" : "0";
    $("clients-done").textContent = s.done;
    $("clients-planned").textContent = s.planned || "–";  // an asynchronous run plans none
    $("status-panel").dataset.state = s.state || "";
    for (const span of $("states").children) {
      span.classList.toggle("on", span.dataset.state === s.state && s.phase === "running");
    }
    const err = $("error");
    err.hidden = !s.error;
    err.textContent = s.error || "";
    drawEta();
  }

  function drawEta() {
    const s = model.status;
    if (!s) return;
    if (s.phase !== "running" || s.eta_s === null) {
      $("eta").textContent = s.phase === "finished" ? "done" : "–";
      return;
    }
    $("eta").textContent = duration(s.eta_s - (Date.now() / 1000 - s.at));
  }

  // -- charts ----------------------------------------------------------------------------------
  function seriesOf(chart) {
    const keys = new Set();
    for (const r of model.records) {
      for (const k of Object.keys(r)) {
        if (typeof r[k] !== "number") continue;
        if (chart.keys ? chart.keys.includes(k) : chart.match.test(k)) keys.add(k);
      }
    }
    const ordered = chart.keys ? chart.keys.filter((k) => keys.has(k)) : [...keys].sort();
    return ordered.map((k) => ({
      key: k,
      points: model.records.filter((r) => typeof r[k] === "number").map((r) => [r.round, r[k]]),
    }));
  }

  function drawCharts() {
    const grid = $("chart-grid");
    for (const chart of CHARTS) {
      const series = seriesOf(chart);
      let box = grid.querySelector('[data-chart="' + chart.id + '"]');
      if (!series.length) { if (box) box.remove(); continue; }
      if (!box) {
        box = el("div", { class: "chart", "data-chart": chart.id });
        box.append(el("h3", {}, chart.title), el("svg:svg", { viewBox: "0 0 300 150",
          preserveAspectRatio: "none", "data-metric": chart.id }), el("div", { class: "legend" }));
        grid.append(box);
      }
      plot(box.querySelector("svg"), series);
      const legend = box.querySelector(".legend");
      legend.replaceChildren(...series.map((s, i) => {
        const span = el("span", {}, "— " + s.key + " " + fmt(s.points[s.points.length - 1][1]));
        span.style.color = COLORS[i % COLORS.length];
        return span;
      }));
    }
  }

  function plot(svg, series) {
    const W = 300, H = 150, L = 44, R = 6, T = 6, B = 18;
    const all = series.flatMap((s) => s.points);
    let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
    let y0 = Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
    if (x1 === x0) { x1 = x0 + 1; }
    if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const sx = (x) => L + (W - L - R) * (x - x0) / (x1 - x0);
    const sy = (y) => T + (H - T - B) * (1 - (y - y0) / (y1 - y0));
    svg.replaceChildren(
      el("svg:line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
      el("svg:line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
      el("svg:text", { x: 2, y: T + 8 }, fmt(y1)),
      el("svg:text", { x: 2, y: H - B }, fmt(y0)),
      el("svg:text", { x: L, y: H - 4 }, "round " + x0),
      el("svg:text", { x: W - R - 40, y: H - 4 }, "round " + x1),
    );
    series.forEach((s, i) => {
      const pts = s.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
      svg.append(el("svg:polyline", { points: pts, fill: "none", "stroke-width": 2,
        stroke: COLORS[i % COLORS.length], "vector-effect": "non-scaling-stroke",
        "data-key": s.key }));
    });
    svg.dataset.points = String(series[0].points.length);
  }

  // -- clients ---------------------------------------------------------------------------------
  function drawClients() {
    const rows = model.clients;
    if (!rows) return;
    const body = $("clients").tBodies[0];
    const live = rows.filter((r) => r.state !== "dropped").length;
    $("clients-count").textContent = live + " connected, " + (rows.length - live) + " dropped";
    body.replaceChildren(...rows.map((r) => {
      const tr = el("tr", { "data-client": r.id, "data-state": r.state });
      tr.append(
        el("td", {}, r.name ? r.id + " (" + r.name + ")" : String(r.id)),
        el("td", { class: "state state-" + r.state }, r.state),
        el("td", {}, r.heartbeat_s === null ? "–" : r.heartbeat_s.toFixed(1) + " s ago"),
        el("td", { class: "num" }, fmt(r.rounds)),
        el("td", { class: "num" }, bytes(r.bytes)),
        el("td", { class: "num" }, fmt(r.rejected)),
      );
      return tr;
    }));
  }

  // -- topology --------------------------------------------------------------------------------
  function nodeStatus(name, isRoot) {
    const s = model.status;
    if (s.phase === "finished") return "done";
    if (isRoot) return s.phase === "running" ? "training" : "idle";
    const relay = model.run.relays.indexOf(name);
    if (relay >= 0 && model.clients) {
      const row = model.clients.find((r) => r.id === relay);
      if (!row) return "idle";
      if (row.state === "dropped") return "dropped";
      return row.state === "training" ? "training" : row.state === "uploaded" ? "done" : "idle";
    }
    return ["train", "upload"].includes(s.state) && s.phase === "running" ? "training" : "idle";
  }

  function drawTopology() {
    const topo = model.run.topology;
    if (!topo) return;
    const parents = new Map(topo.nodes.map((n) => [n.name, []]));
    for (const [child, parent] of topo.edges) parents.get(child).push(parent);
    const depth = new Map();
    const level = (name) => {
      if (!depth.has(name)) {
        depth.set(name, 0);
        const ps = parents.get(name);
        depth.set(name, ps.length ? 1 + Math.max(...ps.map(level)) : 0);
      }
      return depth.get(name);
    };
    const rows = [];
    for (const n of topo.nodes) (rows[level(n.name)] = rows[level(n.name)] || []).push(n);
    const svg = $("topology");
    const W = svg.clientWidth || 800, H = 260, pos = new Map();
    rows.forEach((row, d) => row.forEach((n, i) => pos.set(n.name,
      [W * (i + 1) / (row.length + 1), 30 + d * (H - 70) / Math.max(1, rows.length - 1)])));
    const last = model.records.length ? model.records[model.records.length - 1] : {};
    const nodes = last.nodes || {};
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.replaceChildren();
    for (const [child, parent] of topo.edges) {
      const [a, b] = [pos.get(child), pos.get(parent)];
      svg.append(el("svg:line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1] }));
    }
    for (const n of topo.nodes) {
      const [x, y] = pos.get(n.name);
      const status = nodeStatus(n.name, parents.get(n.name).length === 0);
      const g = el("svg:g", { "data-node": n.name, "data-status": status });
      const metrics = nodes[n.name] || {};
      const tip = Object.entries(metrics).map(([k, v]) => k + " " + fmt(v)).join(", ");
      g.append(el("svg:title", {}, n.name + " (" + status + ")" + (tip ? ": " + tip : "")),
        el("svg:circle", { cx: x, cy: y, r: 12, class: "node-" + status }),
        el("svg:text", { x: x, y: y + 26 }, n.name + (n.clients ? " · " + n.clients + " clients"
          : "")));
      svg.append(g);
    }
  }

  // -- the report ------------------------------------------------------------------------------
  function drawReport() {
    const r = model.report;
    if (!r) return;
    $("report-card").hidden = false;
    if (r.markdown) { $("report").textContent = r.markdown; return; }
    $("report").textContent = Object.entries(r).map(([k, v]) => k + ": " +
      (typeof v === "object" ? JSON.stringify(v) : fmt(v))).join("\n");
  }

  // -- the stream ------------------------------------------------------------------------------
  function drawAll() {
    drawRun(); drawStatus(); drawCharts(); drawClients(); drawTopology(); drawReport();
  }

  function onSnapshot(e) {
    const d = JSON.parse(e.data);
    Object.assign(model, { run: d.run, status: d.status, records: d.records,
      clients: d.clients, report: d.report });
    drawAll();
  }

  function onUpdate(e) {
    const d = JSON.parse(e.data);
    model.status = d.status;
    if (d.records) model.records = model.records.concat(d.records).slice(-10000);
    if (d.clients) model.clients = d.clients;
    if (d.report) model.report = d.report;
    drawStatus();
    if (d.records) drawCharts();
    if (d.clients) drawClients();
    if (model.run.topology) drawTopology();
    if (d.report) drawReport();
  }

  function connect() {
    const conn = $("conn");
    const source = new EventSource("events" + query);
    source.addEventListener("snapshot", onSnapshot);
    source.addEventListener("update", onUpdate);
    source.addEventListener("end", () => {
      source.close();
      conn.textContent = "run over";
      conn.dataset.conn = "closed";
    });
    source.onopen = () => { conn.textContent = "live"; conn.dataset.conn = "live"; };
    source.onerror = () => {
      const closed = source.readyState === EventSource.CLOSED;
      if (closed && conn.dataset.conn === "closed") return;  // the run is over: it said so
      conn.textContent = closed ? "disconnected" : "reconnecting";
      conn.dataset.conn = closed ? "disconnected" : "reconnecting";
    };
  }

  setInterval(drawEta, 1000);
  connect();
})();
