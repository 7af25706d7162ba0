// The census: every bed, most acute first, refreshed over a WebSocket every second.
"use strict";

const siteSelect = document.getElementById("site");
const body = document.querySelector("#census tbody");
let socket = null;

function statusCell(bed) {
  if (bed.status === "offline") return eicu.el("span", { class: "status offline" }, "offline");
  if (bed.stale) {
    return eicu.el("span", { class: "status stale", title: "nothing received recently" },
      `stale ${eicu.age(bed.seen_age_s)}`);
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
  const video = eicu.videoLink(bed.bed, bed.alarm.alarm_id);
  return video ? eicu.el("span", {}, eicuAlarms.chip(bed.alarm), " ", video) : eicuAlarms.chip(bed.alarm);
}

function render(msg) {
  const current = siteSelect.value;
  const known = new Set([...siteSelect.options].map((o) => o.value));
  for (const s of msg.sites) if (!known.has(s)) siteSelect.append(eicu.el("option", { value: s }, s));
  siteSelect.value = current;
  body.replaceChildren();
  for (const bed of msg.beds) {
    const v = bed.values;
    const tr = eicu.el("tr", { class: `bed-row ${bed.status}${bed.stale ? " stale" : ""}`, "data-bed": bed.bed,
      "data-alarm": bed.alarm ? `${bed.alarm.priority} ${bed.alarm.state}` : "none" });
    const nibp = eicu.el("span", {}, eicu.valueCell(v.NIBP_SYS), "/", eicu.valueCell(v.NIBP_DIA));
    const cells = [
      eicu.el("a", { href: `/bed?bed=${encodeURIComponent(bed.bed)}` }, bed.bed),
      statusCell(bed), alarmCell(bed), eicu.news2Chip(bed.news2),
      eicu.valueCell(v.HR), eicu.valueCell(v.SPO2), eicu.valueCell(v.RR), nibp,
      eicu.valueCell(v.ABP_MEAN), eicu.valueCell(v.TEMP), eicu.valueCell(v.ACVPU),
      eicu.valueCell(v.O2), rhythmCell(bed.engine),
    ];
    for (const c of cells) tr.append(eicu.el("td", {}, c));
    tr.addEventListener("click", (ev) => {
      if (ev.target.tagName !== "A") location.href = `/bed?bed=${encodeURIComponent(bed.bed)}`;
    });
    body.append(tr);
  }
  document.getElementById("empty").hidden = msg.beds.length > 0;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function connect() {
  if (socket) socket.close();
  const site = siteSelect.value;
  const ws = new WebSocket(eicu.wsUrl(`/ws/census${site ? `?site=${encodeURIComponent(site)}` : ""}`));
  socket = ws;
  ws.onmessage = (ev) => render(JSON.parse(ev.data));
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

siteSelect.addEventListener("change", connect);
eicu.loadMe().then(() => {
  connect();
  eicuAlarms.poll({ onFeed: alarmFeed });
});
