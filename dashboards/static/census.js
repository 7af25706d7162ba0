// The census: every bed, most acute first. Over a WebSocket: the page says which ranks it shows
// (those in view and a margin), and is sent those rows, then every second only what changed in
// them, and the census's size (see CensusWindow in dashboards/census.py): a census of a thousand
// beds costs the page, on the wire and in the browser, what one screen does. Ages are computed
// here from each value's device time, so a row is redrawn only when something in it changed.
// Each update is measured: performance entries "census-snapshot" and "census-delta" (the
// script's work) and "census-snapshot-painted" and "census-delta-painted" (up to the next frame).
"use strict";

const siteSelect = document.getElementById("site");
const body = document.querySelector("#census tbody");
const rows = new Map();     // bed -> {data, tr (null while out of view)}: the window's rows
let order = [];             // the window's beds, most acute first
let first = 0;              // the rank of the window's first bed
let total = 0;              // beds in the census
let asked = null;           // the view last asked for: [first, count]
const VIEW_MARGIN_ROWS = 10; // asked for above and below the view
let shown = new Set();      // beds whose rows are in the page
let rowHeight = 34;         // measured from a drawn row
let measured = false;       // rowHeight and bodyTop measured (again on resize)
let bodyTop = 0;            // where the rows start in the document
const MARGIN_ROWS = 10;     // drawn above and below the view
const topSpacer = eicu.el("tr", { class: "spacer", "aria-hidden": "true" }, eicu.el("td", { colspan: "13" }));
const bottomSpacer = eicu.el("tr", { class: "spacer", "aria-hidden": "true" }, eicu.el("td", { colspan: "13" }));
let socket = null;
let seq = null;
let offsetUs = 0;           // server clock minus this browser's clock

function serverNowUs() { return Date.now() * 1000 + offsetUs; }

function statusCell(bed) {
  const cell = bed.status === "offline"
    ? eicu.el("span", { class: "status offline" }, "offline")
    : bed.stale
      ? eicu.el("span", { class: "status stale", title: "nothing received recently" },
        `stale ${eicu.age((serverNowUs() - bed.seen_us) / 1e6)}`)
      : eicu.el("span", { class: `status ${bed.status}` }, bed.status);
  return bed.new ? eicu.el("span", {}, cell, " ", eicu.newBadge()) : cell;
}

function rhythmCell(engine) {
  const parts = [...engine.rhythms];
  if (engine.hr_bpm !== null) parts.push(`HR ${Math.round(engine.hr_bpm)}`);
  const poor = Object.entries(engine.quality).filter(([k, v]) => k.startsWith("ECG") && v !== "good");
  for (const [k, v] of poor) parts.push(`${k} ${v}`);
  return parts.length ? parts.join(" · ") : eicu.el("span", { class: "missing" }, "—");
}

