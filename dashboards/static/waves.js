// Waveform traces on canvas, drawn as a clinical monitor draws them: a 25 mm/s sweep and an ECG
// gain of 10 mm/mV at the screen's real scale (CSS pixels per mm: a setting, see eicuPaper), on a
// 1 mm / 5 mm grid with a 1 mV calibration pulse (IEC 60601-2-27's standard sweep speed,
// sensitivity and calibration), arterial pressures on a mmHg scale, plethysmogram and
// respiration scaled to fit; played out at each signal's own sample rate.
"use strict";

const PAPER_MM_PER_S = 25;   // sweep speed
const ECG_MM_PER_MV = 10;    // ECG sensitivity
const MARGIN_MM = 10;        // left of the sweep: the calibration pulse
const LAG_S = 0.6;           // play-out delay that absorbs frame-sized arrival jitter
const STALL_S = 3;           // no new samples for this long: the trace says so
const PRESSURE_SCALES = [40, 80, 160, 240, 320];  // mmHg: the smallest that holds the trace
const GRID_MINOR = "rgb(22, 38, 26)", GRID_MAJOR = "rgb(44, 80, 52)";

// The screen's scale: CSS pixels per millimetre. 96 CSS px per inch is what browsers assume;
// a user who measures the ruler on the bed view with a real one sets the true figure, kept in
// this browser.
const eicuPaper = {
  DEFAULT_PX_PER_MM: 96 / 25.4,
  pxPerMm() {
    try {
      const v = Number(localStorage.getItem("eicu.pxPerMm"));
      if (v >= 1 && v <= 20) return v;
    } catch (e) { /* no storage: the default */ }
    return eicuPaper.DEFAULT_PX_PER_MM;
  },
  set(v) {
    if (!(v >= 1 && v <= 20)) throw new RangeError(`px per mm must be 1-20, got ${v}`);
    try { localStorage.setItem("eicu.pxPerMm", String(v)); } catch (e) { /* kept for this page */ }
  },
};

// The name a clinician reads for a signal: "II", "V", "aVR", "Pleth", "ABP", "Resp".
function signalLabel(signal) {
  const names = { PLETH: "Pleth", RESP: "Resp", ABP: "ABP", CVP: "CVP", PAP: "PAP", ICP: "ICP",
    ECG_AVR: "aVR", ECG_AVL: "aVL", ECG_AVF: "aVF", ECG_MCL1: "MCL1" };
  if (signal in names) return names[signal];
  if (signal.startsWith("ECG_")) return signal.slice(4);
  return signal;
}

// Seconds from a live sample's device time to its pixel (read by benchmarks/dashboard.py).
const waveToPixel = [];
window.eicuWaveToPixel = waveToPixel;

// Seconds of signal a canvas ``widthPx`` device pixels wide holds at 25 mm/s.
function paperWindowS(widthPx, pxPerMm, dpr) {
  const mm = pxPerMm * dpr;
  return (widthPx - Math.round(MARGIN_MM * mm)) / (PAPER_MM_PER_S * mm);
}

function isPressure(signal) { return ["ABP", "CVP", "PAP", "ICP"].includes(signal); }

class Trace {
  // options: pxPerMm (CSS px per mm; default the setting), dpr (device pixels per CSS pixel)
  constructor(canvas, signal, fs, options = {}) {
    this.canvas = canvas; this.signal = signal; this.fs = fs;
    this.pxPerMm = options.pxPerMm || eicuPaper.pxPerMm();
    this.dpr = options.dpr || window.devicePixelRatio || 1;
    this.cap = Math.ceil(fs * (this.windowS() + 4));
    this.buf = new Float32Array(this.cap).fill(NaN);
    this.recv = 0;            // samples received
    this.play = null;         // play-out position in samples (fractional)
    this.lastArrival = 0;
    this.level = null;        // ECG baseline, pleth/resp range: eased so the trace does not jump
    this.lo = null; this.hi = null;
    this.marks = [];          // beats and rhythm changes: {i (sample number), kind, label, state}
    this.tLastUs = null;      // device time of the newest sample received
    this.arrivals = [];       // [samples received, device time of the last]: per chunk
    this.deviceOffsetUs = null;  // the bed's device clock less this browser's clock
    const d = canvas.dataset;
    d.label = signalLabel(signal); d.speed = `${PAPER_MM_PER_S} mm/s`; d.pxPerMm = String(this.pxPerMm);
  }

