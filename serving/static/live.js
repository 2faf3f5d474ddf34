// The dlserve live page: polls /api/stats every second and draws the table
// and four canvas charts. No libraries, nothing loaded from elsewhere.
"use strict";

const REFRESH_MS = 1000;
const SPAN_S = 120; // seconds of history on the time charts
const GAP_S = 3.5; // points further apart than this are not joined
const PALETTE = ["#2563eb", "#e11d48", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
const UNKNOWN = ""; // failures that named a model the server does not know

const colors = new Map();
let updates = 0;

function colorOf(model) {
  if (model === UNKNOWN) return "#9ca3af";
  if (!colors.has(model)) colors.set(model, PALETTE[colors.size % PALETTE.length]);
  return colors.get(model);
}

function label(model) {
  return model === UNKNOWN ? "(unknown model)" : model;
}

// -- number formatting -----------------------------------------------------

function fmtRate(v) {
  if (v === null || v === undefined) return "–";
  if (v === 0) return "0";
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function fmtMs(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1) return (v * 1000).toFixed(0) + " µs";
  if (v < 10) return v.toFixed(2) + " ms";
  if (v < 100) return v.toFixed(1) + " ms";
  if (v < 1000) return v.toFixed(0) + " ms";
  return (v / 1000).toFixed(2) + " s";
}

function fmtAxis(v, unit) {
  if (v === 0) return "0";
  if (unit === "ms") return v < 1 ? `${Number((v * 1000).toPrecision(3))} µs` : `${Number(v.toPrecision(3))} ms`;
  if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k";
  return String(Number(v.toPrecision(3)));
}

// -- the table -------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function numCell(field, value, text, unit) {
  const td = el("td", { class: "num", "data-field": field, "data-value": value === null ? "" : String(value) }, text);
  if (unit && value !== null) td.append(el("span", { class: "unit" }, unit));
  return td;
}

function queuedCell(m) {
  // In flight, and below it what waits in the queue per priority level.
  const td = numCell("inflight", m.inflight, String(m.inflight));
  const levels = Object.entries(m.queued_by_priority || {});
  if (levels.length > 0) {
    const text = levels.length === 1
      ? `queued ${levels[0][1]}`
      : "queued " + levels.map(([p, n]) => `P${p} ${n}`).join(" · ");
    td.append(el("span", { class: "codes" }, text));
  }
  return td;
}

function renderTable(models) {
  const body = document.querySelector("#models tbody");
  const rows = models.map((m) => {
    const name = el("td", { class: "model" + (m.model === UNKNOWN ? " unknown" : "") },
      el("span", { class: "swatch", style: "" }), label(m.model));
    name.querySelector(".swatch").style.background = colorOf(m.model);
    const versions = el("td", { class: "versions" },
      ...m.versions.map((v) => el("span", {
        class: "version" + (v.ready ? "" : " down"),
        title: v.ready ? "ready" : "not ready",
      }, `v${v.version}${v.provider ? " · " + v.provider.replace("ExecutionProvider", "") : ""}`)));
    if (m.model === UNKNOWN) versions.append("–");
    const errors = numCell("errors_rps", m.errors_rps, fmtRate(m.errors_rps), "/s");
    if (m.errors_rps > 0) {
      errors.classList.add("bad");
      errors.append(el("span", { class: "codes" },
        Object.entries(m.errors_by_code).map(([c, v]) => `${c} ${fmtRate(v)}`).join(" · ")));
    }
    return el("tr", { "data-model": m.model },
      name,
      versions,
      numCell("throughput_rps", m.throughput_rps, fmtRate(m.throughput_rps), "/s"),
      numCell("p50_ms", m.p50_ms, fmtMs(m.p50_ms)),
      numCell("p99_ms", m.p99_ms, fmtMs(m.p99_ms)),
      numCell("queue_p50_ms", m.queue_p50_ms, fmtMs(m.queue_p50_ms)),
      numCell("compute_p50_ms", m.compute_p50_ms, fmtMs(m.compute_p50_ms)),
      errors,
      numCell("mean_batch", m.mean_batch, m.mean_batch === null ? "–" : m.mean_batch.toFixed(1)),
      queuedCell(m));
  });
  body.replaceChildren(...rows);
  document.getElementById("empty").hidden = models.length > 0;
}

// -- charts ----------------------------------------------------------------

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 4, 8, 10]) if (v <= m * p) return m * p; // quarters stay round
  return 10 * p;
}

// Sets up a canvas for crisp drawing; returns its context and CSS size.
function surface(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif";
  return { ctx, w, h };
}

