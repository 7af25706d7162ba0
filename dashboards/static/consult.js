// The video consult: call the bed's cart over WebRTC (signaling through the engine), show the
// remote video and a self view, the alarm that led here, the bed's last 60 s of waveforms, and
// the call's quality as both sides measure it. window.eicuConsult shows the call's state.
"use strict";

const [, , siteId, bedName] = location.pathname.split("/").map(decodeURIComponent);
const bedId = `${siteId}/${bedName}`;
const alarmId = new URLSearchParams(location.search).get("alarm");
const bedApi = `/api/beds/${encodeURIComponent(siteId)}/${encodeURIComponent(bedName)}`;
const STATS_MS = 2000;
const PING_MS = 20000;
const GATHER_MAX_MS = 15000;
const STRIP_S = 60;
const STRIP_SIGNALS = ["ECG_II", "PLETH", "ABP"];

const consult = {
  state: "idle", callId: null, reason: "", framesDecoded: 0, width: 0, height: 0,
  cart: null,  // the cart's last stats
};
window.eicuConsult = consult;

let socket = null;
let pc = null;
let local = null;
let timers = [];

document.getElementById("title").textContent = `Video consult — ${bedId}`;
document.getElementById("back").href = `/bed?bed=${encodeURIComponent(bedId)}`;

function setState(state, message = "") {
  consult.state = state;
  const badge = document.getElementById("call-state");
  badge.textContent = state;
  badge.dataset.state = state;
  document.getElementById("call-message").textContent = message;
  const live = ["connecting", "ringing", "connected"].includes(state);
  document.getElementById("hangup").disabled = !live;
  document.getElementById("call-again").hidden = live;
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

// --- the call ------------------------------------------------------------------------------

function call() {
  teardown();
  consult.callId = null;
  consult.reason = "";
  setState("connecting", "calling the bedside cart…");
  const query = alarmId ? `?alarm=${encodeURIComponent(alarmId)}` : "";
  const ws = new WebSocket(eicu.wsUrl(
    `/ws/consult/${encodeURIComponent(siteId)}/${encodeURIComponent(bedName)}${query}`));
  socket = ws;
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    onMessage(msg).catch((err) => fail(`the call could not be set up: ${err.message}`));
  };
  ws.onclose = (ev) => {
    if (socket !== ws) return;
    socket = null;
    if (ev.code === 4401) { eicu.toLogin(); return; }
    if (ev.code === 4403) { end("refused", ev.reason || "you may not call this bed"); return; }
    if (["connecting", "ringing", "connected"].includes(consult.state)) {
      end("failed", consult.reason || "the connection to the engine was lost");
    }
  };
}

async function onMessage(msg) {
  switch (msg.type) {
    case "ready":
      consult.callId = msg.call_id;
      await offer(msg.ice_servers || []);
      break;
    case "answer":
      await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      setState("connected", "");
      break;
    case "hangup":
      consult.reason = msg.reason || "the call has ended";
      end(msg.outcome === "busy" ? "busy" : "ended", consult.reason);
      break;
    case "error":
      consult.reason = msg.reason;
      end("failed", msg.reason);
      break;
    case "cart_stats":
      consult.cart = msg.stats;
      showQuality(2, msg.stats);
      break;
    default:  // pong, and anything newer than this page
      break;
  }
}

