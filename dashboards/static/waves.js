// Waveform traces on canvas, played out at each signal's own sample rate.
"use strict";

const WINDOW_S = 6;      // seconds across the canvas
const LAG_S = 0.6;       // play-out delay that absorbs frame-sized arrival jitter
const STALL_S = 3;       // no new samples for this long: the trace says so

class Trace {
  constructor(canvas, signal, fs, unit) {
    this.canvas = canvas; this.signal = signal; this.fs = fs; this.unit = unit;
    this.cap = Math.ceil(fs * (WINDOW_S + 4));
    this.buf = new Float32Array(this.cap).fill(NaN);
    this.recv = 0;            // samples received
    this.play = null;         // play-out position in samples (fractional)
    this.lastArrival = 0;
    this.lo = null; this.hi = null;
    this.marks = [];          // beats and rhythm changes: {i (sample number), kind, label, state}
    this.tLastUs = null;      // device time of the newest sample received
  }

  push(values, gap, tLastUs) {
    if (gap) for (let i = 0; i < Math.round(this.fs * 0.2); i++) this.buf[this.recv++ % this.cap] = NaN;
    for (const v of values) this.buf[this.recv++ % this.cap] = v === null ? NaN : v;
    this.lastArrival = performance.now();
    if (tLastUs !== undefined) this.tLastUs = tLastUs;
  }

  // A mark from the engine, placed on the sample at its device time.
  mark(m) {
    if (this.tLastUs === null) return;
    const i = this.recv - 1 - Math.round(((this.tLastUs - m.t_us) * this.fs) / 1e6);
    const oldest = this.recv - this.cap;
    this.marks = this.marks.filter((k) => k.i >= oldest);
    if (i >= oldest && i < this.recv) this.marks.push({ i, kind: m.kind, label: m.label, state: m.state });
  }

  draw(dt) {
    const c = this.canvas, ctx = c.getContext("2d");
    const w = c.width, h = c.height, fs = this.fs;
    if (this.play === null) this.play = Math.max(0, this.recv - fs * LAG_S);
    this.play += fs * dt;
    if (this.play > this.recv) this.play = this.recv;
    if (this.recv - this.play > fs * (LAG_S + 1.5)) this.play = this.recv - fs * LAG_S;
    const n = Math.round(fs * WINDOW_S), end = Math.floor(this.play), start = end - n;
    const oldest = this.recv - this.cap;
    let lo = Infinity, hi = -Infinity;
    for (let i = Math.max(start, oldest, 0); i < end; i++) {
      const v = this.buf[i % this.cap];
      if (v < lo) lo = v; if (v > hi) hi = v;
    }
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
    ctx.fillStyle = "#7d8590"; ctx.font = "12px system-ui";
    ctx.fillText(`${this.signal}  ${fs} Hz  ${this.unit}`, 6, 14);
    const stalled = performance.now() - this.lastArrival > STALL_S * 1000;
    if (!isFinite(lo)) {
      ctx.fillStyle = "#d4a72c"; ctx.fillText("no signal", w / 2 - 30, h / 2);
      return;
    }
    const span = Math.max(hi - lo, this.minSpan());
    const mid = (hi + lo) / 2;
    // ease the vertical range so the trace does not jump
    this.lo = this.lo === null ? mid - span / 2 : this.lo + 0.1 * (mid - span / 2 - this.lo);
    this.hi = this.hi === null ? mid + span / 2 : this.hi + 0.1 * (mid + span / 2 - this.hi);
    const y = (v) => h - 6 - ((v - this.lo) / (this.hi - this.lo || 1)) * (h - 24);
    ctx.strokeStyle = this.colour(); ctx.lineWidth = 1.5; ctx.beginPath();
    let pen = false;
    for (let i = Math.max(start, 0); i < end; i++) {
      const v = i < oldest ? NaN : this.buf[i % this.cap];
      const x = ((i - start) / n) * w;
      if (Number.isNaN(v)) { pen = false; continue; }
      if (pen) ctx.lineTo(x, y(v)); else ctx.moveTo(x, y(v));
      pen = true;
    }
    ctx.stroke();
    this.drawMarks(ctx, start, end, n, w, h);
    if (stalled) { ctx.fillStyle = "#d4a72c"; ctx.fillText("STALE: no new samples", w - 170, 14); }
  }

  drawMarks(ctx, start, end, n, w, h) {
    let shown = 0;
    ctx.font = "11px system-ui";
    for (const m of this.marks) {
      if (m.i < start || m.i >= end) continue;
      const x = ((m.i - start) / n) * w;
      shown++;
      if (m.kind === "rhythm") {  // a rhythm starts or ends: a dashed line and its name
        ctx.strokeStyle = "#d4a72c"; ctx.setLineDash([4, 3]); ctx.beginPath();
        ctx.moveTo(x, 18); ctx.lineTo(x, h); ctx.stroke(); ctx.setLineDash([]);
        ctx.fillStyle = "#d4a72c";
        ctx.fillText(m.state === "end" ? `${m.label} end` : m.label, x + 3, 28);
      } else if (m.label === "P") {  // a pulse: a small tick at the foot of the trace
        ctx.fillStyle = "#7d8590"; ctx.fillRect(x - 1, h - 6, 2, 6);
      } else {  // a QRS: N, or V (ventricular) in orange
        ctx.fillStyle = m.label === "V" ? "#f0883e" : "#7d8590";
        ctx.fillRect(x - 0.5, 18, 1, 5);
        ctx.fillText(m.label, x - 3, 34);
      }
    }
    this.canvas.dataset.marks = String(shown);
  }

  minSpan() { return this.signal.startsWith("ECG") ? 1.0 : this.signal === "ABP" ? 40 : 0.2; }
  colour() { return this.signal.startsWith("ECG") ? "#3fb950" : this.signal === "ABP" ? "#f85149" : "#58a6ff"; }
}

function drawSeries(canvas, t, values, label, ranges = null) {
  // a static trace: times in µs, values with nulls as gaps; ranges: [min, max] per point
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
  ctx.fillStyle = "#7d8590"; ctx.font = "12px system-ui"; ctx.fillText(label, 6, 14);
  const finite = values.filter((v) => v !== null);
  if (!finite.length) { ctx.fillStyle = "#d4a72c"; ctx.fillText("no data", w / 2 - 20, h / 2); return; }
  let lo = Math.min(...finite), hi = Math.max(...finite);
  if (ranges) {
    for (const r of ranges) if (r && r[0] !== null && r[1] !== null) { lo = Math.min(lo, r[0]); hi = Math.max(hi, r[1]); }
  }
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const t0 = t[0], t1 = t[t.length - 1] || t0 + 1;
  const x = (ti) => ((ti - t0) / (t1 - t0 || 1)) * w;
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
