// The census: every bed, most acute first. Over a WebSocket: a snapshot, then every second only
// the rows that changed (see dashboards/census.py). Ages are computed here from each value's
// device time, so a row is redrawn only when something in it changed.
// Each update is measured: performance entries "census-snapshot" and "census-delta" (the
// script's work) and "census-snapshot-painted" and "census-delta-painted" (up to the next frame).
"use strict";

const siteSelect = document.getElementById("site");
const body = document.querySelector("#census tbody");
const rows = new Map();     // bed -> {data, tr}
let socket = null;
let seq = null;
let offsetUs = 0;           // server clock minus this browser's clock

function serverNowUs() { return Date.now() * 1000 + offsetUs; }

function statusCell(bed) {
  if (bed.status === "offline") return eicu.el("span", { class: "status offline" }, "offline");
  if (bed.stale) {
    return eicu.el("span", { class: "status stale", title: "nothing received recently" },
      `stale ${eicu.age((serverNowUs() - bed.seen_us) / 1e6)}`);
  }
  return eicu.el("span", { class: `status ${bed.status}` }, bed.status);
}

function rhythmCell(engine) {
  const parts = [...engine.rhythms];
  if (engine.hr_bpm !== null) parts.push(`HR ${Math.round(engine.hr_bpm)}`);
  const poor = Object.entries(engine.quality).filter(([k, v]) => k.startsWith("ECG") && v !== "good");
  for (const [k, v] of poor) parts.push(`${k} ${v}`);
  return parts.length ? parts.join(" · ") : eicu.el("span", { class: "missing" }, "—");
}

function alarmCell(bed) {
  if (!bed.alarms_available) {
    return eicu.el("span", { class: "missing", title: "this engine runs no alarm service" }, "n/a");
  }
  if (!bed.alarm) return eicu.el("span", { class: "missing" }, "—");
  return eicuAlarms.chip(bed.alarm);
}

// A value's age on the bed's device clock (the server judged whether it is stale).
function ageOf(bed, v) {
  const ts = v.ts_us === undefined ? bed.t_us : v.ts_us;
  return Math.max(0, (serverNowUs() + bed.skew_ms * 1000 - ts) / 1e6);
}

function valueCell(bed, wire) {
  if (!wire) return eicu.valueCell(wire);
  // a value of the bed's newest frame, not stale, comes as its text alone
  const v = typeof wire === "string" ? { text: wire, stale: false } : wire;
  const cell = eicu.valueCell({ ...v, age_s: ageOf(bed, v) });
  const badge = cell.querySelector(".badge");
  if (badge) badge.dataset.ts = v.ts_us === undefined ? "" : String(v.ts_us);
  return cell;
}

// Red: an unacknowledged high-priority alarm, or NEWS2 in the high band (or proven to be).
function acute(bed) {
  const n = bed.news2;
  const high = n && !n.invalid && (n.complete ? n.band === "high" : n.min_band === "high");
  return Boolean(high || (bed.alarm && bed.alarm.priority === "high" && bed.alarm.state !== "acknowledged"));
}

// The columns, each with what it is drawn from (the first part of a changed path).
const COLUMNS = [
  { from: ["bed"], cell: (b) => eicu.el("a", { href: `/bed?bed=${encodeURIComponent(b.bed)}` }, b.bed) },
  { from: ["status", "stale", "seen_us"], cell: statusCell },
  { from: ["alarm", "alarms_available"], cell: alarmCell },
  { from: ["news2"], cell: (b) => eicu.news2Chip(b.news2) },
  { from: ["values.HR"], cell: (b) => valueCell(b, b.values.HR) },
  { from: ["values.SPO2"], cell: (b) => valueCell(b, b.values.SPO2) },
  { from: ["values.RR"], cell: (b) => valueCell(b, b.values.RR) },
  { from: ["values.NIBP_SYS", "values.NIBP_DIA"],
    cell: (b) => eicu.el("span", {}, valueCell(b, b.values.NIBP_SYS), "/", valueCell(b, b.values.NIBP_DIA)) },
  { from: ["values.ABP_MEAN"], cell: (b) => valueCell(b, b.values.ABP_MEAN) },
  { from: ["values.TEMP"], cell: (b) => valueCell(b, b.values.TEMP) },
  { from: ["values.ACVPU"], cell: (b) => valueCell(b, b.values.ACVPU) },
  { from: ["values.O2"], cell: (b) => valueCell(b, b.values.O2) },
  { from: ["engine"], cell: (b) => rhythmCell(b.engine) },
];
const COLUMN_OF = new Map();
COLUMNS.forEach((c, i) => c.from.forEach((key) => COLUMN_OF.set(key, i)));

function decorate(tr, bed) {
  tr.className = `bed-row ${bed.status}${bed.stale ? " stale" : ""}${acute(bed) ? " acute" : ""}`;
  tr.dataset.alarm = bed.alarm ? `${bed.alarm.priority} ${bed.alarm.state}` : "none";
}

function addRow(bed) {
  const tr = eicu.el("tr", { "data-bed": bed.bed });
  decorate(tr, bed);
  tr.append(...COLUMNS.map((c) => eicu.el("td", {}, c.cell(bed))));
  rows.set(bed.bed, { data: bed, tr });
  return tr;
}

