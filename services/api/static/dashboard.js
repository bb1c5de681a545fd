// The spend dashboard: polls GET /v1/tenants/{tenant}/dashboard with the key typed into the page.
// The key lives in sessionStorage (this tab only) and travels only in the Authorization header, never in
// a URL. Every text from the API is set with textContent (a tenant's model or workflow names are data,
// not markup). Each figure's cell carries its raw value in data-value, so a test can compare the page
// with the API's JSON exactly.
"use strict";

const REFRESH_MS = 5000;
const KEY_STORAGE = "ledgergate.apiKey";
const TENANT_PAGES_MAX = 20; // admin tenant picker: at most 20 pages of 500 tenants
const COLOURS = {ALLOW: "#2e7d32", DOWNGRADE: "#f9a825", DENY: "#c62828", THROTTLE: "#6a1b9a",
  CACHE_HIT: "#0277bd"};

const state = {key: null, who: null, tenant: null, workflow: "", windowH: 24, timer: null, charts: {},
  generation: 0};
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path) {
  const resp = await fetch(path, {headers: {Authorization: `Bearer ${state.key}`}, cache: "no-store",
    credentials: "omit"});
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    body = null;
  }
  if (!resp.ok) {
    const err = (body && body.error) || {};
    throw new ApiError(resp.status, err.code || "error", `${resp.status} ${err.code || ""}: ${err.message || ""}`);
  }
  return body;
}

// --- formatting: integers only, so the text is exactly the API's figure truncated to cents ----------------

function usd(micro) {
  if (micro === null || micro === undefined) return "no limit";
  const negative = micro < 0;
  const cents = BigInt(Math.abs(micro)) / 10000n;
  const whole = (cents / 100n).toLocaleString("en-US");
  const frac = (cents % 100n).toString().padStart(2, "0");
  return `${negative ? "-" : ""}$${whole}.${frac}`;
}

const int = (n) => (n === null || n === undefined ? "" : Number(n).toLocaleString("en-US"));
const dollars = (micro) => Number(micro) / 1e6; // for chart geometry only, never for the text shown
const utc = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19);

function cell(text, field, value) {
  const td = document.createElement("td");
  td.textContent = text;
  if (field) {
    td.dataset.field = field;
    td.dataset.value = value === null || value === undefined ? "" : String(value);
  }
  return td;
}

function fillTable(id, rows, keyOf, cellsOf, empty) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.key = keyOf(row);
    tr.append(...cellsOf(row));
    body.append(tr);
  }
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(empty);
    td.colSpan = $(id).querySelectorAll("thead th").length || 1;
    td.className = "empty";
    tr.append(td);
    body.append(tr);
  }
}

// --- charts (Chart.js, vendored) --------------------------------------------------------------------------

function chart(id, config) {
  if (typeof Chart === "undefined") return null; // the tables still show every figure
  if (!state.charts[id]) {
    config.options = Object.assign({animation: false, responsive: true, maintainAspectRatio: false}, config.options);
    state.charts[id] = new Chart($(id), config);
  } else {
    state.charts[id].data = config.data;
    state.charts[id].update("none");
  }
  return state.charts[id];
}

function bucketLabel(ms, bucketMs) {
  const t = utc(ms);
  return bucketMs > 3_600_000 ? t.slice(5, 16) : t.slice(11, 16); // a date once buckets outgrow an hour
}

// --- rendering --------------------------------------------------------------------------------------------

function workflowPicker(d) {
  // The tenant's workflows: those with a budget scope or settled usage this period (and the one chosen).
  const ids = new Set(d.budgets.filter((b) => b.scope_type === "WORKFLOW").map((b) => b.scope_id));
  for (const t of d.tokens) if (t.workflow_id) ids.add(t.workflow_id);
  if (state.workflow) ids.add(state.workflow);
  const wanted = ["", ...[...ids].sort()];
  const picker = $("workflow");
  const have = [...picker.options].map((o) => o.value);
  if (have.join("\n") !== wanted.join("\n")) {
    picker.replaceChildren(...wanted.map((w) => Object.assign(document.createElement("option"),
      {value: w, textContent: w || "all workflows"})));
  }
  picker.value = state.workflow;
  for (const note of document.querySelectorAll(".wf-note")) {
    note.textContent = d.workflow_id ? `(workflow ${d.workflow_id})` : "";
  }
}

