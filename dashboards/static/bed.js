// The bed view: live waveforms, numerics with freshness, engine flags, NEWS2, trends, review.
"use strict";

const bedId = new URLSearchParams(location.search).get("bed") || "";
const [site, bedName] = bedId.split("/");
const base = `/api/beds/${encodeURIComponent(site)}/${encodeURIComponent(bedName)}`;
const traces = new Map();
const LABELS = { HR: "HR", PR: "Pulse", SPO2: "SpO2", RR: "RR", TEMP: "Temp", NIBP_SYS: "NIBP sys",
  NIBP_DIA: "NIBP dia", NIBP_MEAN: "NIBP mean", ABP_SYS: "ABP sys", ABP_DIA: "ABP dia",
  ABP_MEAN: "ABP mean", FIO2: "FiO2", ACVPU: "ACVPU", O2: "O2" };
let deviceNowUs = null;
let socket = null;

document.getElementById("title").textContent = bedId;
eicuPatient.init(bedId);

function traceFor(chunk) {
  let trace = traces.get(chunk.signal);
  if (!trace || trace.fs !== chunk.fs_hz) {
    const old = document.getElementById(`wave-${chunk.signal}`);
    if (old) old.remove();
    const canvas = eicu.el("canvas", { class: "wave", id: `wave-${chunk.signal}`, "data-signal": chunk.signal });
    document.getElementById("waves").append(canvas);
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(Math.max(600, canvas.clientWidth) * dpr);
    canvas.height = Math.round(canvas.clientHeight * dpr);
    trace = new Trace(canvas, chunk.signal, chunk.fs_hz, { dpr });
    if (deviceNowUs !== null) trace.deviceOffsetUs = deviceNowUs - Date.now() * 1000;
    traces.set(chunk.signal, trace);
  }
  return trace;
}

// The screen's scale (CSS px per mm) for a true 25 mm/s and 10 mm/mV: the ruler is 50 mm long
// when the setting is right; changing it draws the traces again at the new scale.
function showScale() {
  const input = document.getElementById("px-per-mm");
  input.value = eicuPaper.pxPerMm().toFixed(2);
  document.getElementById("ruler").style.width = `${50 * eicuPaper.pxPerMm()}px`;
}
document.getElementById("px-per-mm").addEventListener("change", (e) => {
  const v = Number(e.target.value);
  if (!(v >= 1 && v <= 20)) { showScale(); return; }
  eicuPaper.set(v);
  showScale();
  showReviewSpan();
  for (const [signal] of traces) document.getElementById(`wave-${signal}`)?.remove();
  traces.clear();
});
showScale();
showReviewSpan();

