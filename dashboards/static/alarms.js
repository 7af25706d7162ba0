// Alarms in the browser: the audible tone for sounding high-priority alarms, the alarm feed
// polled from /api/alarms, and the chips and buttons the census and the bed view show.
"use strict";

// The tone. Browsers only start audio after a user gesture, so it plays once the user turns
// sound on with the "sound" toggle. window.eicuAlarmTone shows its state: {enabled, playing,
// alarm}, where alarm is the alarm the tone sounds for ({bed, kind, priority}, or null): the
// first sounding alarm in the server's order (the most urgent: priority, then clinical severity).
const eicuTone = {
  ctx: null,
  osc: null,
  gain: null,
  timer: null,
  want: false,
  state: { enabled: false, playing: false, alarm: null },

  async toggle() {
    if (eicuTone.state.enabled) {
      eicuTone.state.enabled = false;
      eicuTone.stop();
    } else {
      if (!eicuTone.ctx) eicuTone.ctx = new AudioContext();
      await eicuTone.ctx.resume();
      eicuTone.state.enabled = eicuTone.ctx.state === "running";
      if (eicuTone.want) eicuTone.start();
    }
    eicuTone.label();
  },

  label() {
    const b = document.getElementById("sound");
    if (!b) return;
    b.textContent = eicuTone.state.enabled ? "sound on" : "enable sound";
    b.setAttribute("aria-pressed", String(eicuTone.state.enabled));
    b.classList.toggle("sound-on", eicuTone.state.enabled);
    b.classList.toggle("sound-off", !eicuTone.state.enabled);
    const a = eicuTone.state.alarm;
    b.title = a ? `sounding for ${a.kind} at ${a.bed}` : "";
  },

  // The alarm the tone is for (null: silence). Called with every alarm update.
  set(alarm) {
    const want = Boolean(alarm);
    eicuTone.state.alarm = alarm ? { bed: alarm.bed, kind: alarm.kind, priority: alarm.priority } : null;
    eicuTone.label();
    eicuTone.want = want;
    if (want && eicuTone.state.enabled && !eicuTone.state.playing) eicuTone.start();
    if (!want && eicuTone.state.playing) eicuTone.stop();
  },

  start() {
    const ctx = eicuTone.ctx;
    eicuTone.osc = ctx.createOscillator();
    eicuTone.gain = ctx.createGain();
    eicuTone.osc.type = "square";
    eicuTone.osc.frequency.value = 880;
    eicuTone.gain.gain.value = 0;
    eicuTone.osc.connect(eicuTone.gain).connect(ctx.destination);
    eicuTone.osc.start();
    // A high-priority burst pattern: 3 + 2 pulses, repeated every 2.5 s.
    const burst = () => {
      const t = ctx.currentTime + 0.05;
      const g = eicuTone.gain.gain;
      for (const at of [0, 0.25, 0.5, 0.9, 1.15]) {
        g.setValueAtTime(0.15, t + at);
        g.setValueAtTime(0, t + at + 0.15);
      }
    };
    burst();
    eicuTone.timer = setInterval(burst, 2500);
    eicuTone.state.playing = true;
  },

  stop() {
    clearInterval(eicuTone.timer);
    eicuTone.timer = null;
    if (eicuTone.osc) {
      eicuTone.osc.stop();
      eicuTone.osc.disconnect();
    }
    eicuTone.osc = null;
    eicuTone.gain = null;
    eicuTone.state.playing = false;
  },
};
window.eicuAlarmTone = eicuTone.state;

const eicuAlarms = {
  PERIOD_MS: 1000,

  canRespond() {
    return !!eicu.me && eicu.me.permissions.includes("respond");
  },

  // Poll the alarms every second: all beds for the tone, and one bed's (with its history) for
  // ``onBed`` when ``bed`` is given. ``onFeed(ok, message)`` learns whether the feed is live.
  poll({ bed = null, onBed = null, onFeed = null } = {}) {
    const sound = document.getElementById("sound");
    if (sound) {
      sound.addEventListener("click", eicuTone.toggle);
      eicuTone.label();
    }
    const once = async () => {
      try {
        const all = await eicu.api("/api/alarms");
        if (!all.ok) {
          const detail = (await all.json().catch(() => ({}))).detail || `error ${all.status}`;
          throw new Error(detail);
        }
        const data = await all.json();
        // The server lists the alarms most urgent first: the tone is for the first sounding one.
        const first = data.alarms.find((a) => a.sounding);
        eicuTone.set(first && first.priority === "high" ? first : null);
        if (bed && onBed) {
          const r = await eicu.api(`/api/alarms?bed=${encodeURIComponent(bed)}`);
          if (!r.ok) throw new Error(`error ${r.status}`);
          onBed(await r.json());
        }
        if (onFeed) onFeed(true, "");
      } catch (err) {
        eicuTone.set(null);  // the feed is lost: say so rather than sound on old data
        if (onFeed) onFeed(false, err.message);
      }
    };
    once();
    const timer = setInterval(once, eicuAlarms.PERIOD_MS);
    return { refresh: once, stop: () => clearInterval(timer) };
  },

  // A chip for one alarm: coloured by priority, marked when acknowledged or paused.
  chip(a) {
    const acked = a.state === "acknowledged";
    const paused = !acked && !a.sounding && a.audio_paused_until_us !== null;
    const cls = `alarm alarm-${a.priority}${acked ? " acked" : ""}${paused ? " paused" : ""}`;
    const mark = acked ? " ✓" : paused ? " (paused)" : a.state === "latched" ? " (latched)" : "";
    const title = acked ? `acknowledged by ${a.acknowledged_by}` : `${a.priority} priority, ${a.state}`;
    return eicu.el("span", { class: cls, title, "data-priority": a.priority, "data-state": a.state },
      `${a.kind}${mark}`);
  },

  time(us) {
    return us === null || us === undefined ? "—" : new Date(us / 1000).toLocaleTimeString();
  },

  async post(path, body) {
    const r = await eicu.api(path, { method: "POST", body });
    if (!r.ok) {
      const detail = (await r.json().catch(() => ({}))).detail || `error ${r.status}`;
      throw new Error(detail);
    }
    return r.json();
  },
};