async function offer(iceServers) {
  pc = new RTCPeerConnection({ iceServers });
  const remote = new MediaStream();
  document.getElementById("remote").srcObject = remote;
  pc.ontrack = (ev) => {
    remote.addTrack(ev.track);
    playRemote();
  };
  pc.onconnectionstatechange = () => {
    if (pc && pc.connectionState === "failed") {
      send({ type: "hangup", call_id: consult.callId, reason: "the media connection failed" });
      end("failed", "the media connection failed");
    }
  };
  try {
    local = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  } catch (err) {
    local = null;
  }
  if (local) {
    for (const track of local.getTracks()) pc.addTrack(track, local);
    document.getElementById("self").srcObject = local;
  } else {  // no camera or microphone here: receive only, and say so
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
    document.getElementById("call-message").textContent = "no camera or microphone here: the bedside will not see or hear you";
  }
  pc.createDataChannel("eicu");
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  if (!pc) return;  // hung up meanwhile
  send({ type: "offer", sdp: pc.localDescription.sdp });
  setState("ringing", "waiting for the bedside cart to answer…");
  timers.push(setInterval(measure, STATS_MS));
  timers.push(setInterval(() => send({ type: "ping" }), PING_MS));
}

function gathered(peer) {
  // The engine relays whole descriptions (no trickle): wait until every candidate is in.
  return new Promise((resolve) => {
    if (peer.iceGatheringState === "complete") { resolve(); return; }
    const done = () => { clearTimeout(timer); peer.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (peer.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, GATHER_MAX_MS);
    peer.addEventListener("icegatheringstatechange", check);
  });
}

function playRemote() {
  const video = document.getElementById("remote");
  video.play().catch(() => {  // autoplay with sound needs a gesture here: play muted, offer unmute
    video.muted = true;
    video.play().catch(() => {});
    document.getElementById("unmute").hidden = false;
  });
}

function hangup() {
  send({ type: "hangup", call_id: consult.callId });
  end("ended", "you hung up");
}

function end(state, message) {
  teardown();
  setState(state, message);
}

function teardown() {
  for (const t of timers) clearInterval(t);
  timers = [];
  if (pc) { pc.close(); pc = null; }
  if (local) { for (const track of local.getTracks()) track.stop(); local = null; }
  if (socket) { const ws = socket; socket = null; ws.close(); }
  document.getElementById("unmute").hidden = true;
}

// --- quality -------------------------------------------------------------------------------

async function measure() {
  if (!pc) return;
  const report = await pc.getStats();
  const stats = {};
  let pairId = null;
  for (const s of report.values()) {
    if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  }
  for (const s of report.values()) {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      if (s.frameWidth) stats.width = s.frameWidth;
      if (s.frameHeight) stats.height = s.frameHeight;
      if (s.framesPerSecond !== undefined) stats.fps = s.framesPerSecond;
      stats.frames_decoded = s.framesDecoded || 0;
      stats.packets_lost = Math.max(0, s.packetsLost || 0);
      stats.packets_received = s.packetsReceived || 0;
    }
    const selected = pairId ? s.id === pairId : s.nominated && s.state === "succeeded";
    if (s.type === "candidate-pair" && selected && s.currentRoundTripTime !== undefined) {
      stats.rtt_s = s.currentRoundTripTime;
    }
  }
  const video = document.getElementById("remote");
  consult.framesDecoded = stats.frames_decoded || 0;
  consult.width = video.videoWidth;
  consult.height = video.videoHeight;
  showQuality(1, stats);
  send({ type: "stats", stats });
}

function showQuality(column, s) {
  const rows = document.querySelectorAll("#quality tbody tr");
  const cell = (key) => [...rows].find((r) => r.dataset.key === key).children[column];
  const loss = s.loss !== undefined ? s.loss
    : s.packets_received ? s.packets_lost / (s.packets_lost + s.packets_received) : undefined;
  cell("resolution").textContent = s.width ? `${s.width}×${s.height}` : "—";
  cell("fps").textContent = s.fps !== undefined ? `${s.fps.toFixed(1)} /s` : "—";
  cell("rtt").textContent = s.rtt_s !== undefined ? `${(s.rtt_s * 1000).toFixed(0)} ms` : "—";
  cell("loss").textContent = loss !== undefined ? `${(loss * 100).toFixed(1)} %` : "—";
  cell("frames").textContent = s.frames_decoded !== undefined ? String(s.frames_decoded) : "—";
}

// --- the alarm and the waveforms beside the call --------------------------------------------