function render(d) {
  workflowPicker(d);
  $("period").textContent = d.period_id;
  $("days").textContent = `(day ${d.days_elapsed})`;
  $("window-label").textContent = d.window_h === 1 ? "hour" : `${d.window_h} hours`;

  fillTable("budgets", d.budgets, (b) => `${b.scope_type}:${b.scope_id}`, (b) => [
    cell(b.scope_type === "TENANT" ? `tenant ${b.scope_id}` : `workflow ${b.scope_id}`),
    cell(usd(b.limit_micro_usd), "limit_micro_usd", b.limit_micro_usd),
    cell(usd(b.credit_micro_usd), "credit_micro_usd", b.credit_micro_usd),
    cell(usd(b.posted_micro_usd), "posted_micro_usd", b.posted_micro_usd),
    cell(usd(b.pending_micro_usd), "pending_micro_usd", b.pending_micro_usd),
    cell(usd(b.remaining_micro_usd), "remaining_micro_usd", b.remaining_micro_usd),
    cell(usd(b.burn_rate_micro_usd_per_day), "burn_rate_micro_usd_per_day", b.burn_rate_micro_usd_per_day),
    cell(b.runs_out_on ? `${b.runs_out_on} (${int(b.days_left)} d)` : (b.days_left === null ? "—" : "in over 100 years"),
      "runs_out_on", b.runs_out_on),
  ], "no budget or spend in this period");
  chart("chart-budgets", {type: "bar", data: {
    labels: d.budgets.map((b) => `${b.scope_type === "TENANT" ? "tenant" : "workflow"} ${b.scope_id}`),
    datasets: [
      {label: "posted", data: d.budgets.map((b) => dollars(b.posted_micro_usd)), backgroundColor: "#1565c0"},
      {label: "pending", data: d.budgets.map((b) => dollars(b.pending_micro_usd)), backgroundColor: "#90caf9"},
      {label: "remaining", data: d.budgets.map((b) => dollars(Math.max(0, b.remaining_micro_usd || 0))),
        backgroundColor: "#e0e0e0"},
    ]}, options: {indexAxis: "y", scales: {x: {stacked: true, title: {display: true, text: "USD"}},
    y: {stacked: true}}}});

  fillTable("tokens", d.tokens, (t) => t.workflow_id, (t) => [
    cell(t.workflow_id || "(none)"),
    cell(int(t.requests), "requests", t.requests),
    cell(int(t.input_tokens), "input_tokens", t.input_tokens),
    cell(int(t.output_tokens), "output_tokens", t.output_tokens),
    cell(int(t.input_tokens_per_day), "input_tokens_per_day", t.input_tokens_per_day),
    cell(int(t.output_tokens_per_day), "output_tokens_per_day", t.output_tokens_per_day),
    cell(usd(t.spend_micro_usd), "spend_micro_usd", t.spend_micro_usd),
  ], "nothing settled in this period");

  fillTable("models", d.top_models, (m) => m.model, (m) => [
    cell(m.model), cell(int(m.requests), "requests", m.requests),
    cell(usd(m.spend_micro_usd), "spend_micro_usd", m.spend_micro_usd),
  ], "nothing settled in this period");
  chart("chart-models", {type: "bar", data: {labels: d.top_models.map((m) => m.model),
    datasets: [{label: "spend (USD)", data: d.top_models.map((m) => dollars(m.spend_micro_usd)),
      backgroundColor: "#1565c0"}]}, options: {plugins: {legend: {display: false}}}});

  const tl = d.timeline;
  const outcomes = Object.keys(tl.series);
  chart("chart-timeline", {type: "bar", data: {
    labels: Array.from({length: tl.buckets}, (_, i) => bucketLabel(tl.from_ms + i * tl.bucket_ms, tl.bucket_ms)),
    datasets: outcomes.map((o) => ({label: o, data: tl.series[o], backgroundColor: COLOURS[o] || "#9e9e9e"})),
  }, options: {scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true, ticks: {precision: 0}}}}});
  const totals = document.createElement("tr");
  totals.append(...outcomes.map((o) => cell(int(tl.totals[o]), `total:${o}`, tl.totals[o])));
  $("outcomes").querySelector("thead tr").replaceChildren(
    ...outcomes.map((o) => Object.assign(document.createElement("th"), {textContent: o})));
  $("outcomes").querySelector("tbody").replaceChildren(totals);

  fillTable("bound", d.bound, (b) => `${b.outcome}:${b.binding_scope}:${b.reason}`, (b) => [
    cell(b.outcome), cell(b.binding_scope || "—"), cell(b.reason), cell(int(b.decisions), "decisions", b.decisions),
  ], "no denials, throttles or downgrades in the window");

  fillTable("latency", d.latency, (l) => l.tier || "(none)", (l) => [
    cell(l.tier || "(no placement)"), cell(int(l.decisions), "decisions", l.decisions),
    cell(int(l.p50_ms), "p50_ms", l.p50_ms), cell(int(l.p95_ms), "p95_ms", l.p95_ms),
    cell(int(l.max_ms), "max_ms", l.max_ms),
  ], "no decisions in the window");

  fillTable("alerts", d.alerts, (a) => a.alert_id, (a) => [
    cell(utc(a.crossed_at_ms), "crossed_at_ms", a.crossed_at_ms),
    cell(`${a.scope_type === "TENANT" ? "tenant" : "workflow"} ${a.scope_id}`),
    cell(a.period_id), cell(`${a.threshold_pct} %`, "threshold_pct", a.threshold_pct),
    cell(usd(a.spent_micro_usd), "spent_micro_usd", a.spent_micro_usd),
    cell(usd(a.limit_micro_usd), "limit_micro_usd", a.limit_micro_usd),
  ], "no thresholds crossed");
}

