// kairos admin console: hand-written, no dependencies. It calls the same API as the CLI.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const KEY = "kairos-admin-token";
const state = { who: null, etag: null, routes: [], editing: null, stream: null, series: {}, history: [], selected: null };
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function flash(message, kind = "info") {
  const f = $("#flash");
  f.textContent = message;
  f.dataset.kind = kind;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}`, ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (r.status === 401) signOut("Signed out: " + (data.error || "token refused"));
  if (!r.ok) throw new ApiError(r.status, data);
  return { data, etag: r.headers.get("etag") };
}

// ------------------------------------------------------------------ sign-in and navigation

async function signIn(token) {
  sessionStorage.setItem(KEY, token);
  try {
    state.who = (await api("GET", "/admin/whoami")).data;
  } catch (e) {
    sessionStorage.removeItem(KEY);
    throw e;
  }
  $("#who").textContent = `${state.who.name} (${state.who.role})`;
  for (const id of ["#nav", "#who", "#signout"]) $(id).hidden = false;
  document.body.dataset.role = state.who.role;
  if (!location.hash || location.hash === "#/signin") location.hash = "#/dashboard";
  else show();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  state.who = null;
  stopStream();
  for (const id of ["#nav", "#who", "#signout"]) $(id).hidden = true;
  location.hash = "#/signin";
  show();
  if (message) flash(message, "error");
}

function show() {
  const page = state.who ? (location.hash.replace("#/", "") || "dashboard") : "signin";
  for (const p of $$(".page")) p.hidden = p.id !== `page-${page}`;
  for (const a of $$("#nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (page !== "dashboard") stopStream();
  const load = { dashboard: loadDashboard, routes: loadRoutes, backends: loadBackends, history: loadHistory }[page];
  if (load) load().catch((e) => flash(e.message, "error"));
  if (page === "signin") $("#token").focus();
}

// ------------------------------------------------------------------ dashboard

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  clearInterval(state.backendTimer);
}

async function loadDashboard() {
  stopStream();
  refreshBackendTiles();
  state.backendTimer = setInterval(refreshBackendTiles, 2000);
  const controller = new AbortController();
  state.stream = controller;
  const r = await fetch("/admin/stats/stream", {
    headers: { authorization: `Bearer ${sessionStorage.getItem(KEY)}` }, signal: controller.signal,
  });
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => ({})));
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
        if (data) onStats(JSON.parse(data));
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") throw e;
  }
}

function onStats(snapshot) {
  const body = $("#dash-routes tbody");
  body.replaceChildren();
  for (const r of snapshot.routes) {
    const m1 = r.windows["1m"], m5 = r.windows["5m"];
    const s = (state.series[r.id] = state.series[r.id] || { rps: [], p95: [], err: [] });
    s.rps.push(m1.rps); s.p95.push(m1.p95_ms || 0); s.err.push(m1.error_rate * 100);
    for (const k of ["rps", "p95", "err"]) if (s[k].length > 60) s[k].shift();
    const fmt = (v) => (v === null || v === undefined ? "–" : String(v));
    body.append(el("tr", { "data-route": r.id },
      el("th", { scope: "row", text: r.id }), el("td", { text: r.external_path }),
      el("td", { class: "rps", text: m1.rps.toFixed(2) }), el("td", { text: m1.requests }),
      el("td", { text: `${m1.errors} (${(m1.error_rate * 100).toFixed(1)}%)` }),
      el("td", { text: fmt(m1.p50_ms) }), el("td", { text: fmt(m1.p95_ms) }), el("td", { text: fmt(m1.p99_ms) }),
      el("td", { text: m5.rps.toFixed(2) })));
  }
  drawChart($("#chart-rps"), "rps");
  drawChart($("#chart-p95"), "p95");
  drawChart($("#chart-err"), "err");
}

function drawChart(canvas, key) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h);
  const ids = Object.keys(state.series);
  let max = 0;
  for (const id of ids) for (const v of state.series[id][key]) max = Math.max(max, v);
  max = max > 0 ? max * 1.15 : 1;
  ctx.strokeStyle = "#cbd5e1";
  ctx.fillStyle = "#475569";
  ctx.font = "11px system-ui, sans-serif";
  ctx.beginPath(); ctx.moveTo(pad, 4); ctx.lineTo(pad, h - pad); ctx.lineTo(w - 4, h - pad); ctx.stroke();
  ctx.fillText(max.toFixed(max < 10 ? 1 : 0), 2, 12);
  ctx.fillText("0", 10, h - pad);
  ids.forEach((id, i) => {
    const values = state.series[id][key];
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    values.forEach((v, j) => {
      const x = pad + ((w - pad - 6) * j) / 59;
      const y = h - pad - ((h - pad - 8) * v) / max;
      if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = COLORS[i % COLORS.length];
    ctx.fillText(id, pad + 6 + (i % 3) * 120, h - 6 - Math.floor(i / 3) * 12);
  });
}

async function refreshBackendTiles() {
  if (!state.who) return;
  const { data } = await api("GET", "/admin/clusters");
  const list = $("#dash-backends");
  list.replaceChildren(...data.map((b) => el("li", { class: `tile ${healthClass(b)}` },
    el("strong", { text: b.address }), el("span", { text: healthText(b) }),
    el("span", { text: `breaker ${b.breaker}` }), el("span", { text: `${b.in_flight ?? "?"} in flight` }))));
}

function healthClass(b) {
  if (b.drained) return "drained";
  if (!b.healthy || b.ejected || b.breaker === "open") return "down";
  return b.breaker === "half_open" ? "warn" : "up";
}

function healthText(b) {
  if (b.drained) return "drained";
  if (!b.healthy) return "unhealthy";
  if (b.ejected) return `ejected ${b.ejected_for_s.toFixed(0)} s`;
  return "healthy";
}

// ------------------------------------------------------------------ routes

async function loadRoutes() {
  const { data, etag } = await api("GET", "/admin/routes");
  state.routes = data;
  state.etag = etag;
  renderRoutes();
}

function backendsText(router) {
  const list = router.backends || [{ host: router.host, port: router.port }];
  return list.map((b) => `${b.host}:${b.port}` + (b.weight && b.weight !== 1 ? ` weight ${b.weight}` : "")).join(", ");
}

function renderRoutes() {
  const q = $("#route-search").value.trim().toLowerCase();
  const body = $("#routes-table tbody");
  body.replaceChildren();
  for (const r of state.routes) {
    const text = `${r.id} ${r.router.external_path} ${backendsText(r.router)} ${r.router.internal_path}`.toLowerCase();
    if (q && !text.includes(q)) continue;
    const actions = el("td", { class: "actions" });
    if (state.who.role === "admin") {
      actions.append(
        el("button", { type: "button", class: "small", "aria-label": `Edit ${r.id}`, onclick: () => openEditor(r) }, "Edit"),
        el("button", { type: "button", class: "small danger", "aria-label": `Delete ${r.id}`, onclick: () => deleteRoute(r) }, "Delete"));
    }
    body.append(el("tr", { "data-route": r.id },
      el("th", { scope: "row", text: r.id }), el("td", { text: (r.router.methods || []).join(", ") }),
      el("td", { text: r.router.external_path }), el("td", { text: `${backendsText(r.router)} → ${r.router.internal_path}` }),
      actions));
  }
}

function openEditor(route) {
  state.editing = { id: route ? route.id : null, etag: state.etag };
  const router = route ? structuredClone(route.router)
    : { external_path: "/new", internal_path: "/", methods: ["GET"], backends: [{ host: "http://127.0.0.1", port: 8080, weight: 1 }] };
  $("#editor-title").textContent = route ? `Edit route ${route.id}` : "New route";
  $("#f-json").value = JSON.stringify(router, null, 2);
  syncForm(router);
  $("#preview").replaceChildren();
  $("#editor").hidden = false;
  $("#f-external").focus();
  preview();
}

function syncForm(router) {
  $("#f-name").value = router.name || "";
  $("#f-external").value = router.external_path || "";
  $("#f-internal").value = router.internal_path || "";
  $("#f-methods").value = (router.methods || []).join(", ");
  $("#f-backends").value = (router.backends || (router.host ? [{ host: router.host, port: router.port }] : []))
    .map((b) => `${b.host}:${b.port}${b.weight && b.weight !== 1 ? " weight " + b.weight : ""}`).join("\n");
}

function parseBackends(text) {
  return text.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
    const m = line.match(/^(\S+?):(\d+)(?:\s+weight\s+(\d+))?$/);
    if (!m) return { host: line, port: 0 };
    const b = { host: m[1], port: Number(m[2]) };
    if (m[3]) b.weight = Number(m[3]);
    return b;
  });
}

function currentRouter() {
  return JSON.parse($("#f-json").value);
}

function formChanged(event) {
  let router;
  try { router = currentRouter(); } catch { router = {}; }
  const key = event.target.dataset.key;
  const value = event.target.value;
  if (key === "methods") router.methods = value.split(/[\s,]+/).filter(Boolean).map((m) => m.toUpperCase());
  else if (key === "backends") { router.backends = parseBackends(value); delete router.host; delete router.port; }
  else if (key === "name" && !value) delete router.name;
  else router[key] = value;
  $("#f-json").value = JSON.stringify(router, null, 2);
  schedulePreview();
}

let previewTimer = null;
function schedulePreview() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(preview, 250);
}

async function preview() {
  const box = $("#preview");
  let router;
  try { router = currentRouter(); } catch (e) {
    box.replaceChildren(el("p", { class: "error", text: `JSON: ${e.message}` }));
    return null;
  }
  const { data: config } = await api("GET", "/admin/config");
  const index = state.editing.id ? config.routers.findIndex((_, i) => state.routes[i] && state.routes[i].id === state.editing.id) : -1;
  if (index >= 0) config.routers[index] = router; else config.routers.push(router);
  const { data } = await api("POST", "/admin/config/validate", config);
  if (data.valid) box.replaceChildren(el("p", { class: "ok", text: "Valid: ready to save." }));
  else box.replaceChildren(el("p", { class: "error", text: `${data.problems.length} problem(s):` }),
    el("ul", { class: "problems" }, ...data.problems.map((p) => el("li", { text: p }))));
  return data.valid;
}

async function saveRoute(event) {
  event.preventDefault();
  let router;
  try { router = currentRouter(); } catch (e) { flash(`JSON: ${e.message}`, "error"); return; }
  const headers = { "if-match": state.editing.etag || "" };
  try {
    const path = state.editing.id ? `/admin/routes/${encodeURIComponent(state.editing.id)}` : "/admin/routes";
    const { data } = await api(state.editing.id ? "PUT" : "POST", path, router, headers);
    flash(`Saved: version ${data.version}`, "ok");
    $("#editor").hidden = true;
    await loadRoutes();
  } catch (e) {
    if (e.status === 412) flash("Conflict: the config changed since you opened the editor. Reload the routes and edit again.", "error");
    else if (e.status === 422) $("#preview").replaceChildren(el("p", { class: "error", text: e.message }),
      el("ul", { class: "problems" }, ...(e.body.problems || []).map((p) => el("li", { text: p }))));
    else flash(e.message, "error");
  }
}

async function deleteRoute(route) {
  if (!(await confirmDialog(`Delete route ${route.id} (${route.router.external_path})?`))) return;
  try {
    const { data } = await api("DELETE", `/admin/routes/${encodeURIComponent(route.id)}`, undefined, { "if-match": state.etag });
    flash(`Deleted ${route.id}: version ${data.version}`, "ok");
  } catch (e) {
    flash(e.status === 412 ? "Conflict: the config changed meanwhile; the list is reloaded." : e.message, "error");
  }
  await loadRoutes();
}

function confirmDialog(text) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.showModal();
  });
}

// ------------------------------------------------------------------ backends

async function loadBackends() {
  const { data } = await api("GET", "/admin/clusters");
  const body = $("#backends-table tbody");
  body.replaceChildren(...data.map((b) => {
    const actions = el("td", { class: "actions" });
    if (state.who.role === "admin") {
      const action = b.drained ? "undrain" : "drain";
      actions.append(el("button", { type: "button", class: "small", "aria-label": `${action} ${b.address}`,
        onclick: async () => {
          try { await api("POST", `/admin/clusters/${b.address}/${action}`); flash(`${b.address}: ${action}ed`, "ok"); }
          catch (e) { flash(e.message, "error"); }
          loadBackends();
        } }, b.drained ? "Undrain" : "Drain"));
    }
    return el("tr", { "data-backend": b.address },
      el("th", { scope: "row", text: b.address }),
      el("td", {}, el("span", { class: `badge ${healthClass(b)}`, text: healthText(b) })),
      el("td", { text: b.breaker }), el("td", { text: b.ejected ? `yes (${b.ejections})` : `no (${b.ejections})` }),
      el("td", { text: b.in_flight ?? "?" }), el("td", { text: b.routes.map((r) => `${r.id} (${r.weight})`).join(", ") }),
      actions);
  }));
}

// ------------------------------------------------------------------ match

async function runMatch(event) {
  event.preventDefault();
  const box = $("#match-result");
  try {
    const { data } = await api("POST", "/admin/match", { method: $("#m-method").value, url: $("#m-url").value });
    if (!data.matched) {
      box.replaceChildren(el("p", { class: "error", text: `No route (${data.status}): ${data.reason}` }));
      return;
    }
    const dl = el("dl", { class: "kv" });
    const add = (k, v) => dl.append(el("dt", { text: k }), el("dd", { text: v }));
    add("Route", `${data.route.id} — ${data.route.methods.join(", ")} ${data.route.external_path}`);
    add("Parameters", Object.entries(data.params).map(([k, v]) => `${k}=${v}`).join(", ") || "–");
    add("Upstream path", data.upstream_path);
    add("Backends", data.backends.map((b) => `${b.address} (weight ${b.weight})`).join(", "));
    for (const [k, v] of Object.entries(data.policies)) if (v !== null && v !== false) add(k, typeof v === "object" ? JSON.stringify(v) : String(v));
    box.replaceChildren(dl);
  } catch (e) {
    box.replaceChildren(el("p", { class: "error", text: e.message }));
  }
}

// ------------------------------------------------------------------ history

async function loadHistory() {
  const { data } = await api("GET", "/admin/config/history");
  state.history = data;
  const list = $("#history-list");
  list.replaceChildren(...data.map((h) => el("li", {},
    el("button", { type: "button", class: "version", "data-version": h.version, onclick: () => selectVersion(h) },
      `v${h.version} · ${new Date(h.time * 1000).toLocaleString()} · ${h.actor}`,
      el("small", { text: describe(h.summary) })))));
  if (!data.length) list.append(el("li", { text: "No admin change yet: the history starts with the first one." }));
}

function describe(summary) {
  const parts = [];
  if (summary.action) parts.push(summary.action);
  for (const k of ["routes_added", "routes_removed", "routes_changed", "settings_changed"])
    if (summary[k] && summary[k].length) parts.push(`${k.replace("_", " ")}: ${summary[k].join(", ")}`);
  return parts.join(" · ");
}

async function selectVersion(h) {
  state.selected = h;
  for (const b of $$("#history-list button")) b.setAttribute("aria-pressed", String(b.dataset.version === String(h.version)));
  const [{ data: version }, { data: current }] = await Promise.all([
    api("GET", `/admin/config/history/${h.version}`), api("GET", "/admin/config")]);
  $("#diff-title").textContent = `Version ${h.version} → current config`;
  const pre = $("#diff");
  pre.replaceChildren(...lineDiff(JSON.stringify(version.document, null, 2).split("\n"),
    JSON.stringify(current, null, 2).split("\n")).map(([op, line]) =>
    el("span", { class: op === "+" ? "add" : op === "-" ? "del" : "same", text: `${op} ${line}\n` })));
  $("#rollback").hidden = state.who.role !== "admin";
  $("#rollback").textContent = `Roll back to version ${h.version}`;
}

function lineDiff(a, b) {
  // Longest common subsequence on lines; configs are small.
  const n = a.length, m = b.length;
  const dp = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    dp[i][j] = a[i] === b[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { out.push([" ", a[i]]); i++; j++; }
    else if (dp[i + 1][j] >= dp[i][j + 1]) out.push(["-", a[i++]]);
    else out.push(["+", b[j++]]);
  }
  while (i < n) out.push(["-", a[i++]]);
  while (j < m) out.push(["+", b[j++]]);
  return out;
}

async function rollback() {
  const h = state.selected;
  if (!h || !(await confirmDialog(`Roll back to version ${h.version}? The current config is kept in the history.`))) return;
  try {
    const { etag } = await api("GET", "/admin/config");
    const { data } = await api("POST", `/admin/config/rollback/${h.version}`, undefined, { "if-match": etag });
    flash(`Rolled back to version ${h.version}: now version ${data.version}`, "ok");
  } catch (e) {
    flash(e.message, "error");
  }
  await loadHistory();
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("#signin-error").textContent = "";
    try {
      await signIn($("#token").value.trim());
      $("#token").value = "";
      flash("");
    } catch (e) {
      $("#signin-error").textContent = e.status === 429 ? "Too many failed attempts: wait a minute." : "That token was refused.";
    }
  });
  $("#signout").addEventListener("click", () => signOut("Signed out."));
  $("#route-search").addEventListener("input", renderRoutes);
  $("#route-new").addEventListener("click", () => openEditor(null));
  $("#editor").addEventListener("submit", saveRoute);
  $("#editor-cancel").addEventListener("click", () => { $("#editor").hidden = true; });
  for (const input of $$("#editor [data-key]")) input.addEventListener("input", formChanged);
  $("#f-json").addEventListener("input", () => {
    try { syncForm(currentRouter()); } catch { /* shown by the preview */ }
    schedulePreview();
  });
  $("#match-form").addEventListener("submit", runMatch);
  $("#rollback").addEventListener("click", rollback);
  window.addEventListener("hashchange", show);
  const token = sessionStorage.getItem(KEY);
  if (token) signIn(token).catch(() => signOut("Your token was refused; sign in again."));
  else show();
});
