// parkd dashboard: polls the node that served this page (CONTRACT §6) every
// couple of seconds.  Plain DOM, no libraries, no build step.
"use strict";

const REFRESH_MS = 2000;
const FETCH_TIMEOUT_MS = 4000;
const TREND_WINDOW_S = 3600;
const TREND_POINTS = 60;

const $ = (id) => document.getElementById(id);

async function getJSON(path) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch(path, { cache: "no-store", signal: abort.signal });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    return { status: response.status, body };
  } finally {
    clearTimeout(timer);
  }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 1) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function level(free, capacity) {
  if (free === null || free === undefined || !capacity) return "unknown";
  const ratio = free / capacity;
  if (ratio >= 0.25) return "ok";
  if (ratio >= 0.1) return "low";
  return "full";
}

// ------------------------------------------------------------------ banner

function setBanner(state, message) {
  document.body.dataset.state = state;
  const banner = $("banner");
  if (!message) {
    banner.hidden = true;
    banner.textContent = "";
    return;
  }
  banner.hidden = false;
  banner.className = state === "unreachable" ? "banner error" : "banner";
  banner.textContent = message;
}

// The alarms raised on the node this page talks to (CONTRACT §10), one line each.
const ALARM_TEXT = {
  nospace:
    "its disk is almost full. It refuses new frames until space is freed on its data directory's " +
    "filesystem (cameras keep them and try again, here or on another node); reads still work.",
};

function renderAlarms(cluster) {
  const alarms = cluster.alarms || [];
  const banner = $("alarms");
  banner.hidden = alarms.length === 0;
  banner.dataset.alarms = alarms.join(" ");
  banner.replaceChildren(
    ...alarms.map((name) =>
      el("div", { class: "alarm", "data-alarm": name }, `Alarm ${name} on node ${cluster.node_id}: ${ALARM_TEXT[name] || "see its log."}`),
    ),
  );
}

// ------------------------------------------------------------------ cluster strip

function renderCluster(cluster) {
  $("served-by").textContent = `node ${cluster.node_id} · ${cluster.role}`;
  $("cluster-leader").textContent = cluster.leader_id === null ? "none" : `node ${cluster.leader_id}`;
  $("cluster-term").textContent = cluster.term;
  $("cluster-commit").textContent = cluster.commit_index;
  $("cluster-applied").textContent = cluster.last_applied;
  $("cluster-lag").textContent = cluster.reactor_lag_ms === undefined ? "–" : `${cluster.reactor_lag_ms} ms`;
  const section = $("cluster");
  section.dataset.leader = cluster.leader_id === null ? "" : String(cluster.leader_id);
  section.dataset.term = String(cluster.term);
  section.dataset.node = String(cluster.node_id);
  const items = cluster.members.map((m) => {
    const classes = ["member"];
    if (m.id === cluster.leader_id) classes.push("leader");
    if (m.id === cluster.node_id) classes.push("self");
    let label = `node ${m.id}`;
    if (m.id === cluster.leader_id) label += " · leader";
    if (m.match_index !== null && m.match_index !== undefined) label += ` · match ${m.match_index}`;
    const link = el("a", { href: `${location.protocol}//${m.http}/`, title: `dashboard of node ${m.id} (${m.http})` }, label);
    return el("li", { class: classes.join(" "), "data-member": m.id }, link);
  });
  $("members").replaceChildren(...items);
}

// ------------------------------------------------------------------ lots

function span(seconds) {
  if (seconds >= 3000) return "last hour";
  if (seconds >= 90) return `last ${Math.round(seconds / 60)} min`;
  return `last ${Math.max(1, Math.round(seconds))} s`;
}