const PAD = { left: 58, right: 12, top: 8, bottom: 22 };

function yAxis(ctx, w, h, max, unit) {
  const plotH = h - PAD.top - PAD.bottom;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    const y = PAD.top + plotH - (plotH * i) / 4;
    ctx.strokeStyle = i === 0 ? "#cbd2d9" : "#eef1f4";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(PAD.left, Math.round(y) + 0.5);
    ctx.lineTo(w - PAD.right, Math.round(y) + 0.5);
    ctx.stroke();
    ctx.fillStyle = "#6b7785";
    ctx.fillText(fmtAxis(v, unit), PAD.left - 8, y);
  }
}

// Log-scale axis from 10^lo to 10^hi: a line per decade, lighter ones at 2 and 5.
function logAxis(ctx, w, h, lo, hi, unit) {
  const plotH = h - PAD.top - PAD.bottom;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let e = lo; e <= hi; e++) {
    for (const m of [1, 2, 5]) {
      const v = m * Math.pow(10, e);
      const f = (Math.log10(v) - lo) / (hi - lo);
      if (f > 1.0001) break;
      const y = Math.round(PAD.top + plotH - plotH * f) + 0.5;
      ctx.strokeStyle = e === lo && m === 1 ? "#cbd2d9" : m === 1 ? "#e5e9ee" : "#f3f5f7";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(PAD.left, y);
      ctx.lineTo(w - PAD.right, y);
      ctx.stroke();
      if (m === 1 || hi - lo <= 1) {
        ctx.fillStyle = "#6b7785";
        ctx.fillText(fmtAxis(v, unit), PAD.left - 8, y);
      }
    }
  }
}

// series: [{color, dash, points: [[t, v|null], ...]}]; t in seconds. With
// `log`, the y axis is logarithmic (latency: tens of µs next to a slow tail).
function lineChart(canvas, now, series, unit, log = false) {
  const { ctx, w, h } = surface(canvas);
  const plotW = w - PAD.left - PAD.right;
  const plotH = h - PAD.top - PAD.bottom;
  const t0 = now - SPAN_S;
  let top = 0;
  let bottom = Infinity;
  for (const s of series) {
    for (const [t, v] of s.points) {
      if (t < t0 || v === null) continue;
      top = Math.max(top, v);
      if (v > 0) bottom = Math.min(bottom, v);
    }
  }
  let Y;
  if (log && top > 0) {
    const lo = Math.floor(Math.log10(bottom));
    const hi = Math.max(Math.ceil(Math.log10(top)), lo + 1);
    logAxis(ctx, w, h, lo, hi, unit);
    Y = (v) => PAD.top + plotH - (plotH * (Math.log10(Math.max(v, Math.pow(10, lo))) - lo)) / (hi - lo);
  } else {
    const max = niceMax(top * 1.1);
    yAxis(ctx, w, h, max, unit);
    Y = (v) => PAD.top + plotH - (plotH * v) / max;
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  ctx.fillStyle = "#6b7785";
  for (let ago = SPAN_S; ago >= 0; ago -= 30) {
    const x = PAD.left + (plotW * (SPAN_S - ago)) / SPAN_S;
    ctx.fillText(ago === 0 ? "now" : `−${ago} s`, Math.min(x, w - PAD.right - 12), h - PAD.bottom + 6);
  }
  const X = (t) => PAD.left + (plotW * (t - t0)) / SPAN_S;
  ctx.save();
  ctx.beginPath();
  ctx.rect(PAD.left, PAD.top - 2, plotW, plotH + 4);
  ctx.clip();
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.8;
    ctx.lineJoin = "round";
    ctx.setLineDash(s.dash ? [5, 4] : []);
    ctx.beginPath();
    let pen = false;
    let previous = -Infinity;
    for (const [t, v] of s.points) {
      // No line across gaps: no value, or no page was asking for a while.
      if (t < t0 - 2 || v === null) { pen = false; continue; }
      if (pen && t - previous <= GAP_S) ctx.lineTo(X(t), Y(v)); else ctx.moveTo(X(t), Y(v));
      pen = true;
      previous = t;
    }
    ctx.stroke();
  }
  ctx.restore();
  if (top === 0 && series.every((s) => s.points.every(([, v]) => v === null))) {
    ctx.fillStyle = "#9aa5b1";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText("no data yet", PAD.left + plotW / 2, PAD.top + plotH / 2);
  }
}