function renderBed(bed) {
  eicuPatient.update(bed.patient);
  deviceNowUs = bed.device_now_us;
  for (const trace of traces.values()) trace.deviceOffsetUs = deviceNowUs - Date.now() * 1000;
  const status = document.getElementById("status");
  status.replaceChildren(bed.status === "offline"
    ? eicu.el("span", { class: "status offline" }, "offline")
    : bed.stale ? eicu.el("span", { class: "status stale" }, `stale ${eicu.age(bed.seen_age_s)}`)
    : eicu.el("span", { class: `status ${bed.status}` }, bed.status));
  if (bed.new) status.append(" ", eicu.newBadge());
  document.getElementById("news2").replaceChildren(eicu.news2Chip(bed.news2));
  const tiles = document.getElementById("tiles");
  tiles.replaceChildren();
  for (const [k, label] of Object.entries(LABELS)) {
    if (!(k in bed.values)) continue;
    const v = bed.values[k];
    tiles.append(eicu.el("div", { class: "tile", "data-key": k },
      eicu.el("div", { class: "k" }, `${label} ${eicu.unitText(v.unit)}`),
      eicu.el("div", { class: "v" }, eicu.valueCell(v))));
  }
  const e = bed.engine;
  const engine = document.getElementById("engine");
  engine.replaceChildren(
    eicu.el("div", {}, "Heart rate (ECG, engine): ",
      e.hr_bpm === null ? eicu.el("span", { class: "missing" }, "—") : `${Math.round(e.hr_bpm)} /min`),
    eicu.el("div", { id: "rhythms" }, "Rhythm flags: ",
      e.rhythms.length ? e.rhythms.join(", ") : eicu.el("span", { class: "missing" }, "none active")),
    eicu.el("div", {}, "Signal quality: ",
      Object.entries(e.quality).map(([s, q]) => `${s} ${q}`).join(", ") || "—"));
  const nd = document.getElementById("news2-detail");
  nd.replaceChildren();
  const n = bed.news2;
  if (!n || n.invalid) {
    nd.append(eicu.el("div", { class: "missing" }, n ? `cannot be scored: ${n.invalid}` : "no score yet"));
  } else {
    nd.append(eicu.el("div", {}, eicu.news2Chip(n),
      n.response ? eicu.el("div", { class: "badge" }, n.response) : null));
    const table = eicu.el("table", { id: "news2-components" });
    for (const [comp, pts] of Object.entries(n.components)) {
      table.append(eicu.el("tr", {}, eicu.el("td", {}, comp),
        eicu.el("td", {}, pts === null ? eicu.el("span", { class: "missing" }, "not scored") : String(pts))));
    }
    nd.append(table);
    if (n.missing.length) nd.append(eicu.el("div", { class: "invalid" }, `missing: ${n.missing.join(", ")}`));
    if (n.stale && n.stale.length) nd.append(eicu.el("div", { class: "invalid" }, `stale: ${n.stale.join(", ")}`));
    if (n.rising) nd.append(eicu.el("div", { class: "error" }, `deteriorating: ${n.rising_reasons.join(", ")}`));
  }
  // The ECG first (full disclosure is read for rhythms), then the others.
  const select = document.getElementById("review-signal");
  const rank = (s) => (s === "ECG_II" ? 0 : s.startsWith("ECG") ? 1 : 2);
  const signals = Object.keys(bed.signals).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  for (const s of signals) {
    if (![...select.options].some((o) => o.value === s)) select.append(eicu.el("option", { value: s }, signalLabel(s)));
  }
  const at = document.getElementById("review-at");
  if (!at.value && deviceNowUs) at.value = localInput(deviceNowUs / 1000 - 15000);
}

function localInput(ms) {
  const d = new Date(ms);
  const p = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function connect() {
  const ws = new WebSocket(eicu.wsUrl(`/ws/beds/${encodeURIComponent(site)}/${encodeURIComponent(bedName)}`));
  socket = ws;
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    for (const chunk of msg.waves || []) traceFor(chunk).push(chunk.values, chunk.gap, chunk.t_last_us);
    for (const m of msg.marks || []) { const trace = traces.get(m.signal); if (trace) trace.mark(m); }
    if (msg.bed) renderBed(msg.bed);
    if (msg.engine) eicu.showInputDelay(msg.engine.input_delay_s);
    if (msg.links) eicu.showSiteLinks(msg.links, msg.now_us);
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    setTimeout(async () => { await eicu.loadMe(); connect(); }, 2000);
  };
}

let lastFrame = null;
function animate(ts) {
  const dt = lastFrame === null ? 0 : Math.min(0.25, (ts - lastFrame) / 1000);
  lastFrame = ts;
  for (const trace of traces.values()) trace.draw(dt);
  requestAnimationFrame(animate);
}

let trendMinutes = 60;
const SPAN_NAMES = { 60: "last hour", 1440: "last 24 hours", 10080: "last 7 days" };

function bucketName(s) {
  return s < 3600 ? `${s / 60}-minute` : `${s / 3600}-hour`;
}

async function loadTrends() {
  const minutes = trendMinutes;
  const r = await eicu.api(`${base}/trends?minutes=${minutes}`);
  if (!r.ok || minutes !== trendMinutes) return;
  const data = await r.json();
  // with a patient in the bed: the patient's trends, across the beds of their stay
  const whose = data.patient ? ", the patient's since admission" : "";
  document.getElementById("trends-title").textContent =
    `Trends, ${SPAN_NAMES[minutes]}${whose} (${bucketName(data.bucket_s)} mean, min–max)`;
  const box = document.getElementById("trends");
  box.dataset.minutes = String(minutes);
  box.dataset.bucketS = String(data.bucket_s);
  for (const [key, points] of Object.entries(data.series)) {
    let canvas = document.getElementById(`trend-${key}`);
    if (!canvas) {
      canvas = eicu.el("canvas", { class: "trend", id: `trend-${key}`, width: 900, height: 84 });
      box.append(canvas);
    }
    canvas.dataset.points = String(points.length);
    const t = [data.start_us, ...points.map((p) => p[0]), data.end_us];
    const avg = [null, ...points.map((p) => p[1]), null];
    const ranges = [null, ...points.map((p) => [p[2], p[3]]), null];
    drawSeries(canvas, t, avg, `${LABELS[key] || key}  (${points.length} × ${bucketName(data.bucket_s)})`, ranges,
      { axis: true, alarms: data.alarms || [] });
  }
}