// The lot's free spaces over the history's [start, end], held until "now".
function trendLine(history, capacity) {
  const width = 200;
  const height = 40;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "trend");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const points = history && history.points ? history.points : [];
  svg.dataset.points = String(points.length);
  if (!points.length || !capacity) return svg;
  const start = history.start;
  const length = Math.max(1e-3, history.end - start);
  const y = (free) => (height - 2 - (free / capacity) * (height - 4)).toFixed(1);
  const coords = [];
  points.forEach((p, i) => {
    const x = Math.min(width, Math.max(0, ((p.at - start) / length) * width));
    if (i > 0) coords.push(`${x.toFixed(1)},${y(points[i - 1].free)}`); // a step, not a slope
    coords.push(`${x.toFixed(1)},${y(p.free)}`);
  });
  coords.push(`${width},${y(points[points.length - 1].free)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", coords.join(" "));
  svg.append(line);
  const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
  title.textContent = `free spaces, ${span(length)}`;
  svg.append(title);
  return svg;
}

function renderLots(lots, histories) {
  const cards = lots.map((lot) => {
    const lvl = level(lot.free, lot.capacity);
    const pct = lot.free === null ? 0 : Math.round((100 * lot.free) / Math.max(1, lot.capacity));
    const bar = el("div", { class: "bar" }, el("div", {}));
    bar.firstChild.style.width = `${pct}%`;
    return el(
      "article",
      { class: `lot level-${lvl}`, "data-lot": lot.id, "data-level": lvl },
      el("h3", {}, lot.id),
      el(
        "div",
        { class: "count" },
        el("span", { class: "free" }, lot.free === null ? "–" : lot.free),
        el("span", { class: "capacity" }, ` / ${lot.capacity}`),
      ),
      bar,
      trendLine(histories[lot.id], lot.capacity),
      el(
        "div",
        { class: "meta" },
        `${lot.cameras} camera${lot.cameras === 1 ? "" : "s"} · updated ${ago(lot.updated_at)}` +
          (histories[lot.id] && histories[lot.id].start !== null
            ? ` · trend: ${span(histories[lot.id].end - histories[lot.id].start)}`
            : ""),
      ),
    );
  });
  $("lots").replaceChildren(...cards);
}

// ------------------------------------------------------------------ cameras

// A camera an operator disabled (parkctl camera disable) shows as such, whatever its age.
// Its incarnation is not shown: a 64-bit number loses digits in a JavaScript number.
function cameraStatus(c) {
  if (c.enabled === false) {
    return el("span", { class: "status disabled", title: `disabled by an operator; last frame ${c.status}` }, "disabled");
  }
  return el("span", { class: `status ${c.status}` }, c.status);
}

function renderCameras(cameras) {
  const rows = cameras.map((c) =>
    el(
      "tr",
      { "data-camera": c.camera_id, "data-enabled": c.enabled !== false },
      el("td", {}, c.camera_id),
      el("td", {}, c.lot),
      el("td", { class: "free" }, c.free),
      el("td", { class: "last-seq" }, c.last_seq),
      el("td", { class: "last-seen", title: new Date(c.last_seen * 1000).toISOString() }, ago(c.last_seen)),
      el("td", {}, cameraStatus(c)),
    ),
  );
  $("cameras").tBodies[0].replaceChildren(...rows);
  $("no-cameras").hidden = cameras.length > 0;
}

// ------------------------------------------------------------------ the loop

async function refresh() {
  let cluster;
  try {
    cluster = await getJSON("/api/v1/cluster");
  } catch (e) {
    setBanner("unreachable", `Cannot reach the node at ${location.host}; retrying every ${REFRESH_MS / 1000} s…`);
    return;
  }
  if (cluster.status !== 200 || !cluster.body) {
    setBanner("unreachable", `The node at ${location.host} answered ${cluster.status}; retrying…`);
    return;
  }
  const c = cluster.body;
  renderCluster(c);
  renderAlarms(c);

  // Linearizable by default; when this node cannot confirm a read, show its own
  // (possibly stale) state under the banner instead of nothing.
  let query = "";
  let problem = null;
  let lots = await getJSON("/api/v1/lots");
  if (lots.status === 503) {
    problem = (lots.body && lots.body.error) || "no leader";
    query = "?consistency=local";
    lots = await getJSON(`/api/v1/lots${query}`);
  }
  const [cameras, ...histories] = await Promise.all([
    getJSON(`/api/v1/cameras${query}`),
    ...(lots.body && lots.body.lots ? lots.body.lots : []).map((lot) =>
      getJSON(
        `/api/v1/lots/${encodeURIComponent(lot.id)}/history?consistency=local` +
          `&window=${TREND_WINDOW_S}&points=${TREND_POINTS}`,
      ),
    ),
  ]);
  if (lots.status === 200) {
    const byLot = {};
    histories.forEach((h, i) => {
      if (h.status === 200) byLot[lots.body.lots[i].id] = h.body;
    });
    renderLots(lots.body.lots, byLot);
  }
  if (cameras.status === 200) renderCameras(cameras.body.cameras);

  if (c.leader_id === null) {
    setBanner(
      "no-leader",
      `No leader: node ${c.node_id} (${c.role}, term ${c.term}) knows of no leader — an election is under way ` +
        `or a majority is unreachable. Showing this node's last known values, which may be stale.`,
    );
  } else if (problem !== null) {
    setBanner(
      "no-leader",
      `Node ${c.node_id} could not confirm a read with leader node ${c.leader_id} (${problem}). ` +
        `Showing this node's last known values, which may be stale.`,
    );
  } else {
    setBanner("ok", null);
  }
  $("refreshed").textContent = `refreshed ${new Date().toLocaleTimeString()} · every ${REFRESH_MS / 1000} s`;
}

async function loop() {
  try {
    await refresh();
  } catch (e) {
    setBanner("unreachable", `Cannot reach the node at ${location.host} (${e}); retrying…`);
  }
  setTimeout(loop, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", loop);
