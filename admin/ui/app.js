// pgrouter dashboard: renders the state the admin server pushes on
// /api/v1/events. No framework and nothing fetched from elsewhere.
"use strict";

const lagHistory = new Map(); // member -> last 60 lag samples (bytes)

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

function bytes(n) {
  if (n < 1024) return n + " B";
  const u = "KMGTPE";
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(1) + " " + u[i] + "iB";
}

function health(h) {
  if (!h.up) return el("span", {class: "down"}, "down" + (h.error ? ": " + h.error : ""));
  if (!h.accepts_connections) return "not accepting connections";
  return "up";
}

function renderMembers(topo) {
  const body = document.querySelector("#members tbody");
  body.replaceChildren(...topo.members.map(m => el("tr", {"data-member": m.name, "data-role": m.role},
    el("td", {}, m.name),
    el("td", {}, m.addr),
    el("td", {}, el("span", {class: "role " + m.role}, m.role)),
    el("td", {}, health(m.health)),
    el("td", {}, m.health.timeline || "-"),
    el("td", {}, m.role === "standby" ? bytes(m.health.replay_lag_bytes) + " / " + (m.health.replay_lag_ns / 1e9).toFixed(1) + " s" : "-"),
    el("td", {}, m.sessions))));
  const p = document.getElementById("primary");
  p.textContent = topo.primary || "none";
  p.dataset.primary = topo.primary || "";
}

function sparkline(samples) {
  const w = 120, h = 20, max = Math.max(1, ...samples);
  const pts = samples.map((v, i) => `${(i / 59 * w).toFixed(1)},${(h - v / max * h).toFixed(1)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  pl.setAttribute("points", pts); pl.setAttribute("fill", "none"); pl.setAttribute("stroke", "#2357a8");
  svg.append(pl);
  return svg;
}

function renderLag(topo) {
  const standbys = topo.members.filter(m => m.role === "standby");
  const box = document.getElementById("lag");
  if (!standbys.length) { box.replaceChildren(el("p", {class: "empty"}, "no standby")); return; }
  const scale = Math.max(16 << 20, ...standbys.map(m => m.health.replay_lag_bytes));
  box.replaceChildren(...standbys.map(m => {
    const lag = m.health.replay_lag_bytes;
    const hist = lagHistory.get(m.name) || [];
    hist.push(lag); if (hist.length > 60) hist.shift();
    lagHistory.set(m.name, hist);
    const fill = el("div", {class: "fill" + (lag > (1 << 20) ? " high" : "")});
    fill.style.width = Math.min(100, lag / scale * 100) + "%";
    return el("div", {class: "bar"}, el("span", {}, m.name), el("div", {}, el("div", {class: "track"}, fill), sparkline(hist)), el("span", {}, bytes(lag)));
  }));
}

function renderListeners(listeners) {
  const box = document.getElementById("listeners");
  const names = Object.keys(listeners || {}).sort();
  if (!names.length) { box.replaceChildren(el("p", {class: "empty"}, "no listener")); return; }
  const max = Math.max(1, ...names.map(n => listeners[n]));
  box.replaceChildren(...names.map(n => {
    const fill = el("div", {class: "fill"});
    fill.style.width = (listeners[n] / max * 100) + "%";
    return el("div", {class: "bar", "data-listener": n}, el("span", {}, n), el("div", {class: "track"}, fill), el("span", {}, listeners[n]));
  }));
}

function renderPools(pools) {
  const body = document.querySelector("#pools tbody");
  if (!pools || !pools.length) { body.replaceChildren(el("tr", {}, el("td", {colspan: 8, class: "empty"}, "no pool (session mode, or no pooled session yet)"))); return; }
  body.replaceChildren(...pools.map(p => el("tr", {},
    el("td", {}, p.key.Member), el("td", {}, p.key.Database), el("td", {}, p.key.User),
    el("td", {}, p.servers_active), el("td", {}, p.servers_idle), el("td", {}, p.clients_waiting),
    el("td", {}, p.lent_total), el("td", {}, (p.max_wait_ns / 1e6).toFixed(1) + " ms"))));
}

function renderTimeline(events) {
  const list = document.getElementById("timeline");
  if (!events.length) { list.replaceChildren(el("li", {class: "empty"}, "no change yet")); return; }
  list.replaceChildren(...events.slice().reverse().map(e => {
    let text, cls = "ev-" + e.kind;
    if (e.kind === "role" && e.to === "primary" && e.from !== "unknown") {
      text = `failover: ${e.member} is the new primary (was ${e.from})`; cls = "ev-failover";
    } else if (e.kind === "role") {
      text = `${e.member}: ${e.from} → ${e.to}`;
    } else {
      text = `${e.member} ${e.to}`; if (e.to === "down") cls = "ev-down";
    }
    if (e.reason) text += ` (${e.reason})`;
    return el("li", {class: cls}, el("time", {datetime: e.at}, new Date(e.at).toLocaleTimeString()), text);
  }));
}

function render(s) {
  renderMembers(s.topology);
  renderLag(s.topology);
  renderListeners(s.topology.listeners);
  renderPools(s.pools);
  renderTimeline(s.timeline || []);
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/api/v1/events");
  es.addEventListener("state", ev => {
    conn.textContent = "live · " + new Date().toLocaleTimeString();
    conn.classList.remove("down");
    render(JSON.parse(ev.data));
  });
  es.onerror = () => { conn.textContent = "disconnected, retrying…"; conn.classList.add("down"); };
}

connect();
