// Playback, on the audio thread, in one of two modes.
//
// "buffer" (WebSocket): 20 ms PCM16 frames arrive from the page; a small jitter buffer
// starts an utterance once 50 ms is buffered (underrun: silence, then refill to
// 50 ms). `pause` holds at once and keeps the buffer; `resume` plays on from where it
// stopped; `interrupt` flushes at once and fences the utterance: frames of any
// utterance id up to the highest interrupted one are dropped (deaf to fenced audio).
//
// "stream" (WebRTC): the remote track comes in as the node's input and the worklet is
// a gate: `pause` closes it at once, `resume` opens it, `interrupt` closes it until
// the page opens it again (on the next SPEAKING state at least 150 ms later: audio of
// the old utterance may still be in flight in WebRTC's jitter buffer).
// What was played of an utterance counts from its onset on the output (the first loud
// block once the page said it is the current one: the track carries silence before
// it) while the gate is open, so a `pause` or `interrupt` report says what was heard.
//
// Both modes measure what is actually written to the output, per 128-sample block:
// energy per utterance (and after its interrupt, which must stay zero), the onset
// (first loud block after >= 100 ms of quiet) and the time it went quiet, and the
// first silent block after a pause/interrupt. Times are this context's currentTime,
// the same clock as the capture worklet's. On each pause, resume and interrupt it
// reports where the utterance stood (energy and samples played): what
// plays between a pause and its resume, or after an interrupt, is then plain to see.

const LOUD = 0.00316; // block RMS above -50 dBFS counts as sound
const QUIET_S = 0.1;
const FRAME = 960;