function alarmCell(bed) {
  if (!bed.alarms_available && bed.remote) {
    return eicu.el("span", { class: "missing", title: "judged and paged at the remote site" }, "at site");
  }
  if (!bed.alarms_available) {
    return eicu.el("span", { class: "missing", title: "this engine runs no alarm service" }, "n/a");
  }
  if (!bed.alarm) return eicu.el("span", { class: "missing" }, "—");
  const video = eicu.videoLink(bed.bed, bed.alarm.alarm_id, bed.cart);
  return video ? eicu.el("span", {}, eicuAlarms.chip(bed.alarm), " ", video) : eicuAlarms.chip(bed.alarm);
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
// The bed, and under it who is in it: name, age and sex, and what the team must not miss (a
// code status other than full code, isolation, allergies); "no patient admitted" otherwise.
function bedCell(b) {
  const link = eicu.el("a", { href: `/bed?bed=${encodeURIComponent(b.bed)}` }, b.bed);
  return eicu.el("span", {}, link, eicu.patientLine(b.patient));
}

const COLUMNS = [
  { from: ["bed", "patient"], cell: bedCell },
  { from: ["status", "stale", "seen_us", "new"], cell: statusCell },
  { from: ["alarm", "alarms_available", "cart"], cell: alarmCell },
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
  const cls = `bed-row ${bed.status}${bed.stale ? " stale" : ""}${acute(bed) ? " acute" : ""}`;
  if (tr.className !== cls) tr.className = cls;
  const alarm = bed.alarm ? `${bed.alarm.priority} ${bed.alarm.state}` : "none";
  if (tr.dataset.alarm !== alarm) tr.dataset.alarm = alarm;
  const kind = bed.alarm ? bed.alarm.kind : "";
  if (tr.dataset.alarmKind !== kind) tr.dataset.alarmKind = kind;
}

function drawRow(bed) {
  const tr = eicu.el("tr", { "data-bed": bed.bed });
  decorate(tr, bed);
  tr.append(...COLUMNS.map((c) => eicu.el("td", {}, c.cell(bed))));
  return tr;
}

function spacer(tr, rowsHigh) {
  tr.firstChild.style.height = `${rowsHigh * rowHeight}px`;
  return tr;
}

// Put the rows in view (and a margin) in the page, in order; drop the others. Ranks the page
// has no rows for are blank until the server sends them (the page asks for its view).
function drawView() {
  const n = total;
  const [rankFirst, rankLast] = viewRanks();  // no layout is forced here once measured
  const viewFirst = Math.min(n, rankFirst), viewLast = Math.min(n, rankLast);
  askView(rankFirst, rankLast);
  const from = Math.max(first, viewFirst - MARGIN_ROWS);
  const to = Math.max(from, Math.min(first + order.length, viewLast + MARGIN_ROWS));
  const want = [];
  const now = new Set();
  if (from > 0) want.push(spacer(topSpacer, from));
  for (let i = from; i < to; i++) {
    const row = rows.get(order[i - first]);
    if (!row.tr) row.tr = drawRow(row.data);
    want.push(row.tr);
    now.add(order[i - first]);
  }
  if (to < n) want.push(spacer(bottomSpacer, n - to));
  for (const bed of shown) if (!now.has(bed) && rows.has(bed)) rows.get(bed).tr = null;
  shown = now;
  let previous = null;
  for (const el of want) {
    const at = previous ? previous.nextSibling : body.firstChild;
    if (at !== el) body.insertBefore(el, at);
    previous = el;
  }
  if (!previous) body.replaceChildren();
  else while (previous.nextSibling) previous.nextSibling.remove();
  if (!measured) {
    const drawn = body.querySelector("tr[data-bed]");
    const h = drawn ? drawn.getBoundingClientRect().height : 0;
    if (h > 0) {
      measured = true;
      if (Math.abs(h - rowHeight) > 0.5) { rowHeight = h; drawView(); }
    }
  }
  document.getElementById("census").dataset.beds = String(n);
}

// The ranks in view now: [first, last).
function viewRanks() {
  if (!measured) bodyTop = body.getBoundingClientRect().top + scrollY;
  const top = bodyTop - scrollY;
  const viewFirst = Math.max(0, Math.floor(-top / rowHeight));
  return [viewFirst, Math.max(viewFirst, Math.ceil((innerHeight - top) / rowHeight))];
}

// The window to ask for: the ranks in view and a margin above and below.
function windowFor(viewFirst, viewLast) {
  return [Math.max(0, viewFirst - VIEW_MARGIN_ROWS), Math.max(1, viewLast - viewFirst) + 2 * VIEW_MARGIN_ROWS];
}

// Ask the server for the ranks in view and a margin, when what the page holds no longer covers
// the view and the drawing margin.
function askView(viewFirst, viewLast) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  const need0 = Math.max(0, viewFirst - MARGIN_ROWS), need1 = viewLast + MARGIN_ROWS;
  if (asked) {  // covered: the window asked for holds what is needed, or runs to the census's end
    const a0 = asked[0], a1 = asked[0] + asked[1];
    if (need0 >= a0 && (need1 <= a1 || a1 >= total)) return;
  }
  asked = windowFor(viewFirst, viewLast);
  socket.send(JSON.stringify({ view: asked }));
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

// The remote sites whose link is not up (the census's "links"): one banner each, saying since
// when the hub has not heard from the site; its beds' rows show their last values, stale.
let links = {};

function drawLinks() {
  eicu.showSiteLinks(links, serverNowUs());
}

// Ages move on between updates: rewrite the badges whose text changed.
function tickAges() {
  drawLinks();
  const now = serverNowUs();
  for (const bed of shown) {
    const { data, tr } = rows.get(bed);
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
  shown = new Set();
  body.replaceChildren();
  for (const bed of msg.beds) rows.set(bed.bed, { data: bed, tr: null });
  order = msg.beds.map((b) => b.bed);
  first = msg.first || 0;
  total = msg.total === undefined ? order.length : msg.total;
  drawView();
}

// While the keyboard focus is in the table the server keeps the page's rows in their order
// (values still update), so the focused row does not move under the user; it says when the
// ranking has moved meanwhile ("held"), and ranks them again when the focus leaves (or Escape).
let holding = false;

function focusInTable() {
  return body.contains(document.activeElement);
}

function showHold(held) {
  document.getElementById("census").dataset.orderHeld = String(held);
  document.getElementById("order-held").hidden = !held;
}

function setHold(on) {
  if (holding === on) return;
  holding = on;
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ hold: on }));
  if (!on) showHold(false);
}

