"""The admin page (``GET /admin``): one self-contained HTML document, held as a constant.

Why a Python constant and not a package-data file: the core never reads a file
(not at a request, not at import), the page cannot go missing from a wheel or a
zipapp, and its bytes are encoded once, here, for every request.

Rules:
1. The page holds no data: it is the same bytes for everyone, so it needs no key.
   Everything it shows it fetches from ``/api/`` with ``Authorization: Bearer``;
   the key lives in the tab (sessionStorage), never in a URL.
2. Nothing from the network: no library, no font, no build step. Plots are drawn
   on canvases by the page itself.
3. What clients send is untrusted: the page writes it with ``textContent`` only,
   and the Content-Security-Policy (``PAGE_HEADERS``) lets no other script or
   style run than the page's own (their hashes are computed here, once).
"""

from __future__ import annotations

import base64
import hashlib
import re

__all__ = ["PAGE", "PAGE_HEADERS"]

_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>WS-Hub admin</title>
<!-- Served by the hub at /admin (wshub_core/_admin_page.py); data from /api/status and /api/events. -->
<style>
  :root { --fg: #1d2430; --muted: #667085; --line: #d0d5dd; --ok: #067647; --bad: #b42318; --accent: #1570ef; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
         background: #fafafa; }
  main { max-width: 1180px; margin: 0 auto; padding: 14px 20px; }
  h1 { font-size: 20px; margin: 0 0 10px; } h2 { font-size: 15px; margin: 0 0 8px; }
  form { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; margin: 0; }
  label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); gap: 2px; }
  input { font: inherit; padding: 5px 8px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
  button { font: inherit; padding: 5px 12px; border: 1px solid #344054; border-radius: 6px; background: #344054;
           color: #fff; cursor: pointer; }
  button.secondary { background: #fff; color: #344054; }
  button.danger { background: var(--bad); border-color: var(--bad); }
  #auth { margin: 8px 0; min-height: 20px; } #auth.bad { color: var(--bad); font-weight: 600; }
  .grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(270px, 1fr)); gap: 12px; margin-top: 12px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
  .big { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
  .sub { color: var(--muted); font-size: 12px; }
  canvas { width: 100%; height: 70px; display: block; margin-top: 4px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  td, th { text-align: left; padding: 3px 6px; border-bottom: 1px solid #f0f0f0; vertical-align: top; }
  td.n { text-align: right; font-variant-numeric: tabular-nums; }
  code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
  .ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; }
  ul.log { list-style: none; margin: 6px 0 0; padding: 0; max-height: 180px; overflow-y: auto; font-size: 12.5px; }
  ul.log li { padding: 2px 0; border-bottom: 1px solid #f4f4f4; word-break: break-word; white-space: pre-wrap; }
  .actions form { margin-bottom: 8px; } .actions input { width: 130px; } .actions input.wide { width: 190px; }
  section.span2 { grid-column: span 2; } @media (max-width: 700px) { section.span2 { grid-column: auto; } }
</style>
</head>
<body>
<main>
  <h1>WS-Hub admin <span id="hub" class="sub"></span></h1>
  <form id="login" autocomplete="off">
    <label>API key (api.key) <input id="apikey" type="password" spellcheck="false"></label>
    <button type="submit">Open</button>
    <button id="forget" class="secondary" type="button">Forget key</button>
  </form>
  <div id="auth">Enter the hub's API key. It is kept in this tab only (sessionStorage), never in a URL.</div>

  <div id="dash" hidden>
    <div class="grid">
      <section><h2>Connections</h2><div class="big" id="connections">-</div>
        <div class="sub"><span id="connRate">-</span> &middot; sockets <span id="sockets">-</span></div>
        <canvas id="plotConn" width="300" height="70"></canvas></section>
      <section><h2>Messages in</h2><div class="big"><span id="inRate">-</span> <span class="sub">/s</span></div>
        <div class="sub">from clients, published to client-data</div>
        <canvas id="plotIn" width="300" height="70"></canvas></section>
      <section><h2>Messages out</h2><div class="big"><span id="outRate">-</span> <span class="sub">/s</span></div>
        <div class="sub">delivered to clients</div>
        <canvas id="plotOut" width="300" height="70"></canvas></section>
      <section><h2>Broker</h2><div id="broker">-</div><table id="links"></table>
        <h2>Counters</h2><table id="counters"></table></section>
      <section><h2>Groups with the most members</h2><div class="sub" id="groupCount"></div>
        <table id="groups"></table></section>
      <section class="span2"><h2>Last closes</h2><table id="closes"></table></section>
      <section class="actions span2"><h2>Act (through the HTTP API)</h2>
        <form id="publish"><input id="pubGroup" placeholder="group"><input id="pubBody" class="wide"
          placeholder="message"><button type="submit">Publish to group</button></form>
        <form id="send"><input id="sendKey" placeholder="key"><input id="sendBody" class="wide"
          placeholder="message"><button type="submit">Send to key</button></form>
        <form id="setGroups"><input id="groupsKey" placeholder="key"><input id="groupsList" class="wide"
          placeholder="groups: news, room-7"><button type="submit">Set groups</button></form>
        <form id="kick"><input id="kickKey" placeholder="key"><input id="kickReason" class="wide"
          placeholder="reason (optional)"><button class="danger" type="submit">Disconnect key</button></form>
        <ul class="log" id="actionLog"></ul></section>
      <section><h2>What a key sends</h2>
        <form id="watch"><input id="watchKey" placeholder="key"><button type="submit">Watch</button></form>
        <div class="sub" id="watching">its client-data appears here, from the event stream</div>
        <ul class="log mono" id="watchLog"></ul>
        <h2>Events</h2><div class="sub" id="streamState">-</div><ul class="log mono" id="events"></ul></section>
      <section id="presence"><h2>Presence</h2>
        <form id="presenceForm"><input id="presenceGroup" placeholder="group"><button type="submit">Who is
          in it</button></form>
        <div class="sub" id="presenceState">keys with a connection in the group on any hub, live</div>
        <table id="presenceKeys"></table></section>
    </div>
  </div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const STORE = "wshub-admin-key";
const POLL_MS = 1000, SAMPLES = 120, LOG_LINES = 200, PRESENCE_EVERY = 5;  // presence panel: every 5 s too
const CLOSE_CODES = { 1000: "normal", 1001: "going away", 1002: "protocol error", 1005: "no code",
  1006: "no close frame", 1007: "invalid UTF-8", 1008: "policy / slow consumer", 1009: "too big",
  1011: "keepalive timeout", 4000: "kicked", 0: "HTTP" };
let key = sessionStorage.getItem(STORE) || "";
let generation = 0;  // bumped on every open and lock: late answers of an older key do nothing
let pollTimer = null, stream = null, previous = null, series = { conn: [], in: [], out: [] }, polls = 0;

function line(list, text, cls) {
  const li = document.createElement("li");
  li.textContent = new Date().toLocaleTimeString([], { hour12: false }) + "  " + text;
  if (cls) li.className = cls;
  list.prepend(li);
  while (list.children.length > LOG_LINES) list.lastElementChild.remove();
}

function rows(table, data) {  // data: arrays of cells; a cell is text, or [text, className]
  table.replaceChildren(...data.map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      const [text, cls] = Array.isArray(cell) ? cell : [cell, ""];
      td.textContent = String(text);
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }));
}

// The one place a request goes out: the key in a header, never in the URL. A 401 locks the page.
async function api(method, path, body) {
  const mine = generation;
  const response = await fetch(path, { method, body, cache: "no-store",
                                       headers: { Authorization: "Bearer " + key } });
  if (response.status === 401 && mine === generation) {
    let why = "";
    try { why = (await response.json()).error; } catch (e) { /* not JSON */ }
    lock("401 Unauthorized: " + (why || "wrong API key"));
  }
  return response;
}

function lock(why) {
  generation += 1;
  clearTimeout(pollTimer);
  if (stream) stream.abort();
  stream = null;
  key = "";
  sessionStorage.removeItem(STORE);
  previous = null;
  series = { conn: [], in: [], out: [] };
  $("dash").hidden = true;
  for (const id of ["counters", "links", "groups", "closes", "presenceKeys"]) $(id).replaceChildren();
  delete $("presenceGroup").dataset.showing;
  for (const id of ["actionLog", "watchLog", "events"]) $(id).replaceChildren();
  $("auth").textContent = why;
  $("auth").className = why ? "bad" : "";
}

function unlock(newKey) {
  lock("");
  key = newKey;
  sessionStorage.setItem(STORE, key);
  $("auth").textContent = "Checking the key ...";
  poll(generation, true);
}

async function poll(mine, first) {
  try {
    const response = await api("GET", "/api/status");
    if (mine !== generation) return;
    if (response.ok) {
      render(await response.json());
      // Events refresh the panel at once; this catches what no event tells (shard channels have no patterns,
      // so a sharded Cluster's event stream carries no join/leave).
      const showing = $("presenceGroup").dataset.showing;
      if (showing !== undefined && ++polls % PRESENCE_EVERY === 0) showPresence(showing);
      if (first) {
        $("dash").hidden = false;
        $("auth").textContent = "Key accepted; refreshing every second.";
        readEvents(mine);
      }
    } else if (response.status !== 401) {
      $("auth").textContent = "/api/status answered HTTP " + response.status;
    }
  } catch (e) {
    if (mine === generation) $("auth").textContent = "hub unreachable: " + e.message;
  }
  if (mine === generation && key) pollTimer = setTimeout(() => poll(mine, first && $("dash").hidden), POLL_MS);
}

function push(list, value) { list.push(value); if (list.length > SAMPLES) list.shift(); }

function render(s) {
  $("hub").textContent = location.host;
  const c = s.counters;
  let connRate = 0, inRate = 0, outRate = 0;
  if (previous && s.now > previous.now) {
    const dt = s.now - previous.now;
    connRate = (s.connections - previous.connections) / dt;
    inRate = (c.messages_in - previous.counters.messages_in) / dt;
    outRate = (c.messages_out - previous.counters.messages_out) / dt;
    push(series.conn, s.connections); push(series.in, inRate); push(series.out, outRate);
  } else if (!previous) {
    push(series.conn, s.connections);
  }
  previous = s;
  $("connections").textContent = s.connections;
  $("connRate").textContent = (connRate >= 0 ? "+" : "") + connRate.toFixed(1) + "/s";
  $("sockets").textContent = s.sockets;
  $("inRate").textContent = inRate.toFixed(1);
  $("outRate").textContent = outRate.toFixed(1);
  plot($("plotConn"), series.conn, "#1570ef");
  plot($("plotIn"), series.in, "#067647");
  plot($("plotOut"), series.out, "#b54708");
  const b = s.broker;
  const state = document.createElement("span");
  state.className = b.ready ? "ok" : "bad";
  state.textContent = b.ready ? "ready" : "not ready: " + b.reason;
  $("broker").replaceChildren(b.kind + " broker, ", state);
  rows($("links"), Object.entries(b.links).map(([role, st]) => [role + " link", [st, st === "ready" ? "ok" : "bad"]]));
  rows($("counters"), Object.entries(c).map(([name, n]) => [name.replace(/_/g, " "), [n, "n"]]));
  $("groupCount").textContent = s.groups.count + " group(s) with a member on this hub";
  rows($("groups"), s.groups.top.map((g) => [g.name, [g.members, "n"]]));
  rows($("closes"), s.closes.map((x) => [
    new Date(Date.now() - x.ago * 1000).toLocaleTimeString([], { hour12: false }), [x.key, "mono"],
    [x.code + (CLOSE_CODES[x.code] ? " " + CLOSE_CODES[x.code] : ""), "mono"], x.reason]));
}

// A small time series: the line, the area under it, and its largest value.
function plot(canvas, values, colour) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 70;
  if (canvas.width !== Math.round(w * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#eaecf0"; g.beginPath(); g.moveTo(0, h - 0.5); g.lineTo(w, h - 0.5); g.stroke();
  if (!values.length) return;
  const top = Math.max(1, ...values) * 1.15;
  const x = (i) => w - (values.length - 1 - i) * (w / (SAMPLES - 1));
  const y = (v) => h - 2 - (v / top) * (h - 14);
  g.beginPath();
  values.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
  g.strokeStyle = colour; g.lineWidth = 1.5; g.stroke();
  g.lineTo(x(values.length - 1), h); g.lineTo(x(0), h); g.closePath();
  g.globalAlpha = 0.12; g.fillStyle = colour; g.fill(); g.globalAlpha = 1;
  g.fillStyle = "#667085"; g.font = "10px system-ui, sans-serif";
  g.fillText("max " + Math.max(...values).toFixed(1) + " (last " + SAMPLES + " s)", 4, 10);
}

// GET /api/events read with fetch() (EventSource cannot send the Authorization header).
async function readEvents(mine) {
  const controller = new AbortController();
  stream = controller;
  $("streamState").textContent = "connecting to the event stream ...";
  try {
    const response = await fetch("/api/events", { signal: controller.signal, cache: "no-store",
                                                  headers: { Authorization: "Bearer " + key } });
    if (response.status === 401) { if (mine === generation) lock("401 Unauthorized: wrong API key"); return; }
    if (!response.ok) throw new Error("HTTP " + response.status);
    $("streamState").textContent = "event stream open (every hub's client-new, client-data, client-gone, "
      + "join, leave)";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "", data = "";
        for (const l of block.split("\n")) {
          if (l.startsWith("event: ")) name = l.slice(7); else if (l.startsWith("data: ")) data += l.slice(6);
        }
        if (name && data && mine === generation) onEvent(name, JSON.parse(data));
      }
    }
    throw new Error("the stream ended");
  } catch (e) {
    if (mine !== generation) return;
    $("streamState").textContent = "event stream: " + e.message + "; reopening in 2 s";
    setTimeout(() => { if (mine === generation) readEvents(mine); }, 2000);
  }
}

// GET /api/groups/G/presence, again on each join or leave of the group shown and every PRESENCE_EVERY polls.
async function showPresence(group) {
  $("presenceGroup").dataset.showing = group;
  try {
    const response = await api("GET", "/api/groups/" + enc(group) + "/presence");
    if ($("presenceGroup").dataset.showing !== group) return;
    const body = await response.json();
    if (!response.ok) {
      $("presenceState").textContent = response.status + ": " + body.error;
      $("presenceKeys").replaceChildren();
      return;
    }
    $("presenceState").textContent = group + ": " + Object.keys(body.keys).length + " key(s), "
      + body.connections + " connection(s) on every hub";
    rows($("presenceKeys"), Object.entries(body.keys).map(([k, n]) => [[k, "mono"], [n, "n"]]));
  } catch (e) {
    $("presenceState").textContent = "presence: " + e.message;
  }
}

function onEvent(name, event) {
  const data = event.data === undefined ? "" : " " + (event.binary ? "(base64) " : "") + event.data;
  line($("events"), name + (event.group === undefined ? "" : " " + event.group) + " " + event.key + data);
  if ((name === "join" || name === "leave") && event.group === $("presenceGroup").dataset.showing) {
    showPresence(event.group);
  }
  if (name === "client-data" && event.key === $("watchKey").dataset.watching) {
    line($("watchLog"), (event.binary ? "(binary, base64) " : "") + event.data);
  }
}

async function act(method, path, body) {
  const label = method + " " + path;
  try {
    const response = await api(method, path, body);
    const text = (await response.text()).trim();
    line($("actionLog"), label + " -> " + response.status + " " + text, response.ok ? "" : "bad");
  } catch (e) {
    line($("actionLog"), label + " -> " + e.message, "bad");
  }
}

const enc = encodeURIComponent;
function onSubmit(id, handler) {
  $(id).addEventListener("submit", (event) => { event.preventDefault(); if (key) handler(); });
}
onSubmit("publish", () => act("POST", "/api/groups/" + enc($("pubGroup").value), $("pubBody").value));
onSubmit("send", () => act("POST", "/api/keys/" + enc($("sendKey").value), $("sendBody").value));
onSubmit("setGroups", () => act("PUT", "/api/keys/" + enc($("groupsKey").value) + "/groups", JSON.stringify(
  $("groupsList").value.split(",").map((g) => g.trim()).filter((g) => g))));
onSubmit("kick", () => act("DELETE", "/api/keys/" + enc($("kickKey").value), $("kickReason").value));
onSubmit("presenceForm", () => showPresence($("presenceGroup").value));
onSubmit("watch", () => {
  const watched = $("watchKey").value;
  $("watchKey").dataset.watching = watched;
  $("watchLog").replaceChildren();
  $("watching").textContent = "client-data of " + watched + ", newest first";
});
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const entered = $("apikey").value.trim();
  $("apikey").value = "";
  if (entered) unlock(entered); else lock("Enter the hub's API key.");
});
$("forget").addEventListener("click", () => lock("Key forgotten."));
if (key) unlock(key);
</script>
</body>
</html>
"""


def _csp_hash(tag: str) -> str:
    """The CSP source for the page's one inline ``tag`` element: its text's SHA-256."""
    match = re.search(rf"<{tag}>(.*?)</{tag}>", _HTML, flags=re.S)
    assert match is not None, f"the admin page has no <{tag}>"
    return "'sha256-" + base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode() + "'"


PAGE = _HTML.encode()
PAGE_HEADERS = (
    ("content-security-policy", f"default-src 'none'; script-src {_csp_hash('script')}; style-src "
     f"{_csp_hash('style')}; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)