// Redraw only the cells whose data changed ("values.HR" -> the HR cell; "news2.total" -> NEWS2).
function update(row, change) {
  const redraw = new Set();
  for (const path of [...Object.keys(change.set || {}), ...(change.del || [])]) {
    const parts = path.split(".");
    const column = COLUMN_OF.get(parts[0] === "values" ? `${parts[0]}.${parts[1]}` : parts[0]);
    if (column !== undefined) redraw.add(column);
  }
  decorate(row.tr, row.data);
  for (const i of redraw) row.tr.cells[i].replaceChildren(COLUMNS[i].cell(row.data));
}

// Set or delete "a.b" paths of a row (deletions first; emptied objects go with them).
function patch(data, change) {
  for (const path of change.del || []) {
    const keys = path.split(".");
    const chain = [data];
    for (const k of keys.slice(0, -1)) chain.push(chain[chain.length - 1]?.[k]);
    const parent = chain[chain.length - 1];
    if (parent && typeof parent === "object") delete parent[keys[keys.length - 1]];
    for (let i = chain.length - 1; i > 0; i--) {
      const o = chain[i];
      if (o && typeof o === "object" && !Object.keys(o).length) delete chain[i - 1][keys[i - 1]];
    }
  }
  for (const [path, value] of Object.entries(change.set || {})) {
    const keys = path.split(".");
    let o = data;
    for (const k of keys.slice(0, -1)) {
      if (o[k] === null || typeof o[k] !== "object") o[k] = {};
      o = o[k];
    }
    o[keys[keys.length - 1]] = value;
  }
}

function reorder(order) {
  let previous = null;
  for (const bed of order) {
    const tr = rows.get(bed)?.tr;
    if (!tr) continue;
    const want = previous ? previous.nextSibling : body.firstChild;
    if (want !== tr) body.insertBefore(tr, want);
    previous = tr;
  }
}

// Ages move on between updates: rewrite the badges whose text changed.
function tickAges() {
  const now = serverNowUs();
  for (const { data, tr } of rows.values()) {
    const deviceNow = now + data.skew_ms * 1000;
    for (const badge of tr.getElementsByClassName("badge")) {
      const ts = badge.dataset.ts ? Number(badge.dataset.ts) : data.t_us;
      const age = eicu.age(Math.max(0, (deviceNow - ts) / 1e6));
      const text = badge.classList.contains("stale") ? `stale ${age}` : age;
      if (badge.textContent !== text) badge.textContent = text;
    }
    if (data.stale && data.status !== "offline") {
      const seen = tr.cells[1].firstChild;
      const text = `stale ${eicu.age((now - data.seen_us) / 1e6)}`;
      if (seen && seen.textContent !== text) seen.textContent = text;
    }
  }
}

function updateSites(sites) {
  const current = siteSelect.value;
  const known = new Set([...siteSelect.options].map((o) => o.value));
  for (const s of sites) if (!known.has(s)) siteSelect.append(eicu.el("option", { value: s }, s));
  siteSelect.value = current;
}

function snapshot(msg) {
  rows.clear();
  body.replaceChildren(...msg.beds.map(addRow));
}

function delta(msg) {
  for (const bed of msg.remove) { rows.get(bed)?.tr.remove(); rows.delete(bed); }
  for (const [bed, change] of Object.entries(msg.rows)) {
    const row = rows.get(bed);
    if (!row) continue;
    patch(row.data, change);
    update(row, change);
  }
  for (const bed of Object.values(msg.add)) body.append(addRow(bed));
  if (msg.order) reorder(msg.order);
}

function apply(msg) {
  const kind = msg.type === "snapshot" ? "census-snapshot" : "census-delta";
  const start = performance.now();
  offsetUs = msg.now_us - Date.now() * 1000;
  if (msg.type === "snapshot") {
    snapshot(msg);
  } else if (seq === null || msg.seq !== seq + 1) {  // out of step: start again
    connect();
    return;
  } else {
    delta(msg);
  }
  seq = msg.seq;
  if (msg.sites) updateSites(msg.sites);
  tickAges();
  document.getElementById("empty").hidden = rows.size > 0;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  // the script's work, and up to the next frame drawn (style, layout and paint included)
  performance.measure(kind, { start, end: performance.now() });
  requestAnimationFrame(() => setTimeout(() => performance.measure(`${kind}-painted`, { start })));
}

function connect() {
  if (socket) socket.close();
  seq = null;
  const site = siteSelect.value;
  const ws = new WebSocket(eicu.wsUrl(`/ws/census${site ? `?site=${encodeURIComponent(site)}` : ""}`));
  socket = ws;
  ws.onmessage = (ev) => { if (socket === ws) apply(JSON.parse(ev.data)); };
  ws.onclose = () => {
    if (socket !== ws) return;
    document.getElementById("updated").textContent = "connection lost: reconnecting";
    setTimeout(async () => { await eicu.loadMe(); if (socket === ws) connect(); }, 2000);
  };
}

function alarmFeed(ok, message) {
  const badge = document.getElementById("alarm-feed");
  badge.textContent = ok ? "" : `alarms: ${message}`;
  badge.classList.toggle("stale", !ok);
}

body.addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr[data-bed]");
  if (tr && ev.target.tagName !== "A") location.href = `/bed?bed=${encodeURIComponent(tr.dataset.bed)}`;
});
siteSelect.addEventListener("change", connect);
eicu.loadMe().then(() => {
  connect();
  eicuAlarms.poll({ onFeed: alarmFeed });
});