function delta(msg) {
  for (const bed of msg.remove) { rows.get(bed)?.tr?.remove(); rows.delete(bed); }
  for (const [bed, change] of Object.entries(msg.rows)) {
    const row = rows.get(bed);
    if (!row) continue;
    patch(row.data, change);
    if (row.tr) update(row, change);
  }
  for (const bed of Object.values(msg.add)) rows.set(bed.bed, { data: bed, tr: null });
  if (msg.order) order = msg.order.filter((b) => rows.has(b));
  else if (msg.remove.length || Object.keys(msg.add).length) {
    order = [...order.filter((b) => rows.has(b)), ...Object.keys(msg.add)];
  }
  if (msg.first !== undefined) first = msg.first;
  total = msg.total !== undefined ? msg.total : asked ? total : order.length;
  if (msg.held !== undefined) showHold(msg.held);
  drawView();
}

body.addEventListener("focusin", () => setHold(true));
body.addEventListener("focusout", () => {
  // after the focus has moved: still in the table (one row to the next) keeps the hold
  setTimeout(() => { if (!focusInTable()) setHold(false); }, 0);
});
addEventListener("keydown", (e) => {
  if (e.key === "Escape" && holding) { document.activeElement.blur(); setHold(false); }
});

// Seconds from a value's arrival to its pixel, for the rows in the page whose newest frame a
// delta brought (read by benchmarks/dashboard.py).
const sampleToPixel = [];
window.eicuSampleToPixel = sampleToPixel;

function arrivals(msg) {
  const out = [];
  for (const [bed, change] of Object.entries(msg.rows)) {
    const t = change.set && change.set.t_us;
    const row = rows.get(bed);
    if (t && row && row.tr) out.push(t - row.data.skew_ms * 1000);
  }
  return out;
}

// A delta's rows in the compact form (dashboards.census.CensusWindow): numbered paths, the
// numbers told once per window; path 0 is t_us, sent as now_us - t_us. Expanded to "rows".
let engineStatus = {};  // the census's engine part as last sent (a delta sends it when it changes)
let keyNames = new Map([[0, "t_us"]]);
const GONE_KEPT = 500;  // dashboards.census.GONE_KEPT
let gone = new Map();
function expand(msg) {
  for (const [id, path] of Object.entries(msg.keys || {})) keyNames.set(Number(id), path);
  msg.rows = {};
  for (const [bed, flat] of Object.entries(msg.c)) {
    const set = {};
    for (let i = 0; i < flat.length; i += 2) {
      const path = keyNames.get(flat[i]);
      if (path !== undefined) set[path] = path === "t_us" ? msg.now_us - flat[i + 1] : flat[i + 1];
    }
    msg.rows[bed] = { set };
  }
  for (const [bed, ids] of Object.entries(msg.cd || {})) {
    (msg.rows[bed] ||= { set: {} }).del = ids.map((id) => keyNames.get(id)).filter((p) => p !== undefined);
  }
  // the rows of beds that leave are kept, as many as the server keeps, in the order they left
  for (const bed of msg.remove) {
    const row = rows.get(bed);
    if (!row) continue;
    gone.delete(bed);
    gone.set(bed, row.data);
  }
  while (gone.size > GONE_KEPT) gone.delete(gone.keys().next().value);
  // a bed back in the window: its kept row with what changed since it left
  for (const bed of msg.back || []) {
    const data = gone.get(bed);
    if (!data) return false;  // out of step with the server: start again
    gone.delete(bed);
    patch(data, msg.rows[bed] || {});
    delete msg.rows[bed];
    msg.add[bed] = data;
  }
  if (msg.order) msg.order = msg.order.map((b) => (typeof b === "number" ? order[b] : b));
  return true;
}