for (const button of document.querySelectorAll("#trend-spans button")) {
  button.addEventListener("click", () => {
    trendMinutes = Number(button.dataset.minutes);
    for (const b of document.querySelectorAll("#trend-spans button")) {
      b.setAttribute("aria-pressed", String(b === button));
    }
    loadTrends();
  });
}

// Full disclosure on paper: the stored window that fills the review canvas at 25 mm/s (and
// 10 mm/mV), paged a window at a time, with the engine's beat and rhythm marks and the alarms.
function reviewCanvas() {
  const canvas = document.getElementById("review");
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(Math.max(600, canvas.clientWidth) * dpr);
  canvas.height = Math.round(canvas.clientHeight * dpr);
  return { canvas, dpr, seconds: paperWindowS(canvas.width, eicuPaper.pxPerMm(), dpr) };
}

function showReviewSpan() {
  const { seconds } = reviewCanvas();
  document.getElementById("review-s").textContent = `${seconds.toFixed(1)} s at 25 mm/s`;
  return seconds;
}

async function review() {
  const info = document.getElementById("review-info");
  const at = new Date(document.getElementById("review-at").value.trim().replace(" ", "T")).getTime() * 1000;
  const signal = document.getElementById("review-signal").value;
  const { canvas, dpr, seconds } = reviewCanvas();
  showReviewSpan();
  if (!signal || Number.isNaN(at)) { info.textContent = "choose a time and a signal"; return; }
  const r = await eicu.api(`${base}/waveform?signal=${signal}&start_us=${at}&seconds=${seconds.toFixed(3)}`);
  if (!r.ok) { info.textContent = `cannot load: ${r.status}`; return; }
  const w = await r.json();
  // The samples on the window's own time line: where nothing is stored the paper stays blank.
  const fs = w.fs_hz || 250, n = Math.round(seconds * fs);
  const samples = new Array(n).fill(null);
  w.t_us.forEach((t, k) => {
    const i = Math.round(((t - w.start_us) * fs) / 1e6);
    if (i >= 0 && i < n) samples[i] = w.values[k];
  });
  const strip = new Trace(canvas, signal, fs, { dpr });
  strip.push(samples, false, w.start_us + ((n - 1) * 1e6) / fs);
  strip.play = strip.recv;
  strip.draw(0);
  if (!w.values.length) {
    info.textContent = "no stored samples in this window";
    canvas.dataset.beats = "0"; canvas.dataset.alarms = "0";
    return;
  }
  const beats = w.marks.filter((m) => m.kind === "beat").length;
  info.textContent = `${w.values.length} samples at ${w.fs_hz} Hz · ${beats} beats` +
    (w.alarms === null ? " · alarms unavailable" : ` · ${w.alarms.length} alarms`);
  drawReviewMarks(canvas, strip, w.start_us, w.marks, w.alarms || []);
  reviewed = { signal, start_us: w.start_us, end_us: w.end_us, bed: w.bed };
  // printed at the screen's scale: the strip's width in millimetres of paper (fit to the page
  // when wider)
  canvas.style.setProperty("--paper-mm", `${(canvas.width / dpr / eicuPaper.pxPerMm()).toFixed(1)}mm`);
  document.getElementById("review-caption").textContent = stripCaption();
}

// The strip's caption: what, when and at which scale, for a saved or printed strip.
let reviewed = null;
function stripCaption() {
  if (!reviewed) return "";
  const t = (us) => eicu.dateTimeText(us);
  const gain = document.getElementById("review").dataset.gain;
  const where = reviewed.bed && reviewed.bed !== bedId ? `${bedId} (from ${reviewed.bed}, before the transfer)` : bedId;
  return `${where} · ${signalLabel(reviewed.signal)} · ${t(reviewed.start_us)} – ${t(reviewed.end_us)}` +
    ` · 25 mm/s${gain && gain !== "auto" ? ` · ${gain}` : ""}`;
}