// --- the refresh loop -------------------------------------------------------------------------------------

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = kind || "";
}

function clearBoard() {
  // Never leave one tenant's figures on screen under another's name (or after an error).
  $("board").hidden = true;
  for (const table of document.querySelectorAll("#board tbody")) table.replaceChildren();
  delete document.body.dataset.tenant;
}

async function refresh() {
  const generation = state.generation;
  clearTimeout(state.timer);
  try {
    const tenant = encodeURIComponent(state.tenant);
    const workflow = state.workflow ? `&workflow=${encodeURIComponent(state.workflow)}` : "";
    const data = await api(`/v1/tenants/${tenant}/dashboard?window_h=${state.windowH}${workflow}`);
    if (generation !== state.generation) return; // the tenant or key changed while this was in flight
    render(data);
    $("board").hidden = false;
    document.body.dataset.tenant = data.tenant_id;
    document.body.dataset.workflow = data.workflow_id || "";
    document.body.dataset.generatedAt = String(data.generated_at_ms);
    document.body.dataset.state = "loaded";
    setStatus(`Tenant ${data.tenant_id}: updated ${utc(data.generated_at_ms)} UTC`, "ok");
  } catch (err) {
    if (generation !== state.generation) return;
    clearBoard();
    document.body.dataset.state = "error";
    setStatus(err.message, "error");
    // A wrong or revoked key, or a tenant this key may not read: asking again cannot help, so stop
    // polling until another key or tenant is chosen. Anything else (a 503, a network error) is retried.
    if (err.status === 401 || err.status === 403) return;
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

function selectTenant(tenant) {
  state.generation += 1;
  state.tenant = tenant;
  state.workflow = "";
  $("workflow").replaceChildren(Object.assign(document.createElement("option"),
    {value: "", textContent: "all workflows"}));
  clearBoard();
  history.replaceState(null, "", `#tenant=${encodeURIComponent(tenant)}`);
  refresh();
}

async function allTenants() {
  const tenants = [];
  let cursor = null;
  for (let page = 0; page < TENANT_PAGES_MAX; page += 1) {
    const q = cursor ? `&cursor=${encodeURIComponent(cursor)}` : "";
    const body = await api(`/v1/tenants?limit=500${q}`);
    tenants.push(...body.items.map((t) => t.tenant_id));
    cursor = body.next_cursor;
    if (!cursor) break;
  }
  return tenants;
}

function hashTenant() {
  const m = /^#tenant=(.+)$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

async function start() {
  state.generation += 1;
  clearTimeout(state.timer);
  clearBoard();
  $("controls").hidden = true;
  try {
    state.who = await api("/v1/whoami");
  } catch (err) {
    document.body.dataset.state = "error";
    setStatus(`This key was refused: ${err.message}`, "error");
    return;
  }
  const picker = $("tenant");
  picker.replaceChildren();
  $("controls").hidden = false;
  document.body.dataset.role = state.who.admin ? "admin" : "tenant";
  if (state.who.admin) {
    let tenants;
    try {
      tenants = await allTenants();
    } catch (err) {
      document.body.dataset.state = "error";
      setStatus(`The tenant list failed: ${err.message}`, "error");
      return;
    }
    for (const t of tenants) picker.append(Object.assign(document.createElement("option"), {value: t, textContent: t}));
    picker.hidden = false;
    $("tenant-fixed").textContent = "";
    const wanted = hashTenant();
    const first = wanted && tenants.includes(wanted) ? wanted : tenants[0];
    if (!first) {
      setStatus("No tenant in the read model yet.", "ok");
      return;
    }
    picker.value = first;
    selectTenant(first);
  } else {
    // A tenant key reaches its own tenant only; the picker is not offered. A link naming another tenant
    // is asked for anyway, and the API's 403 is what the page shows.
    picker.hidden = true;
    $("tenant-fixed").textContent = state.who.tenant_id;
    selectTenant(hashTenant() || state.who.tenant_id);
  }
}

function init() {
  $("refresh-s").textContent = String(REFRESH_MS / 1000);
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    $("api-key").value = "";
    sessionStorage.setItem(KEY_STORAGE, key);
    state.key = key;
    start();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    state.generation += 1;
    clearTimeout(state.timer);
    clearBoard();
    $("controls").hidden = true;
    document.body.dataset.state = "signed-out";
    setStatus("Key forgotten. Type an API key to continue.", "");
  });
  $("tenant").addEventListener("change", (ev) => selectTenant(ev.target.value));
  $("workflow").addEventListener("change", (ev) => {
    state.workflow = ev.target.value;
    state.generation += 1;
    refresh();
  });
  $("window").addEventListener("change", (ev) => {
    state.windowH = Number(ev.target.value);
    state.generation += 1;
    refresh();
  });
  state.key = sessionStorage.getItem(KEY_STORAGE);
  if (state.key) start();
  else document.body.dataset.state = "signed-out";
}

document.addEventListener("DOMContentLoaded", init);
