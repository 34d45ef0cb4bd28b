// The cluster page: polls this agent's /cluster and /ui/latency and renders them. No library; every
// value from the network is inserted as text (never as HTML).
"use strict";

const POLL_MS = 2000;
const STALE_MS = 6000;
let lastOk = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fmt(n, digits) {
  return n === null || n === undefined || Number.isNaN(n) ? "–" : Number(n).toFixed(digits);
}

function ago(ts) {
  if (!ts) return "–";
  const s = Math.max(0, Date.now() / 1000 - ts);
  return s < 90 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(0)} min ago`;
}

function banner(kind, text) {
  const b = document.getElementById("banner");
  if (!text) { b.hidden = true; b.textContent = ""; b.className = ""; return; }
  b.hidden = false; b.className = kind; b.textContent = text;
}

function renderMembers(c) {
  const box = document.getElementById("members");
  const cards = c.members.map((m) => {
    const gpu = m.gpu_load === null || m.gpu_load === undefined ? "none" : `${fmt(m.gpu_load, 0)} %`;
    const title = el("h3", {}, el("span", {}, m.node_id, m.node_id === c.node_id ? " (this agent)" : ""),
      el("span", {}, el("span", { class: `badge ${m.status}` }, m.status),
        m.node_id === c.leader ? el("span", { class: "badge leader" }, "leader") : ""));
    const info = el("dl", {},
      el("dt", {}, "address"), el("dd", {}, (m.api_url || m.address || "–").replace(/^https?:\/\//, "")),
      el("dt", {}, "memory free"), el("dd", {}, `${fmt((m.mem_available_mb || 0) / 1024, 2)} GiB`),
      el("dt", {}, "GPU"), el("dd", {}, gpu),
      el("dt", {}, "models"), el("dd", {}, (m.models || []).join(", ") || "none"));
    return el("div", { class: `card member ${m.status}`, "data-node": m.node_id, "data-status": m.status }, title, info);
  });
  box.replaceChildren(...cards);
  const counts = {};
  for (const m of c.members) counts[m.status] = (counts[m.status] || 0) + 1;
  document.getElementById("member-count").textContent =
    "(" + Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ") + ")";
}

function spark(series) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 160 34");
  svg.setAttribute("preserveAspectRatio", "none");
  const pts = series.points;
  const max = Math.max(...pts.map((p) => p[1]), 0.001);
  const span = 180;
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.map((p) => `${(160 * (span + p[0]) / span).toFixed(1)},${(32 - 30 * p[1] / max).toFixed(1)}`).join(" "));
  const title = document.createElementNS(ns, "title");
  title.textContent = `${series.kind} p50, max ${fmt(max, 2)} ms over the last 3 min`;
  svg.append(title, line);
  for (const p of pts) {  // one dot per bin, so a single bin still shows
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", (160 * (span + p[0]) / span).toFixed(1));
    dot.setAttribute("cy", (32 - 30 * p[1] / max).toFixed(1));
    dot.setAttribute("r", "1.8");
    svg.append(dot);
  }
  return svg;
}

function renderModels(c, latency) {
  const where = {};
  const idle = (c.last_placement && c.last_placement.idle_running) || {};  // kept running, no traffic (Mode 1)
  for (const m of c.members) {
    if (m.status === "dead") continue;
    for (const model of m.models || []) (where[model] = where[model] || []).push(m.node_id);
  }
  for (const model of Object.keys(latency)) where[model] = where[model] || [];
  const rows = Object.keys(where).sort().map((model) => {
    const lat = latency[model];
    const chart = lat ? el("div", {}, spark(lat),
      el("span", { class: "muted" }, `${lat.kind} p50 now ${fmt(lat.points[lat.points.length - 1][1], 2)} ms`)) :
      el("span", { class: "muted" }, "no requests through this agent");
    const nodes = where[model].map((n) => (Number(idle[n]?.[model]) > 0 ? `${n} (${Number(idle[n][model])} idle)` : n));
    return el("tr", { "data-model": model }, el("td", {}, model), el("td", {}, nodes.join(", ") || "not running"),
      el("td", {}, chart));
  });
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 3, class: "muted" }, "No model is running."))]));
}

function renderPlacement(p) {
  const box = document.getElementById("placement");
  if (!p) { box.replaceChildren(el("p", { class: "muted" }, "No placement yet.")); return; }
  const actions = (p.actions || []).map((a) => el("li", {}, `${a.op} ${a.count} × ${a.model} on ${a.node}`));
  box.replaceChildren(el("dl", { id: "placement-detail" },
    el("dt", {}, "when"), el("dd", {}, `${ago(p.at)} by ${p.leader} at term ${p.term}`),
    el("dt", {}, "solver"), el("dd", {}, `${p.method || "–"}, mode ${p.mode || "–"}, ${p.status || "–"}`),
    el("dt", {}, "objective"), el("dd", {}, `${fmt(p.objective_ms, 1)} ms (summed RTT + execution)`),
    el("dt", {}, "solve time"), el("dd", {}, `${fmt(p.solve_ms, 1)} ms`),
    el("dt", {}, "requests"), el("dd", {}, `${p.requests ?? "–"} request streams over ${(p.nodes || []).join(", ")}; ${p.rejected || 0} rejected`),
    el("dt", {}, "actions"), el("dd", {}, actions.length ? el("ul", {}, ...actions) : "none: the placement stands"),
    ...(p.note ? [el("dt", {}, "note"), el("dd", {}, p.note)] : [])));
}

function render(c, latency) {
  document.title = `peerserve · ${c.node_id}`;
  document.getElementById("self").textContent = `· ${c.node_id}`;
  document.getElementById("leader").textContent = c.leader || "none";
  document.getElementById("term").textContent = c.term ?? "–";
  document.getElementById("role").textContent = c.role || "standalone";
  renderMembers(c);
  renderModels(c, latency.models || {});
  renderPlacement(c.last_placement);
  const peers = c.members.filter((m) => m.node_id !== c.node_id);
  if (peers.length && peers.every((m) => m.status !== "alive")) {
    banner("bad", `${c.node_id} is isolated: it cannot reach any of its ${peers.length} peers. ` +
      "Its view of the cluster is stale; open the page of another agent.");
  } else if (c.role !== null && !c.leader) {
    banner("warn", "No leader at the moment: an election is under way.");
  } else {
    banner(null, "");
  }
}

async function poll() {
  try {
    const [c, latency] = await Promise.all(["/cluster", "/ui/latency?span_s=180&bin_s=5"].map(async (path) => {
      const r = await fetch(path, { cache: "no-store" });
      if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
      return r.json();
    }));
    lastOk = Date.now();
    render(c, latency);
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  } catch (err) {
    const since = lastOk ? `${((Date.now() - lastOk) / 1000).toFixed(0)} s` : "the start";
    if (!lastOk || Date.now() - lastOk > STALE_MS) {
      banner("bad", `Lost contact with this agent since ${since} (${err.message}); retrying every ${POLL_MS / 1000} s.`);
    }
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