async function showAlarm() {
  const box = document.getElementById("alarm");
  const r = await eicu.api(`/api/alarms?bed=${encodeURIComponent(bedId)}`);
  if (!r.ok) {
    box.replaceChildren(eicu.el("span", { class: "missing" },
      r.status === 503 ? "this engine runs no alarm service" : `alarms unavailable (${r.status})`));
    return;
  }
  const data = await r.json();
  const live = alarmId ? data.alarms.find((a) => a.alarm_id === alarmId) : null;
  if (live) {
    box.replaceChildren(eicu.el("div", { id: "the-alarm", "data-alarm-id": live.alarm_id },
      eicuAlarms.chip(live), " ", live.state,
      eicu.el("div", { class: "meta" }, `since ${eicuAlarms.time(live.started_us)}`,
        live.value !== null ? ` · value ${live.value}` : "", live.detail ? ` · ${live.detail}` : "",
        live.acknowledged_by ? ` · acknowledged by ${live.acknowledged_by}` : "")));
    return;
  }
  const past = alarmId ? data.history.find((e) => e.alarm_id === alarmId) : null;
  if (past) {
    box.replaceChildren(eicu.el("div", { id: "the-alarm", "data-alarm-id": past.alarm_id },
      eicu.el("span", { class: `alarm alarm-${past.priority} acked` }, past.kind), ` ${past.state}`,
      eicu.el("div", { class: "meta" }, `last change ${eicuAlarms.time(past.time_us)} (${past.actor})`)));
    return;
  }
  const others = data.alarms.map((a) => eicu.el("div", {}, eicuAlarms.chip(a), ` ${a.state}`));
  box.replaceChildren(eicu.el("div", { class: "missing" },
    alarmId ? "the alarm is no longer live" : "called from the bed view"), ...others);
}

async function showStrips() {
  const info = document.getElementById("strips-info");
  const r = await eicu.api(bedApi);
  if (!r.ok) { info.textContent = r.status === 404 ? "no such bed in the engine" : `error ${r.status}`; return; }
  const bed = await r.json();
  const end = bed.device_now_us;
  const start = end - STRIP_S * 1e6;
  const box = document.getElementById("strips");
  for (const signal of STRIP_SIGNALS.filter((s) => s in bed.signals)) {
    const w = await eicu.api(`${bedApi}/waveform?signal=${signal}&start_us=${start}&seconds=${STRIP_S}`);
    if (!w.ok) { info.textContent = `cannot load ${signal}: ${w.status}`; continue; }
    const data = await w.json();
    let canvas = document.getElementById(`strip-${signal}`);
    if (!canvas) {
      canvas = eicu.el("canvas", { id: `strip-${signal}`, "data-signal": signal, width: 1200, height: 90 });
      box.append(canvas);
    }
    drawSeries(canvas, [start, ...data.t_us, end], [null, ...data.values, null],
      `${signal} ${data.unit}  ${data.values.length} samples`);
  }
  info.textContent = `until ${eicu.timeText(end)} (bed clock)`;
}

document.getElementById("hangup").addEventListener("click", hangup);
document.getElementById("call-again").addEventListener("click", call);
document.getElementById("unmute").addEventListener("click", () => {
  const video = document.getElementById("remote");
  video.muted = false;
  video.play().catch(() => {});
  document.getElementById("unmute").hidden = true;
});
window.addEventListener("pagehide", () => { send({ type: "hangup", call_id: consult.callId }); teardown(); });

eicu.loadMe().then(() => {
  if (!(eicu.me.permissions || []).includes("consult")) {
    setState("refused", `the ${eicu.me.role} role may not call a bed`);
  } else {
    call();
  }
  showAlarm().catch(() => {});
  showStrips().catch(() => {});
  setInterval(() => showAlarm().catch(() => {}), 2000);
  setInterval(() => showStrips().catch(() => {}), 5000);
});