  mm() { return this.pxPerMm * this.dpr; }  // device pixels per millimetre
  sweepX0() { return Math.round(MARGIN_MM * this.mm()); }
  windowS() { return paperWindowS(this.canvas.width, this.pxPerMm, this.dpr); }

  push(values, gap, tLastUs) {
    if (gap) for (let i = 0; i < Math.round(this.fs * 0.2); i++) this.buf[this.recv++ % this.cap] = NaN;
    for (const v of values) this.buf[this.recv++ % this.cap] = v === null ? NaN : v;
    this.lastArrival = performance.now();
    if (tLastUs !== undefined) {
      this.tLastUs = tLastUs;
      this.arrivals.push([this.recv, tLastUs]);  // the sample drawn at recv - 1 came at tLastUs
      if (this.arrivals.length > 100) this.arrivals.shift();
    }
  }

  // The chunks whose last sample the sweep has just drawn: seconds from that sample's device
  // time to its pixel (``deviceOffsetUs``: the bed's device clock less this browser's clock).
  drawn(end) {
    if (this.deviceOffsetUs === null) return;
    const nowUs = Date.now() * 1000 + this.deviceOffsetUs;
    while (this.arrivals.length && this.arrivals[0][0] <= end) {
      waveToPixel.push((nowUs - this.arrivals.shift()[1]) / 1e6);
    }
    if (waveToPixel.length > 5000) waveToPixel.splice(0, waveToPixel.length - 5000);
  }

  // A mark from the engine, placed on the sample at its device time.
  mark(m) {
    if (this.tLastUs === null) return;
    const i = this.recv - 1 - Math.round(((this.tLastUs - m.t_us) * this.fs) / 1e6);
    const oldest = this.recv - this.cap;
    this.marks = this.marks.filter((k) => k.i >= oldest);
    if (i >= oldest && i < this.recv) this.marks.push({ i, kind: m.kind, label: m.label, state: m.state });
  }

  drawGrid(ctx, w, h) {
    const mm = this.mm(), x0 = this.sweepX0(), line = Math.max(1, Math.round(this.dpr));
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
    for (const major of [false, true]) {  // majors over minors
      ctx.fillStyle = major ? GRID_MAJOR : GRID_MINOR;
      for (let k = 0; x0 + k * mm < w; k++) {
        if ((k % 5 === 0) === major) ctx.fillRect(Math.round(x0 + k * mm), 0, line, h);
      }
      for (let k = 0; h - 1 - k * mm >= 0; k++) {
        if ((k % 5 === 0) === major) ctx.fillRect(x0, Math.round(h - 1 - k * mm), w - x0, line);
      }
    }
  }

  // The vertical scale of the samples in view: y(value) in device pixels.
  scale(lo, hi, h) {
    const mm = this.mm(), top = 18 * this.dpr, bottom = h - 4 * this.dpr;
    const d = this.canvas.dataset;
    if (this.signal.startsWith("ECG")) {
      const mid = (lo + hi) / 2;  // the level the trace is drawn around, eased
      this.level = this.level === null ? mid : this.level + 0.1 * (mid - this.level);
      const y0 = (top + bottom) / 2, level = this.level;
      d.gain = `${ECG_MM_PER_MV} mm/mV`;
      return { y: (v) => y0 - (v - level) * ECG_MM_PER_MV * mm, y0 };
    }
    if (isPressure(this.signal)) {
      const full = PRESSURE_SCALES.find((s) => s >= hi) || PRESSURE_SCALES[PRESSURE_SCALES.length - 1];
      d.gain = `0–${full} mmHg`; d.scaleTop = String(top); d.scaleBottom = String(bottom);
      return { y: (v) => bottom - (v / full) * (bottom - top), full, top, bottom };
    }
    const span = Math.max(hi - lo, this.signal === "PLETH" ? 0.2 : 1e-6), mid = (hi + lo) / 2;
    this.lo = this.lo === null ? mid - span / 2 : this.lo + 0.1 * (mid - span / 2 - this.lo);
    this.hi = this.hi === null ? mid + span / 2 : this.hi + 0.1 * (mid + span / 2 - this.hi);
    d.gain = "auto";
    const lo2 = this.lo, range = this.hi - this.lo || 1;
    return { y: (v) => bottom - ((v - lo2) / range) * (bottom - top) };
  }