function batchLabel(le, i, bounds) {
  if (le === null) return `>${bounds[i - 1]}`;
  const prev = i > 0 ? bounds[i - 1] : 0;
  return le - prev <= 1 ? String(le) : `${prev + 1}–${le}`;
}

function barChart(canvas, models) {
  const { ctx, w, h } = surface(canvas);
  const plotW = w - PAD.left - PAD.right;
  const plotH = h - PAD.top - PAD.bottom;
  const withBatches = models.filter((m) => m.batches.length > 0);
  const bounds = withBatches.length ? withBatches[0].batches.map((b) => b.le) : [1, 2, 4, 8];
  let last = 3; // always show up to 8 rows
  let top = 0;
  for (const m of withBatches) {
    m.batches.forEach((b, i) => {
      if (b.per_second > 0) { last = Math.max(last, i); top = Math.max(top, b.per_second); }
    });
  }
  const n = Math.min(last + 1, bounds.length);
  const max = niceMax(top * 1.1);
  yAxis(ctx, w, h, max, "");
  const slot = plotW / n;
  const barW = Math.max(2, Math.min(28, (slot * 0.7) / Math.max(withBatches.length, 1)));
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let i = 0; i < n; i++) {
    const cx = PAD.left + slot * (i + 0.5);
    ctx.fillStyle = "#6b7785";
    ctx.fillText(batchLabel(bounds[i], i, bounds), cx, h - PAD.bottom + 6);
    withBatches.forEach((m, j) => {
      const v = m.batches[i] ? m.batches[i].per_second : 0;
      if (v <= 0) return;
      const bh = (plotH * v) / max;
      const x = cx - (barW * withBatches.length) / 2 + j * barW;
      ctx.fillStyle = colorOf(m.model);
      ctx.fillRect(x + 1, PAD.top + plotH - bh, barW - 2, bh);
    });
  }
  if (top === 0) {
    ctx.fillStyle = "#9aa5b1";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText("no batches in the window", PAD.left + plotW / 2, PAD.top + plotH / 2);
  }
}

function historySeries(history, models, key, dash) {
  return models.map((m) => ({
    color: colorOf(m.model),
    dash,
    points: history.map((p) => [p.time, p.models[m.model] ? p.models[m.model][key] : null]),
  }));
}

// One legend entry per model in each chart's caption.
function legend(canvasId, models) {
  const caption = document.getElementById(canvasId).parentElement.querySelector("figcaption");
  let box = caption.querySelector(".legend");
  if (!box) box = caption.appendChild(el("span", { class: "legend" }));
  box.replaceChildren(...models.map((m) => {
    const item = el("span", { class: "item" }, el("span", { class: "swatch" }), label(m.model));
    item.firstChild.style.background = colorOf(m.model);
    return item;
  }));
}

function renderCharts(stats) {
  const known = stats.models.filter((m) => m.model !== UNKNOWN);
  legend("chart-throughput", known);
  legend("chart-latency", known);
  legend("chart-errors", stats.models.filter((m) => m.errors_total > 0));
  legend("chart-batches", known);
  const now = stats.time;
  lineChart(document.getElementById("chart-throughput"), now,
    historySeries(stats.history, known, "throughput_rps", false), "");
  lineChart(document.getElementById("chart-latency"), now,
    [...historySeries(stats.history, known, "p50_ms", false),
     ...historySeries(stats.history, known, "p99_ms", true)], "ms", true);
  lineChart(document.getElementById("chart-errors"), now,
    historySeries(stats.history, stats.models, "errors_rps", false), "");
  barChart(document.getElementById("chart-batches"), known);
}

// -- polling ---------------------------------------------------------------

let last = null;

function setStatus(ok, text) {
  const status = document.getElementById("status");
  status.className = "status " + (ok ? "ok" : "down");
  document.getElementById("status-text").textContent = text;
}

async function refresh() {
  const started = Date.now();
  try {
    const response = await fetch("/api/stats", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    last = await response.json();
    for (const m of last.models) colorOf(m.model);
    for (const node of document.querySelectorAll(".window")) node.textContent = last.window_seconds;
    renderTable(last.models);
    renderCharts(last);
    updates += 1;
    document.body.dataset.updates = String(updates);
    setStatus(true, "live · updated " + new Date(last.time * 1000).toLocaleTimeString());
  } catch (err) {
    setStatus(false, "server not answering, retrying (" + err.message + ")");
  }
  setTimeout(refresh, Math.max(100, REFRESH_MS - (Date.now() - started)));
}

window.addEventListener("resize", () => { if (last) renderCharts(last); });
refresh();
