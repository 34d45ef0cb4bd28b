// The cluster page: polls this agent's /cluster and /ui/latency and renders them. No library; every
// value from the network is inserted as text (never as HTML), and read as untrusted: any field may be missing
// or of another type (review27a L2: one action of null threw in render on every poll, the page went stale
// without a word), and a name may be one of Object.prototype's (L3: a model "constructor" blanked the table),
// so lookups keyed by names use Maps or objects without a prototype and own properties only.
"use strict";

const POLL_MS = 2000;
const STALE_MS = 6000;
const FETCH_MS = POLL_MS * 2;  // one hung request must not stop the polling (review27a L1)
const MAX_ACTIONS_SHOWN = 50;  // the wire allows 5,600 (peerserve/wire.py MAX_ACTIONS)
const started = Date.now();
let lastOk = 0;
let lastError = "";

function list(v) {
  return Array.isArray(v) ? v : [];
}

function own(obj, key) {  // obj[key] if obj is an object holding key itself (not "constructor" from its prototype)
  return obj !== null && typeof obj === "object" && Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined;
}

function text(v) {
  return v === null || v === undefined ? "–" : String(v);
}

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

function members(c) {  // the members that are objects (a null or a number among them is left out)
  return list(c.members).filter((m) => m !== null && typeof m === "object");
}

function renderMembers(c) {
  const box = document.getElementById("members");
  const cards = members(c).map((m) => {
    const gpu = m.gpu_load === null || m.gpu_load === undefined ? "none" : `${fmt(m.gpu_load, 0)} %`;
    const title = el("h3", {}, el("span", {}, m.node_id, m.node_id === c.node_id ? " (this agent)" : ""),
      el("span", {}, el("span", { class: `badge ${m.status}` }, m.status),
        m.node_id === c.leader ? el("span", { class: "badge leader" }, "leader") : ""));
    const info = el("dl", {},
      el("dt", {}, "address"), el("dd", {}, String(m.api_url || m.address || "–").replace(/^https?:\/\//, "")),
      el("dt", {}, "memory free"), el("dd", {}, `${fmt((m.mem_available_mb || 0) / 1024, 2)} GiB`),
      el("dt", {}, "GPU"), el("dd", {}, gpu),
      el("dt", {}, "models"), el("dd", {}, list(m.models).join(", ") || "none"));
    return el("div", { class: `card member ${m.status}`, "data-node": m.node_id, "data-status": m.status }, title, info);
  });
  box.replaceChildren(...cards);
  const counts = new Map();
  for (const m of members(c)) counts.set(m.status, (counts.get(m.status) || 0) + 1);
  document.getElementById("member-count").textContent =
    "(" + [...counts].map(([k, v]) => `${v} ${k}`).join(", ") + ")";
}

function spark(series) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 160 34");
  svg.setAttribute("preserveAspectRatio", "none");
  const pts = series.points;  // checked by renderModels: [[seconds ago (<= 0), ms, count], ...], not empty
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

function series(lat) {  // a latency series the chart can draw, else undefined
  if (lat === null || typeof lat !== "object") return undefined;
  const points = list(lat.points).filter((p) => Array.isArray(p) && Number.isFinite(p[0]) && Number.isFinite(p[1]));
  return points.length ? { kind: text(lat.kind), points } : undefined;
}

function renderModels(c, latency) {
  const where = new Map();
  const idle = own(c.last_placement, "idle_running");  // kept running, no traffic (Mode 1)
  for (const m of members(c)) {
    if (m.status === "dead") continue;
    for (const model of list(m.models)) {
      if (!where.has(model)) where.set(model, []);
      where.get(model).push(m.node_id);
    }
  }
  const models = latency !== null && typeof latency === "object" ? Object.keys(latency) : [];
  for (const model of models) if (!where.has(model)) where.set(model, []);
  const rows = [...where.keys()].sort().map((model) => {
    const lat = series(own(latency, model));
    const chart = lat ? el("div", {}, spark(lat),
      el("span", { class: "muted" }, `${lat.kind} p50 now ${fmt(lat.points[lat.points.length - 1][1], 2)} ms`)) :
      el("span", { class: "muted" }, "no requests through this agent");
    const nodes = where.get(model).map((n) => {
      const count = Number(own(own(idle, n), model));
      return count > 0 ? `${n} (${count} idle)` : n;
    });
    return el("tr", { "data-model": model }, el("td", {}, model), el("td", {}, nodes.join(", ") || "not running"),
      el("td", {}, chart));
  });
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 3, class: "muted" }, "No model is running."))]));
}