  draw(dt) {
    const c = this.canvas, ctx = c.getContext("2d");
    const w = c.width, h = c.height, fs = this.fs, mm = this.mm(), x0 = this.sweepX0();
    if (this.play === null) this.play = Math.max(0, this.recv - fs * LAG_S);
    this.play += fs * dt;
    if (this.play > this.recv) this.play = this.recv;
    if (this.recv - this.play > fs * (LAG_S + 1.5)) this.play = this.recv - fs * LAG_S;
    const n = Math.round(fs * this.windowS()), end = Math.floor(this.play), start = end - n;
    const oldest = this.recv - this.cap;
    let lo = Infinity, hi = -Infinity;
    for (let i = Math.max(start, oldest, 0); i < end; i++) {
      const v = this.buf[i % this.cap];
      if (v < lo) lo = v; if (v > hi) hi = v;
    }
    this.drawGrid(ctx, w, h);
    const font = `${Math.round(12 * this.dpr)}px system-ui`;
    ctx.font = font;
    const stalled = performance.now() - this.lastArrival > STALL_S * 1000;
    if (!isFinite(lo)) {
      this.label(ctx, "");
      ctx.fillStyle = "#d4a72c"; ctx.fillText("no signal", w / 2 - 30 * this.dpr, h / 2);
      return;
    }
    const s = this.scale(lo, hi, h);
    if (s.y0 !== undefined) this.drawCalibration(ctx, s.y0);
    if (s.full !== undefined) this.drawPressureScale(ctx, s, w);
    this.label(ctx, c.dataset.gain === "auto" ? "" : c.dataset.gain);
    const x = (i) => x0 + ((i - start) / fs) * PAPER_MM_PER_S * mm;
    ctx.strokeStyle = this.colour(); ctx.lineWidth = 1.25 * this.dpr; ctx.beginPath();
    let pen = false;
    for (let i = Math.max(start, 0); i < end; i++) {
      const v = i < oldest ? NaN : this.buf[i % this.cap];
      if (Number.isNaN(v)) { pen = false; continue; }
      const y = Math.min(h, Math.max(0, s.y(v)));
      if (pen) ctx.lineTo(x(i), y); else ctx.moveTo(x(i), y);
      pen = true;
    }
    ctx.stroke();
    this.drawn(end);
    this.drawMarks(ctx, start, end, x, h);
    if (stalled) { ctx.fillStyle = "#d4a72c"; ctx.font = font; ctx.fillText("STALE: no new samples", w - 170 * this.dpr, 14 * this.dpr); }
  }

  label(ctx, gain) {
    ctx.fillStyle = "#7d8590";
    const text = [signalLabel(this.signal), gain, `${PAPER_MM_PER_S} mm/s`].filter(Boolean).join("   ");
    ctx.fillText(text, this.sweepX0() + 4 * this.dpr, 13 * this.dpr);
  }

  // 1 mV for 0.2 s, from the trace's baseline, left of the sweep.
  drawCalibration(ctx, y0) {
    const mm = this.mm(), t = Math.max(1, Math.round(this.dpr));  // crisp lines, t pixels
    const x1 = Math.round(2 * mm), x2 = Math.round(2 * mm + 0.2 * PAPER_MM_PER_S * mm);
    const base = Math.round(y0), top = Math.round(y0 - ECG_MM_PER_MV * mm);
    ctx.fillStyle = "#c9d1d9";
    ctx.fillRect(Math.round(x1 - mm), base, x1 - Math.round(x1 - mm), t);  // baseline in
    ctx.fillRect(x1, top, t, base - top + t);                             // 1 mV up
    ctx.fillRect(x1, top, x2 - x1 + t, t);                                // 0.2 s
    ctx.fillRect(x2, top, t, base - top + t);                             // down
    ctx.fillRect(x2, base, Math.round(mm), t);                            // baseline out
  }