// The strip as a PNG: the review canvas under its caption.
function savePng() {
  if (!reviewed) return;
  const strip = document.getElementById("review");
  const dpr = window.devicePixelRatio || 1, head = Math.round(22 * dpr);
  const out = document.createElement("canvas");
  out.width = strip.width; out.height = strip.height + head;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, out.width, head);
  ctx.fillStyle = "#000"; ctx.font = `${Math.round(13 * dpr)}px system-ui`;
  ctx.fillText(stripCaption(), 6 * dpr, 16 * dpr);
  ctx.drawImage(strip, 0, head);
  const name = `${bedId.replace("/", "-")}-${reviewed.signal}-${new Date(reviewed.start_us / 1000).toISOString().replace(/[:.]/g, "")}.png`;
  out.toBlob((blob) => {
    const a = eicu.el("a", { href: URL.createObjectURL(blob), download: name });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }, "image/png");
}
document.getElementById("review-png").addEventListener("click", savePng);
document.getElementById("review-print").addEventListener("click", () => { if (reviewed) window.print(); });

// Alarms as coloured bands across the window (with their name and, if so, who acknowledged
// them); beats as ticks labelled N, V (ventricular) or P (pulse); rhythm changes as dashed lines.
function drawReviewMarks(canvas, strip, t0, marks, alarms) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, dpr = strip.dpr;
  const x0 = strip.sweepX0();
  const x = (t) => x0 + ((t - t0) / 1e6) * PAPER_MM_PER_S * strip.mm();
  const colours = { high: "209,36,47", medium: "245,196,0", low: "0,184,212" };  // IEC 60601-1-8
  ctx.font = `${Math.round(11 * dpr)}px system-ui`;
  alarms.forEach((a, k) => {
    const a0 = Math.max(x0, x(a.start_us)), a1 = a.end_us === null ? w : Math.min(w, x(a.end_us));
    const rgb = colours[a.priority] || colours.low;
    ctx.fillStyle = `rgba(${rgb},0.18)`; ctx.fillRect(a0, 0, Math.max(2, a1 - a0), h);
    ctx.fillStyle = `rgb(${rgb})`; ctx.fillRect(a0, h - 4 * dpr - 4 * dpr * k, Math.max(2, a1 - a0), 3 * dpr);
    const ack = a.acknowledged_by ? ` ✓ ${a.acknowledged_by}` : "";
    ctx.fillText(`${a.kind}${a.end_us === null ? "" : " (ended)"}${ack}`, a0 + 3 * dpr, h - 8 * dpr - 12 * dpr * k);
  });
  for (const m of marks) {
    const mx = x(m.t_us);
    if (m.kind === "rhythm") {
      ctx.strokeStyle = "#d4a72c"; ctx.setLineDash([4 * dpr, 3 * dpr]); ctx.beginPath();
      ctx.moveTo(mx, 18 * dpr); ctx.lineTo(mx, h); ctx.stroke(); ctx.setLineDash([]);
      ctx.fillStyle = "#d4a72c";
      ctx.fillText(m.state === "end" ? `${m.label} end` : m.state === "ongoing" ? `${m.label} (ongoing)` : m.label, mx + 3 * dpr, 28 * dpr);
    } else {
      ctx.fillStyle = m.label === "V" ? "#f0883e" : "#7d8590";
      ctx.fillRect(mx - 0.5 * dpr, 18 * dpr, dpr, 5 * dpr);
      ctx.fillText(m.label, mx - 3 * dpr, 34 * dpr);
    }
  }
  canvas.dataset.beats = String(marks.filter((m) => m.kind === "beat").length);
  canvas.dataset.alarms = String(alarms.length);
}

// Alarms: the live list with acknowledge / pause for the roles that may respond, and history.
let alarmFeed = null;
let pauseMaxS = null;
let hasCart = false;  // a video cart is registered for this bed (at page load)

async function respond(path, body) {
  const error = document.getElementById("alarm-error");
  error.textContent = "";
  try {
    await eicuAlarms.post(path, body);
  } catch (err) {
    error.textContent = err.message;
  }
  alarmFeed.refresh();
}