function renderPlacement(p) {
  const box = document.getElementById("placement");
  if (p === null || typeof p !== "object") { box.replaceChildren(el("p", { class: "muted" }, "No placement yet.")); return; }
  const all = list(p.actions).filter((a) => a !== null && typeof a === "object");
  const actions = all.slice(0, MAX_ACTIONS_SHOWN)
    .map((a) => el("li", {}, `${text(a.op)} ${text(a.count)} × ${text(a.model)} on ${text(a.node)}`));
  if (all.length > MAX_ACTIONS_SHOWN) actions.push(el("li", { class: "muted" }, `… and ${all.length - MAX_ACTIONS_SHOWN} more`));
  box.replaceChildren(el("dl", { id: "placement-detail" },
    el("dt", {}, "when"), el("dd", {}, `${ago(Number(p.at))} by ${text(p.leader)} at term ${text(p.term)}`),
    el("dt", {}, "solver"), el("dd", {}, `${p.method || "–"}, mode ${p.mode || "–"}, ${p.status || "–"}`),
    el("dt", {}, "objective"), el("dd", {}, `${fmt(p.objective_ms, 1)} ms (summed RTT + execution)`),
    el("dt", {}, "solve time"), el("dd", {}, `${fmt(p.solve_ms, 1)} ms`),
    el("dt", {}, "requests"), el("dd", {}, `${text(p.requests)} request streams over ${list(p.nodes).join(", ")}; ${text(p.rejected || 0)} rejected`),
    el("dt", {}, "actions"), el("dd", {}, actions.length ? el("ul", {}, ...actions) : "none: the placement stands"),
    ...(p.note ? [el("dt", {}, "note"), el("dd", {}, text(p.note))] : [])));
}

// Each part rendered on its own: one that throws leaves the others shown, and the banner says which failed
// (review27a L2: the exception was swallowed by poll's catch, the page stayed stale with no word).
function render(c, latency) {
  if (c === null || typeof c !== "object" || Array.isArray(c)) {
    banner("bad", "This agent's /cluster answer is not a JSON object: nothing of it can be shown.");
    return;
  }
  const failed = [];
  const parts = [
    ["summary", () => {
      document.title = `peerserve · ${text(c.node_id)}`;
      document.getElementById("self").textContent = `· ${text(c.node_id)}`;
      document.getElementById("leader").textContent = c.leader ? String(c.leader) : "none";
      document.getElementById("term").textContent = text(c.term);
      document.getElementById("role").textContent = c.role ? String(c.role) : "standalone";
    }],
    ["members", () => renderMembers(c)],
    ["models", () => renderModels(c, own(latency, "models"))],
    ["placement", () => renderPlacement(c.last_placement)],
  ];
  for (const [name, part] of parts) {
    try {
      part();
    } catch (err) {
      failed.push(`${name}: ${err.message}`);
    }
  }
  if (failed.length) {
    banner("bad", `Part of this agent's answer could not be shown (${failed.join("; ")}); the rest is current.`);
    return;
  }
  const peers = members(c).filter((m) => m.node_id !== c.node_id);
  if (peers.length && peers.every((m) => m.status !== "alive")) {
    banner("bad", `${c.node_id} is isolated: it cannot reach any of its ${peers.length} peers. ` +
      "Its view of the cluster is stale; open the page of another agent.");
  } else if (c.role !== null && !c.leader) {
    banner("warn", "No leader at the moment: an election is under way.");
  } else {
    banner(null, "");
  }
}

// One request, given up after FETCH_MS (its body's reading too): a request the agent never answers (a board
// gone mid-poll) held the next poll back for good, as it is scheduled only once this one ends (review27a L1).
// AbortController and a timer rather than AbortSignal.timeout, which browsers before 2022 lack.
async function getJson(path) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_MS);
  try {
    const r = await fetch(path, { cache: "no-store", signal: abort.signal });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return await r.json();
  } catch (err) {
    throw abort.signal.aborted ? new Error(`${path}: no answer in ${FETCH_MS / 1000} s`) : err;
  } finally {
    clearTimeout(timer);
  }
}

// The lost-contact banner, on its own timer: shown whenever the last good answer is older than STALE_MS,
// whatever the requests are doing (before, only a failed request showed it: a hung one never did).
function stale() {
  const last = lastOk || started;
  if (lastOk && Date.now() - last <= STALE_MS) return;
  if (!lastOk && !lastError && Date.now() - last <= STALE_MS) return;  // the first answer is still on its way
  const since = lastOk ? `${((Date.now() - lastOk) / 1000).toFixed(0)} s` : "the start";
  const why = lastError ? ` (${lastError})` : "";
  banner("bad", `Lost contact with this agent since ${since}${why}; retrying every ${POLL_MS / 1000} s.`);
}

async function poll() {
  try {
    const [c, latency] = await Promise.all(["/cluster", "/ui/latency?span_s=180&bin_s=5"].map(getJson));
    lastOk = Date.now();
    lastError = "";
    render(c, latency);
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  } catch (err) {
    lastError = err.message;
    stale();
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

setInterval(stale, 1000);
poll();
