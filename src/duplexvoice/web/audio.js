// The page's audio: one AudioContext at 48 kHz holding both worklets, so that the
// capture and playback measurements share one clock (the context's currentTime).

const CAPTURE_URL = new URL("./capture-worklet.js", import.meta.url);
const PLAYBACK_URL = new URL("./playback-worklet.js", import.meta.url);

export const MIC_CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
};

export class MicError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind; // "denied", "missing", "failed"
  }
}

export class AudioEngine {
  constructor(handlers) {
    this.handlers = handlers; // {capture(msg), playback(msg)}
    this.ctx = null;
    this.capture = null;
    this.playback = null;
    this.micStream = null;
    this.micSource = null;
    this.remoteSource = null;
  }

  async start() {
    if (this.ctx) {
      if (this.ctx.state !== "running") await this.ctx.resume();
      return;
    }
    // latencyHint 0: the smallest output buffer the device allows. "interactive" gave
    // 42 ms of output latency in Chromium here against 11 ms: a pause or an interrupt
    // is heard that much later. The worklets' work per 128-sample block is small.
    const ctx = new AudioContext({ sampleRate: 48000, latencyHint: 0 });
    this.ctx = ctx;
    await ctx.audioWorklet.addModule(CAPTURE_URL);
    await ctx.audioWorklet.addModule(PLAYBACK_URL);
    this.capture = new AudioWorkletNode(ctx, "duplexvoice-capture", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
    });
    this.capture.port.onmessage = (e) => this.handlers.capture(e.data);
    // The capture node must be pulled by the graph; a silent gain keeps it running.
    const sink = new GainNode(ctx, { gain: 0 });
    this.capture.connect(sink).connect(ctx.destination);
    this.playback = new AudioWorkletNode(ctx, "duplexvoice-playback", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { mode: "buffer" },
    });
    this.playback.port.onmessage = (e) => this.handlers.playback(e.data);
    this.playback.connect(ctx.destination);
    if (ctx.state !== "running") await ctx.resume();
  }

  async openMic() {
    if (this.micStream && this.micStream.getAudioTracks().some((t) => t.readyState === "live")) {
      return this.micStream;
    }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new MicError("failed", "This browser offers no microphone here (a secure origin — https or localhost — is needed).");
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    } catch (err) {
      const name = err && err.name;
      if (name === "NotAllowedError" || name === "SecurityError") {
        throw new MicError("denied", "Microphone access was refused.");
      }
      if (name === "NotFoundError" || name === "OverconstrainedError") {
        throw new MicError("missing", "No microphone was found.");
      }
      throw new MicError("failed", `The microphone could not be opened (${name || err}).`);
    }
    this.micStream = stream;
    this.micSource = this.ctx.createMediaStreamSource(stream);
    this.micSource.connect(this.capture);
    return stream;
  }

  get micTrack() {
    return this.micStream ? this.micStream.getAudioTracks()[0] || null : null;
  }

  closeMic() {
    if (this.micSource) this.micSource.disconnect();
    if (this.micStream) for (const t of this.micStream.getTracks()) t.stop();
    this.micSource = null;
    this.micStream = null;
  }

  setMode(mode) {
    this.playback.port.postMessage({ type: "mode", mode });
  }

  attachRemote(stream) {
    this.detachRemote();
    this.remoteSource = this.ctx.createMediaStreamSource(stream);
    this.remoteSource.connect(this.playback);
  }

  detachRemote() {
    if (this.remoteSource) this.remoteSource.disconnect();
    this.remoteSource = null;
  }

  toPlayback(msg, transfer) {
    if (this.playback) this.playback.port.postMessage(msg, transfer || []);
  }

  toCapture(msg) {
    if (this.capture) this.capture.port.postMessage(msg);
  }

  // "Now" on the audio clock: the output position the listener hears at this moment
  // (getOutputTimestamp), or the render clock where the browser gives no timestamp.
  now() {
    const ctx = this.ctx;
    if (!ctx) return 0;
    const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
    if (ts && ts.performanceTime > 0 && ts.contextTime > 0) {
      return ts.contextTime + (performance.now() - ts.performanceTime) / 1000;
    }
    return ctx.currentTime;
  }

  async close() {
    this.closeMic();
    this.detachRemote();
    if (this.ctx) await this.ctx.close();
    this.ctx = null;
  }
}
