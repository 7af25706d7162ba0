// The unit's alarm list: every live alarm of the user's sites, most urgent first (the server's
// ranking), with how long each has lasted, who acknowledged it, and acknowledge / pause for the
// roles that may respond; then the unit's recent alarm events. The site and priority filters
// are in the address (/alarms?site=icu1&priority=high), so a view can be bookmarked.
"use strict";

const params = new URLSearchParams(location.search);
const siteSelect = document.getElementById("site");
let priority = params.get("priority") || "";
let pauseMaxS = null;
let latest = null;  // the last answer, drawn again when a filter changes

function duration(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

async function respond(path, body) {
  const error = document.getElementById("alarm-error");
  error.textContent = "";
  try {
    await eicuAlarms.post(path, body);
    feed.refresh();
  } catch (err) {
    error.textContent = err.message;
  }
}

function actions(a) {
  if (!eicuAlarms.canRespond()) return "";
  const out = eicu.el("span", {});
  if (a.state === "active" || a.state === "latched") {
    const ack = eicu.el("button", { class: "ack" }, "Acknowledge");
    ack.addEventListener("click", () => respond(`/api/alarms/${a.alarm_id}/ack`, {}));
    out.append(ack);
    if (a.sounding) {
      const pause = eicu.el("button", { class: "pause" }, `Pause ${pauseMaxS} s`);
      pause.addEventListener("click", () => respond(`/api/alarms/${a.alarm_id}/pause`, { duration_s: pauseMaxS }));
      out.append(" ", pause);
    }
  }
  return out;
}

function shown(a) {
  return (!priority || a.priority === priority) && (!siteSelect.value || a.bed.split("/")[0] === siteSelect.value);
}

function draw() {
  if (!latest) return;
  const body = document.querySelector("#live-alarms tbody");
  const alarms = latest.alarms.filter(shown);
  const nowS = latest.now_us / 1e6;
  body.replaceChildren(...alarms.map((a) => eicu.el("tr", { "data-alarm": a.alarm_id, "data-priority": a.priority, "data-state": a.state },
    eicu.el("td", {}, eicuAlarms.time(a.started_us)),
    eicu.el("td", {}, duration(Math.max(0, nowS - a.started_us / 1e6))),
    eicu.el("td", {}, eicu.el("a", { href: `/bed?bed=${encodeURIComponent(a.bed)}` }, a.bed)),
    eicu.el("td", {}, eicuAlarms.chip(a)),
    eicu.el("td", {}, a.priority),
    eicu.el("td", {}, a.state),
    eicu.el("td", {}, a.acknowledged_by ? `${a.acknowledged_by} ${eicuAlarms.time(a.acknowledged_us)}` : "—"),
    eicu.el("td", {}, actions(a)))));
  document.getElementById("no-alarms").hidden = alarms.length > 0;
  document.getElementById("live-alarms").dataset.count = String(alarms.length);
  const history = document.getElementById("unit-history");
  const events = (latest.history || []).filter(shown);
  history.replaceChildren(...events.map((e) => eicu.el("li", {},
    `${eicuAlarms.time(e.time_us)} ${e.bed} ${e.kind} ${e.state} (${e.priority}) — ${e.actor}${e.reason ? `: ${e.reason}` : ""}`)));
  if (!events.length) history.append(eicu.el("li", { class: "missing" }, "no alarm events since the engine started"));
  const sites = new Set(latest.alarms.map((a) => a.bed.split("/")[0]));
  const known = new Set([...siteSelect.options].map((o) => o.value));
  for (const s of [...sites].sort()) if (!known.has(s)) siteSelect.append(eicu.el("option", { value: s }, s));
}

function address() {
  const q = new URLSearchParams();
  if (siteSelect.value) q.set("site", siteSelect.value);
  if (priority) q.set("priority", priority);
  history.replaceState(null, "", `/alarms${q.size ? `?${q}` : ""}`);
}

function showPriority() {
  for (const b of document.querySelectorAll("#priority button")) {
    b.setAttribute("aria-pressed", String(b.dataset.priority === priority));
  }
}

for (const b of document.querySelectorAll("#priority button")) {
  b.addEventListener("click", () => { priority = b.dataset.priority; showPriority(); address(); draw(); });
}
siteSelect.addEventListener("change", () => { address(); draw(); });
const wantedSite = params.get("site");
if (wantedSite) {
  siteSelect.append(eicu.el("option", { value: wantedSite }, wantedSite));
  siteSelect.value = wantedSite;
}
showPriority();

function feedState(ok, message) {
  const badge = document.getElementById("alarm-feed");
  badge.textContent = ok ? "" : `alarms unavailable: ${message}`;
  badge.classList.toggle("stale", !ok);
  if (!ok) {  // never leave an old alarm list looking current
    latest = null;
    document.querySelector("#live-alarms tbody").replaceChildren();
  }
}

let feed = null;
eicu.bindLocale(() => location.reload());
eicu.loadMe().then(() => {
  feed = eicuAlarms.poll({ history: true, onUnit: (data) => { latest = data; pauseMaxS = data.audio_pause_max_s; draw(); },
    onFeed: feedState });
});