class Playback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.mode = (options.processorOptions && options.processorOptions.mode) || "buffer";
    this.prebuffer = Math.round(0.05 * sampleRate);
    this.reset();
    this.port.onmessage = (e) => this.message(e.data);
  }

  reset() {
    this.queue = []; // {uid, pcm: Float32Array, at}
    this.buffered = 0;
    this.started = false;
    this.held = false;
    this.fence = 0;
    this.ended = new Set(); // utterances whose last frame has arrived
    this.gate = true;
    this.current = 0; // stream mode: the utterance the page says is playing
    this.energy = {};
    this.after = {}; // energy of an utterance's audio written after its interrupt
    this.interrupted = new Set();
    this.played = {}; // samples written per utterance
    this.playing = 0; // uid last written (buffer mode)
    this.heard = new Set(); // stream mode: utterances whose onset was heard
    this.lastLoud = -1;
    this.quietSince = 0;
    this.sounding = false;
    this.awaitSilence = [];
    this.nextReport = 0;
    this.nextStats = 0;
    this.dirty = false;
  }

  message(m) {
    switch (m.type) {
      case "mode": this.mode = m.mode; this.reset(); break;
      case "reset": this.reset(); break;
      case "frame": this.frame(m.uid, new Int16Array(m.pcm)); break;
      case "end": this.ended.add(m.uid); break;
      case "current": this.current = m.uid; break;
      case "open": this.gate = true; break;
      case "pause":
        this.held = true;
        this.gate = false;
        this.awaitSilence.push({ kind: "pause", uid: m.uid });
        this.report("pause");
        this.control("pause", m.uid);
        break;
      case "resume":
        this.held = false;
        this.gate = true;
        this.control("resume", m.uid);
        break;
      case "interrupt": this.interrupt(m.uid); this.control("interrupt", m.uid); break;
    }
  }

  control(kind, uid) {
    // where the utterance stood when the control took effect
    this.port.postMessage({
      type: "control", kind, uid, t: currentTime, energy: this.energy[uid] || 0,
      played_ms: (this.played[uid] || 0) * 1000 / sampleRate,
    });
  }

  frame(uid, pcm) {
    if (uid <= this.fence || pcm.length !== FRAME) return;
    const f = new Float32Array(FRAME);
    for (let i = 0; i < FRAME; i++) f[i] = pcm[i] / 32768;
    this.queue.push({ uid, pcm: f, at: 0 });
    this.buffered += FRAME;
  }

  interrupt(uid) {
    this.interrupted.add(uid);
    if (uid > this.fence) this.fence = uid;
    this.report("interrupt");
    this.queue = this.queue.filter((f) => f.uid > this.fence);
    this.buffered = this.queue.reduce((n, f) => n + f.pcm.length - f.at, 0);
    this.held = false;
    this.started = false;
    this.gate = false; // stream mode: the page opens it again
    this.awaitSilence.push({ kind: "interrupt", uid });
  }

  report(reason) {
    const uid = this.mode === "stream" ? this.current : this.playing;
    if (uid && (this.mode === "buffer" || this.heard.has(uid))) {
      this.port.postMessage({ type: "played", uid, played_ms: (this.played[uid] || 0) * 1000 / sampleRate, reason });
    }
  }

  fill(out) {
    // buffer mode: the jitter buffer
    out.fill(0);
    if (this.held) return 0;
    if (!this.started) {
      const head = this.queue.length ? this.queue[0].uid : 0;
      if (this.buffered >= this.prebuffer || (head && this.ended.has(head))) this.started = true;
      else return 0;
    }
    let i = 0;
    while (i < out.length && this.queue.length) {
      const f = this.queue[0];
      const n = Math.min(out.length - i, f.pcm.length - f.at);
      out.set(f.pcm.subarray(f.at, f.at + n), i);
      f.at += n;
      i += n;
      this.buffered -= n;
      this.played[f.uid] = (this.played[f.uid] || 0) + n;
      this.playing = f.uid;
      if (f.at === f.pcm.length) this.queue.shift();
    }
    if (i > 0) this.dirty = true; // played moved on (even through silent samples)
    if (!this.queue.length) this.started = false; // underrun or the end: refill first
    return this.playing;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let uid;
    if (this.mode === "stream") {
      const input = inputs[0] && inputs[0][0];
      const open = Boolean(input) && this.gate;
      if (open) out.set(input);
      else out.fill(0);
      uid = this.current;
      if (open && uid && !this.interrupted.has(uid)) {
        if (!this.heard.has(uid) && blockRms(out) > LOUD) this.heard.add(uid);
        if (this.heard.has(uid) && !(this.ended.has(uid) && !this.sounding)) {
          this.played[uid] = (this.played[uid] || 0) + out.length;
          this.dirty = true;
        }
      }
    } else {
      uid = this.fill(out);
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);

    let sq = 0;
    for (let i = 0; i < out.length; i++) sq += out[i] * out[i];
    const rms = Math.sqrt(sq / out.length);
    if (uid) {
      this.energy[uid] = (this.energy[uid] || 0) + sq;
      if (this.interrupted.has(uid)) this.after[uid] = (this.after[uid] || 0) + sq;
      if (sq > 0) this.dirty = true;
    }
    const t = currentTime;
    if (rms > LOUD) {
      if (!this.sounding && t - this.lastLoud >= QUIET_S) {
        this.port.postMessage({ type: "onset", t, uid });
      }
      this.sounding = true;
      this.lastLoud = t + out.length / sampleRate;
    } else if (this.sounding && t - this.lastLoud >= QUIET_S) {
      this.sounding = false;
      this.port.postMessage({ type: "quiet", t: this.lastLoud, uid });
    }
    if (rms <= LOUD && this.awaitSilence.length) {
      for (const w of this.awaitSilence) this.port.postMessage({ type: "silent_after", kind: w.kind, uid: w.uid, t });
      this.awaitSilence = [];
    }
    // Stream mode: while the current utterance sounds (the track's silence after its
    // end is not reported every 200 ms forever).
    const due = this.mode === "stream"
      ? this.heard.has(this.current) && this.gate && !(this.ended.has(this.current) && !this.sounding)
      : this.playing && !this.held;
    if (due && t >= this.nextReport && rms > 0) {
      this.nextReport = t + 0.2;
      this.report("periodic");
    }
    if (t >= this.nextStats && this.dirty) {
      this.nextStats = t + 0.1;
      this.dirty = false;
      const played = {};
      for (const [id, n] of Object.entries(this.played)) played[id] = n * 1000 / sampleRate;
      this.port.postMessage({
        type: "stats", energy: this.energy, after: this.after, played,
        buffered_ms: this.buffered * 1000 / sampleRate,
      });
    }
    return true;
  }
}

function blockRms(block) {
  let sq = 0;
  for (let i = 0; i < block.length; i++) sq += block[i] * block[i];
  return Math.sqrt(sq / block.length);
}

registerProcessor("duplexvoice-playback", Playback);