function alarmItem(a) {
  const li = eicu.el("li", { "data-alarm-id": a.alarm_id, "data-state": a.state },
    eicuAlarms.chip(a), " ", a.state,
    eicu.el("div", { class: "meta" }, `since ${eicuAlarms.time(a.started_us)}`,
      a.sounding ? " · sounding" : "",
      a.audio_paused_until_us !== null && !a.sounding && a.state !== "acknowledged"
        ? ` · audio paused until ${eicuAlarms.time(a.audio_paused_until_us)}` : "",
      a.acknowledged_by ? ` · acknowledged by ${a.acknowledged_by}` : ""));
  if (eicuAlarms.canRespond() && (a.state === "active" || a.state === "latched")) {
    const id = encodeURIComponent(a.alarm_id).replaceAll("%2F", "/");
    const ack = eicu.el("button", { class: "ack" }, "Acknowledge");
    ack.addEventListener("click", () => respond(`/api/alarms/${id}/ack`));
    li.append(ack);
    if (a.sounding) {
      const pause = eicu.el("button", { class: "pause" }, `Pause audio ${pauseMaxS} s`);
      pause.addEventListener("click", () => respond(`/api/alarms/${id}/pause`, { duration_s: pauseMaxS }));
      li.append(pause);
    }
  }
  const video = eicu.videoLink(bedId, a.alarm_id, hasCart);
  if (video) li.append(" ", video);
  return li;
}

function renderAlarms(data) {
  pauseMaxS = data.audio_pause_max_s;
  const list = document.getElementById("alarm-list");
  list.replaceChildren(...data.alarms.map(alarmItem));
  if (!data.alarms.length) list.append(eicu.el("li", { class: "missing" }, "no live alarms"));
  const pauseBed = document.getElementById("pause-bed");
  pauseBed.hidden = !eicuAlarms.canRespond() || !data.alarms.some((a) => a.sounding);
  pauseBed.textContent = `Pause this bed's audio ${pauseMaxS} s`;
  const history = document.getElementById("alarm-history");
  history.replaceChildren(...data.history.map((e) => eicu.el("li", {},
    `${eicuAlarms.time(e.time_us)} ${e.kind} ${e.state} (${e.priority}) — ${e.actor}${e.reason ? `: ${e.reason}` : ""}`)));
  if (!data.history.length) history.append(eicu.el("li", { class: "missing" }, "no alarm events since the engine started"));
}

function alarmFeedState(ok, message) {
  const badge = document.getElementById("alarm-feed");
  badge.textContent = ok ? "" : `alarms unavailable: ${message}`;
  badge.classList.toggle("stale", !ok);
  if (!ok) {  // never leave an old alarm list looking current
    document.getElementById("alarm-list").replaceChildren();
    document.getElementById("pause-bed").hidden = true;
  }
}

document.getElementById("pause-bed").addEventListener("click", () => respond(
  `${base}/alarms/pause`, { duration_s: pauseMaxS }));
document.getElementById("review-show").addEventListener("click", review);
// Scroll the review through the stored waveform, a window at a time.
function stepReview(direction) {
  const at = document.getElementById("review-at");
  const ms = new Date(at.value.trim().replace(" ", "T")).getTime();
  if (Number.isNaN(ms)) return;
  at.value = localInput(ms + direction * showReviewSpan() * 1000);
  review();
}
document.getElementById("review-back").addEventListener("click", () => stepReview(-1));
document.getElementById("review-next").addEventListener("click", () => stepReview(1));
eicu.bindLocale(() => location.reload());
eicu.loadMe().then(async () => {
  const known = await eicu.api(base);
  if (!known.ok) {
    document.getElementById("status").replaceChildren(
      eicu.el("span", { class: "error" }, known.status === 404 ? "no such bed" : `error ${known.status}`));
    return;
  }
  const detail = await known.json();
  hasCart = Boolean(detail.cart);
  renderBed(detail);
  const video = eicu.videoLink(bedId, null, hasCart);
  if (video) document.getElementById("video").append(video);
  connect();
  alarmFeed = eicuAlarms.poll({ bed: bedId, onBed: renderAlarms, onFeed: alarmFeedState });
  loadTrends();
  setInterval(loadTrends, 60000);
  requestAnimationFrame(animate);
});
