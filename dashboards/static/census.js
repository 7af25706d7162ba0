// The census: every bed, most acute first. Over a WebSocket: a snapshot, then every second only
// the rows that changed (see dashboards/census.py). Ages are computed here from each value's
// device time, so a row is redrawn only when something in it changed.
// Each update is measured: performance entries "census-snapshot" and "census-delta".
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
    return eicu.el("span", { class: "status stale", title: "nothing received recently", "data-seen-us": bed.seen_us },
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

function valueCell(bed, v) {
  if (!v) return eicu.valueCell(v);
  const cell = eicu.valueCell({ ...v, age_s: ageOf(bed, v) });
  const badge = cell.querySelector(".badge");
  if (badge) badge.dataset.ts = String(v.ts_us === undefined ? bed.t_us : v.ts_us);
  return cell;
}

// Red: an unacknowledged high-priority alarm, or NEWS2 in the high band (or proven to be).
function acute(bed) {
  const n = bed.news2;
  const high = n && !n.invalid && (n.complete ? n.band === "high" : n.min_band === "high");
  return Boolean(high || (bed.alarm && bed.alarm.priority === "high" && bed.alarm.state !== "acknowledged"));
}

function fill(tr, bed) {
  const v = bed.values;
  tr.className = `bed-row ${bed.status}${bed.stale ? " stale" : ""}${acute(bed) ? " acute" : ""}`;
  tr.dataset.alarm = bed.alarm ? `${bed.alarm.priority} ${bed.alarm.state}` : "none";
  const nibp = eicu.el("span", {}, valueCell(bed, v.NIBP_SYS), "/", valueCell(bed, v.NIBP_DIA));
  const cells = [
    eicu.el("a", { href: `/bed?bed=${encodeURIComponent(bed.bed)}` }, bed.bed),
    statusCell(bed), alarmCell(bed), eicu.news2Chip(bed.news2),
    valueCell(bed, v.HR), valueCell(bed, v.SPO2), valueCell(bed, v.RR), nibp,
    valueCell(bed, v.ABP_MEAN), valueCell(bed, v.TEMP), valueCell(bed, v.ACVPU),
    valueCell(bed, v.O2), rhythmCell(bed.engine),
  ];
  tr.replaceChildren(...cells.map((c) => eicu.el("td", {}, c)));
}

function addRow(bed) {
  const tr = eicu.el("tr", { "data-bed": bed.bed });
  fill(tr, bed);
  rows.set(bed.bed, { data: bed, tr });
  return tr;
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
  for (const { data, tr } of rows.values()) {
    for (const badge of tr.querySelectorAll(".badge[data-ts]")) {
      const age = Math.max(0, (serverNowUs() + data.skew_ms * 1000 - Number(badge.dataset.ts)) / 1e6);
      const text = badge.classList.contains("stale") ? `stale ${eicu.age(age)}` : eicu.age(age);
      if (badge.textContent !== text) badge.textContent = text;
    }
    const seen = tr.querySelector("[data-seen-us]");
    if (seen) {
      const text = `stale ${eicu.age((serverNowUs() - Number(seen.dataset.seenUs)) / 1e6)}`;
      if (seen.textContent !== text) seen.textContent = text;
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
    fill(row.tr, row.data);
  }
  for (const bed of Object.values(msg.add)) body.append(addRow(bed));
  if (msg.order) reorder(msg.order);
}

function apply(msg) {
  const kind = msg.type === "snapshot" ? "census-snapshot" : "census-delta";
  performance.mark(`${kind}-start`);
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
  performance.measure(kind, `${kind}-start`);
  performance.clearMarks(`${kind}-start`);
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
