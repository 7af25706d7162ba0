// Alarms in the browser: the alarm tones of every priority, the alarm feed
// polled from /api/alarms, and the chips and buttons the census and the bed view show.
"use strict";

// The alarm tones. The auditory alarm signals of IEC 60601-1-8 (Table 3): a high-priority burst
// is 10 pulses (3 + 2, a pause, 3 + 2), a medium-priority burst 3 pulses, a low-priority one 2;
// pulses 150 ms (high) or 200 ms long, square waves (a fundamental within 150-1000 Hz and its
// harmonics); bursts repeat every 2.5-15 s (high), 2.5-30 s (medium), more than 15 s apart
// (low). The tone is that of the first sounding alarm in the server's order (the most urgent:
// priority, then clinical severity). window.eicuAlarmTone shows its state: {enabled, playing,
// pattern, alarm}.
//
// Browsers start audio only after a user gesture. The sound button always shows the state
// ("SOUND OFF" while muted); a user who turned sound on has it turned on again by their first
// click or key press on any page (remembered per user in this browser).
const eicuTone = {
  PATTERNS: {
    high: { hz: 880, pulse_s: 0.15, at_s: [0, 0.25, 0.5, 0.9, 1.15, 2.0, 2.25, 2.5, 2.9, 3.15],
            every_s: 8.0 },
    medium: { hz: 660, pulse_s: 0.2, at_s: [0, 0.3, 0.6], every_s: 10.0 },
    low: { hz: 440, pulse_s: 0.2, at_s: [0, 0.35], every_s: 20.0 },
  },
  ctx: null,
  osc: null,
  gain: null,
  timer: null,
  want: null,  // the priority whose pattern should play, or null
  state: { enabled: false, playing: false, pattern: null, alarm: null },

  storeKey() {
    return eicu.me ? `eicu.sound.${eicu.me.name}` : null;
  },

  async enable(on) {
    if (on) {
      if (!eicuTone.ctx) eicuTone.ctx = new AudioContext();
      await eicuTone.ctx.resume();
      eicuTone.state.enabled = eicuTone.ctx.state === "running";
      if (eicuTone.want) eicuTone.start(eicuTone.want);
    } else {
      eicuTone.state.enabled = false;
      eicuTone.stop();
    }
    const key = eicuTone.storeKey();
    if (key) localStorage.setItem(key, on ? "on" : "off");
    eicuTone.label();
  },

  toggle() {
    return eicuTone.enable(!eicuTone.state.enabled);
  },

  // The user's choice from an earlier visit: "on" is restored by their first gesture here.
  restore() {
    const key = eicuTone.storeKey();
    if (!key || localStorage.getItem(key) !== "on" || eicuTone.state.enabled) return;
    const again = (event) => {
      if (event.target && event.target.id === "sound") return;  // the button does it itself
      removeEventListener("pointerdown", again, true);
      removeEventListener("keydown", again, true);
      if (!eicuTone.state.enabled) eicuTone.enable(true);
    };
    addEventListener("pointerdown", again, true);
    addEventListener("keydown", again, true);
    eicuTone.label();
  },

  label() {
    const b = document.getElementById("sound");
    if (!b) return;
    const key = eicuTone.storeKey();
    const wanted = key && localStorage.getItem(key) === "on";
    b.textContent = eicuTone.state.enabled ? "sound on"
      : wanted ? "SOUND OFF: click anywhere to resume" : "SOUND OFF";
    b.setAttribute("aria-pressed", String(eicuTone.state.enabled));
    b.classList.toggle("sound-on", eicuTone.state.enabled);
    b.classList.toggle("sound-off", !eicuTone.state.enabled);
    const a = eicuTone.state.alarm;
    b.title = a ? `sounding for ${a.kind} at ${a.bed} (${a.priority} priority)` : "";
  },

  // The alarm the tone is for (null: silence). Called with every alarm update.
  set(alarm) {
    eicuTone.state.alarm = alarm ? { bed: alarm.bed, kind: alarm.kind, priority: alarm.priority } : null;
    const want = alarm && eicuTone.PATTERNS[alarm.priority] ? alarm.priority : null;
    eicuTone.want = want;
    eicuTone.label();
    if (!eicuTone.state.enabled) return;
    if (want !== eicuTone.state.pattern) {
      eicuTone.stop();
      if (want) eicuTone.start(want);
    }
  },

  start(priority) {
    const ctx = eicuTone.ctx;
    const p = eicuTone.PATTERNS[priority];
    eicuTone.osc = ctx.createOscillator();
    eicuTone.gain = ctx.createGain();
    eicuTone.osc.type = "square";
    eicuTone.osc.frequency.value = p.hz;
    eicuTone.gain.gain.value = 0;
    eicuTone.osc.connect(eicuTone.gain).connect(ctx.destination);
    eicuTone.osc.start();
    const burst = () => {
      const t = ctx.currentTime + 0.05;
      const g = eicuTone.gain.gain;
      for (const at of p.at_s) {
        g.setValueAtTime(0.15, t + at);
        g.setValueAtTime(0, t + at + p.pulse_s);
      }
    };
    burst();
    eicuTone.timer = setInterval(burst, p.every_s * 1000);
    eicuTone.state.playing = true;
    eicuTone.state.pattern = priority;
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
    eicuTone.state.pattern = null;
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
  // With ``history`` the unit's answer (every alarm of the user's sites, with the recent events)
  // goes to ``onUnit``.
  poll({ bed = null, onBed = null, onFeed = null, history = false, onUnit = null } = {}) {
    const sound = document.getElementById("sound");
    if (sound) {
      sound.addEventListener("click", eicuTone.toggle);
      eicuTone.label();
    }
    eicuTone.restore();
    const once = async () => {
      try {
        const all = await eicu.api(history ? "/api/alarms?history=true" : "/api/alarms");
        if (!all.ok) {
          const detail = (await all.json().catch(() => ({}))).detail || `error ${all.status}`;
          throw new Error(detail);
        }
        const data = await all.json();
        // The server lists the alarms most urgent first: the tone is for the first sounding one.
        const first = data.alarms.find((a) => a.sounding);
        eicuTone.set(first || null);
        eicuAlarms.counts(data.alarms);
        if (onUnit) onUnit(data);
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

  // The live alarms of the user's sites per priority, in the header (where the page has a place
  // for them): "2 high · 1 medium · 0 low"; those nobody has acknowledged counted apart.
  counts(alarms) {
    const place = document.getElementById("alarm-counts");
    if (!place) return;
    const chips = ["high", "medium", "low"].map((p) => {
      const live = alarms.filter((a) => a.priority === p);
      const open = live.filter((a) => a.state !== "acknowledged").length;
      const cls = `alarm alarm-${p}${open ? "" : " acked"} alarm-count`;
      return eicu.el("span", { class: cls, "data-priority": p, "data-count": String(live.length),
        "data-unacknowledged": String(open), title: `${open} not acknowledged` },
        `${live.length} ${p}`);
    });
    place.replaceChildren(...chips);
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
    return eicu.timeText(us);
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