function apply(msg) {
  const kind = msg.type === "delta" ? "census-delta" : "census-snapshot";
  const start = performance.now();
  offsetUs = msg.now_us - Date.now() * 1000;
  if (msg.c && !expand(msg)) { connect(); return; }
  if (msg.type === "snapshot" || msg.type === "window") {
    keyNames = new Map([[0, "t_us"]]);  // a new window numbers its paths afresh
    gone = new Map();
    snapshot(msg);
  } else if (seq === null || msg.seq !== seq + 1) {  // out of step: start again
    connect();
    return;
  } else {
    delta(msg);
  }
  seq = msg.seq;
  document.getElementById("census").dataset.seq = String(seq);
  if (msg.sites) updateSites(msg.sites);
  if (msg.engine) { engineStatus = msg.engine; eicu.showInputDelay(msg.engine.input_delay_s); }
  if (msg.links) links = msg.links;
  tickAges();
  const empty = document.getElementById("empty");
  empty.hidden = total > 0;
  const filtered = [...filterQuery().keys()].some((k) => k !== "site");
  empty.textContent = filtered ? "No beds match these filters."
    : engineStatus.starting ? `No beds yet: ${engineStatus.starting}.` : "No beds have reported yet.";
  document.getElementById("updated").textContent = `updated ${eicu.timeText(Date.now() * 1000)}`;
  // the script's work, and up to the next frame drawn (style, layout and paint included)
  performance.measure(kind, { start, end: performance.now() });
  const arrived = msg.type === "delta" ? arrivals(msg) : [];
  requestAnimationFrame(() => setTimeout(() => {
    performance.measure(`${kind}-painted`, { start });
    // from a value's arrival at the server to its pixel: the row's newest frame, on the
    // server's clock (its device time less the bed's clock offset, to 100 ms)
    const paintedUs = Date.now() * 1000 + offsetUs;
    for (const t of arrived) sampleToPixel.push((paintedUs - t) / 1e6);
    if (sampleToPixel.length > 5000) sampleToPixel.splice(0, sampleToPixel.length - 5000);
  }));
}

function connect() {
  if (socket) socket.close();
  seq = null;
  holding = false;
  showHold(false);
  asked = windowFor(...viewRanks());  // the first message is the window: no whole census
  const query = filterQuery();
  query.set("view", asked.join(","));
  query.set("compact", "1");
  const ws = new WebSocket(eicu.wsUrl(`/ws/census?${query}`));
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
let viewPending = false;
function onScroll() {
  if (viewPending) return;
  viewPending = true;
  requestAnimationFrame(() => { viewPending = false; drawView(); tickAges(); });
}
addEventListener("scroll", onScroll, { passive: true });
addEventListener("resize", () => { measured = false; onScroll(); });
// The site, the filters and the sort are in the address (/census?site=icu1&band=medium): a view
// can be bookmarked and shared.
const FILTERS = [...document.querySelectorAll("#filters [data-param]")];

function filterQuery() {
  const query = new URLSearchParams();
  if (siteSelect.value) query.set("site", siteSelect.value);
  for (const el of FILTERS) {
    const value = el.type === "checkbox" ? (el.checked ? "1" : "") : el.value;
    if (value && !(el.dataset.param === "sort" && value === "acuity")) query.set(el.dataset.param, value);
  }
  return query;
}

function fromAddress() {
  const params = new URLSearchParams(location.search);
  const wanted = params.get("site");
  if (wanted) {
    if (![...siteSelect.options].some((o) => o.value === wanted)) {
      siteSelect.append(eicu.el("option", { value: wanted }, wanted));
    }
    siteSelect.value = wanted;
  }
  for (const el of FILTERS) {
    const value = params.get(el.dataset.param);
    if (value === null) continue;
    if (el.type === "checkbox") el.checked = ["1", "true", "yes"].includes(value);
    else if ([...el.options].some((o) => o.value === value)) el.value = value;
  }
}

function filtersChanged() {
  const query = filterQuery();
  history.replaceState(null, "", query.size ? `/census?${query}` : "/census");
  scrollTo(0, 0);
  connect();
}
siteSelect.addEventListener("change", filtersChanged);
for (const el of FILTERS) el.addEventListener("change", filtersChanged);
fromAddress();
eicu.bindLocale(() => location.reload());
eicu.loadMe().then(() => {
  connect();
  eicuAlarms.poll({ onFeed: alarmFeed });
});