  // Reference lines at 0, half and full scale, labelled in mmHg, left of the sweep.
  drawPressureScale(ctx, s, w) {
    ctx.strokeStyle = "#6e7681"; ctx.fillStyle = "#6e7681"; ctx.lineWidth = this.dpr;
    ctx.setLineDash([3 * this.dpr, 4 * this.dpr]);
    ctx.font = `${Math.round(10 * this.dpr)}px system-ui`;
    for (const v of [0, s.full / 2, s.full]) {
      const y = Math.round(s.y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(this.sweepX0(), y); ctx.lineTo(w, y); ctx.stroke();
      ctx.fillText(String(v), 2 * this.dpr, Math.min(Math.max(y + 4 * this.dpr, 10 * this.dpr), s.bottom));
    }
    ctx.setLineDash([]);
  }

  drawMarks(ctx, start, end, x, h) {
    let shown = 0;
    const dpr = this.dpr;
    ctx.font = `${Math.round(11 * dpr)}px system-ui`;
    for (const m of this.marks) {
      if (m.i < start || m.i >= end) continue;
      const at = x(m.i);
      shown++;
      if (m.kind === "rhythm") {  // a rhythm starts or ends: a dashed line and its name
        ctx.strokeStyle = "#d4a72c"; ctx.setLineDash([4 * dpr, 3 * dpr]); ctx.beginPath();
        ctx.moveTo(at, 18 * dpr); ctx.lineTo(at, h); ctx.stroke(); ctx.setLineDash([]);
        ctx.fillStyle = "#d4a72c";
        ctx.fillText(m.state === "end" ? `${m.label} end` : m.label, at + 3 * dpr, 28 * dpr);
      } else if (m.label === "P") {  // a pulse: a small tick at the foot of the trace
        ctx.fillStyle = "#7d8590"; ctx.fillRect(at - dpr, h - 6 * dpr, 2 * dpr, 6 * dpr);
      } else {  // a QRS: N, or V (ventricular) in orange
        ctx.fillStyle = m.label === "V" ? "#f0883e" : "#7d8590";
        ctx.fillRect(at - 0.5 * dpr, 18 * dpr, dpr, 5 * dpr);
        ctx.fillText(m.label, at - 3 * dpr, 34 * dpr);
      }
    }
    this.canvas.dataset.marks = String(shown);
  }

  colour() {
    return this.signal.startsWith("ECG") ? "#3fb950" : isPressure(this.signal) ? "#f85149" : "#58a6ff";
  }
}

// Time ticks for a span [t0, t1] (µs): every 10 min, 1 h, 2 h, 6 h or 1 day, about 4-8 of them,
// labelled on the 24-hour clock (with the day for spans over a day).
function timeTicks(t0, t1) {
  const steps = [600, 1800, 3600, 7200, 21600, 86400].map((s) => s * 1e6);
  const step = steps.find((s) => (t1 - t0) / s <= 8) || steps[steps.length - 1];
  const zone = new Date(t0 / 1000).getTimezoneOffset() * 60e6;  // ticks on local whole hours
  const ticks = [];
  for (let t = Math.ceil((t0 - zone) / step) * step + zone; t <= t1; t += step) {
    const d = new Date(t / 1000);
    const hm = eicu.timeText(t, false);
    const day = new Intl.DateTimeFormat(eicu.locale(), { day: "numeric", month: "numeric" }).format(d);
    ticks.push([t, t1 - t0 > 86400e6 ? `${day} ${hm}` : hm]);
  }
  return ticks;
}

function drawSeries(canvas, t, values, label, ranges = null, options = {}) {
  // a static trace: times in µs, values with nulls as gaps; ranges: [min, max] per point;
  // options.axis: a time axis along the foot; options.alarms: alarm spans to mark
  // ({start_us, end_us, priority, kind})
  const ctx = canvas.getContext("2d"), w = canvas.width, full = canvas.height;
  const h = options.axis ? full - 14 : full;
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, full);
  ctx.fillStyle = "#7d8590"; ctx.font = "12px system-ui"; ctx.fillText(label, 6, 14);
  const t0 = t[0], t1 = t[t.length - 1] || t0 + 1;
  const x = (ti) => ((ti - t0) / (t1 - t0 || 1)) * w;
  if (options.axis) {  // the time axis, its ticks on the 24-hour clock
    const ticks = timeTicks(t0, t1);
    ctx.font = "10px system-ui";
    for (const [tt, text] of ticks) {
      const tx = Math.round(x(tt)) + 0.5;
      ctx.fillStyle = "#30363d"; ctx.fillRect(tx, 0, 1, h);
      ctx.fillStyle = "#7d8590"; ctx.fillText(text, Math.min(w - 40, Math.max(0, tx - 14)), full - 3);
    }
    canvas.dataset.ticks = String(ticks.length);
    ctx.font = "12px system-ui"; ctx.fillStyle = "#7d8590"; ctx.fillText(label, 6, 14);
  }
  if (options.alarms) {  // each alarm: a band in its priority's colour (IEC 60601-1-8) over its span
    const colours = { high: "209,36,47", medium: "245,196,0", low: "0,184,212" };
    for (const a of options.alarms) {
      const a0 = Math.max(0, x(a.start_us)), a1 = a.end_us === null ? w : Math.min(w, x(a.end_us));
      const rgb = colours[a.priority] || colours.low;
      ctx.fillStyle = `rgba(${rgb},0.16)`; ctx.fillRect(a0, 0, Math.max(2, a1 - a0), h);
      ctx.fillStyle = `rgb(${rgb})`; ctx.fillRect(a0, 0, Math.max(2, a1 - a0), 3);
      ctx.fillRect(Math.round(a0), 0, 1, h);
    }
    canvas.dataset.alarms = String(options.alarms.length);
  }
  const finite = values.filter((v) => v !== null);
  if (!finite.length) { ctx.fillStyle = "#d4a72c"; ctx.fillText("no data", w / 2 - 20, h / 2); return; }
  let lo = Math.min(...finite), hi = Math.max(...finite);
  if (ranges) {
    for (const r of ranges) if (r && r[0] !== null && r[1] !== null) { lo = Math.min(lo, r[0]); hi = Math.max(hi, r[1]); }
  }
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const y = (v) => h - 6 - ((v - lo) / (hi - lo)) * (h - 24);
  if (ranges) {  // the bucket's range as a faint bar behind its mean
    ctx.strokeStyle = "#1f4f2b"; ctx.lineWidth = 3; ctx.beginPath();
    for (let i = 0; i < t.length; i++) {
      const r = ranges[i];
      if (r && r[0] !== null && r[1] !== null) { ctx.moveTo(x(t[i]), y(r[0])); ctx.lineTo(x(t[i]), y(r[1])); }
    }
    ctx.stroke(); ctx.lineWidth = 1;
  }
  ctx.strokeStyle = "#3fb950"; ctx.beginPath();
  let pen = false, prev = null;
  const maxGap = ((t1 - t0) / Math.max(1, t.length)) * 5;
  for (let i = 0; i < t.length; i++) {
    const v = values[i];
    if (v === null || (prev !== null && t[i] - prev > maxGap)) pen = false;
    if (v !== null) { if (pen) ctx.lineTo(x(t[i]), y(v)); else ctx.moveTo(x(t[i]), y(v)); pen = true; }
    prev = t[i];
  }
  ctx.stroke();
  if (ranges) {  // trends: mark each bucket, so a lone one shows
    ctx.fillStyle = "#3fb950";
    for (let i = 0; i < t.length; i++) if (values[i] !== null) ctx.fillRect(x(t[i]) - 2, y(values[i]) - 2, 4, 4);
  }
  ctx.fillStyle = "#7d8590";
  ctx.fillText(`${lo.toFixed(1)} – ${hi.toFixed(1)}`, w - 110, 14);
}
