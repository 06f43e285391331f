// Microphone capture, on the audio thread.
//
// Per 128-sample block: the level (RMS and peak, posted ~20 times a second for the
// meter), voice tracking (the audio-clock time of the last block above the speech
// threshold, posted when a stretch of voice ends: the page measures voice-to-voice
// from it), and in "send" mode 16 kHz PCM16 frames for the WebSocket transport.
//
// Downsampling: a windowed-sinc low-pass (cut-off 7.2 kHz, 63 taps) at the context's
// rate, then samples taken at 16 kHz positions (linear interpolation between the
// filtered samples; exact decimation by 3 at 48 kHz). Simple, and far below the
// aliasing that would disturb the VAD or Whisper.

const OUT_RATE = 16000;
const FRAME = 320; // 20 ms at 16 kHz
const VOICE_DB = -45; // block RMS above this is voice
const VOICE_QUIET_S = 0.1; // quiet this long ends a stretch of voice
const TAPS = 63;

function lowpass(rate) {
  const cutoff = Math.min(7200, 0.45 * rate) / rate;
  const h = new Float32Array(TAPS);
  const mid = (TAPS - 1) / 2;
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (TAPS - 1)) +
      0.08 * Math.cos((4 * Math.PI * i) / (TAPS - 1)); // Blackman
    h[i] = sinc * w;
    sum += h[i];
  }
  for (let i = 0; i < TAPS; i++) h[i] /= sum;
  return h;
}

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.sending = false;
    this.muted = false;
    this.h = lowpass(sampleRate);
    this.hist = new Float32Array(TAPS); // ring of the last inputs
    this.histAt = 0;
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.pos = 0; // input samples until the next output sample
    this.prevFiltered = 0;
    this.frame = new Int16Array(FRAME);
    this.frameAt = 0;
    this.levelSum = 0;
    this.levelPeak = 0;
    this.levelN = 0;
    this.levelEvery = Math.round(sampleRate / 20);
    this.lastVoice = -1; // end time of the last voiced block
    this.inVoice = false;
    this.energy = 0; // total energy seen (a test checks the fake microphone delivered)
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "send") this.sending = !!m.on;
      else if (m.type === "mute") this.muted = !!m.muted;
    };
  }

  filtered(x) {
    this.hist[this.histAt] = x;
    this.histAt = (this.histAt + 1) % TAPS;
    let acc = 0;
    let j = this.histAt;
    for (let i = 0; i < TAPS; i++) {
      acc += this.h[i] * this.hist[j];
      j = j + 1 === TAPS ? 0 : j + 1;
    }
    return acc;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    const n = input ? input.length : 128;
    // Muted (push-to-talk up): silence is sent, but the level and the voice times are
    // the microphone's own (the meter still moves; measurements see the real speech).
    const muted = this.muted || !input;
    let sq = 0;
    let peak = 0;
    for (let i = 0; i < n; i++) {
      const x = input ? input[i] : 0;
      sq += x * x;
      const a = x < 0 ? -x : x;
      if (a > peak) peak = a;
      if (this.sending) this.resample(muted ? 0 : x);
    }
    this.energy += sq;
    const rms = Math.sqrt(sq / n);
    const db = rms > 0 ? 20 * Math.log10(rms) : -120;
    const blockEnd = currentTime + n / sampleRate;
    if (db > VOICE_DB) {
      this.lastVoice = blockEnd;
      this.inVoice = true;
    } else if (this.inVoice && blockEnd - this.lastVoice >= VOICE_QUIET_S) {
      this.inVoice = false;
      this.port.postMessage({ type: "voice_end", t: this.lastVoice });
    }
    this.levelSum += sq;
    this.levelN += n;
    if (peak > this.levelPeak) this.levelPeak = peak;
    if (this.levelN >= this.levelEvery) {
      this.port.postMessage({
        type: "level", rms: Math.sqrt(this.levelSum / this.levelN), peak: this.levelPeak,
        t: currentTime, lastVoice: this.lastVoice, energy: this.energy,
      });
      this.levelSum = 0;
      this.levelN = 0;
      this.levelPeak = 0;
    }
    return true;
  }

  resample(x) {
    const y = this.filtered(x);
    this.pos -= 1;
    while (this.pos < 0) {
      // pos in (-1, 0]: the output sample lies between the previous and this one
      const frac = 1 + this.pos;
      const v = this.prevFiltered + (y - this.prevFiltered) * frac;
      const s = Math.max(-1, Math.min(1, v));
      this.frame[this.frameAt++] = Math.round(s * 32767);
      if (this.frameAt === FRAME) {
        const out = this.frame;
        this.port.postMessage({ type: "pcm", pcm: out.buffer }, [out.buffer]);
        this.frame = new Int16Array(FRAME);
        this.frameAt = 0;
      }
      this.pos += this.step;
    }
    this.prevFiltered = y;
  }
}

registerProcessor("duplexvoice-capture", Capture);
