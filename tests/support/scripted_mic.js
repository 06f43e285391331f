// Test only: a microphone the test speaks into when it chooses, injected by
// tests/support/browser.py as a Playwright init script (it runs before the page's own
// scripts; the page's code is unchanged and never sees a difference but the sound).
//
// navigator.mediaDevices.getUserMedia returns the stream of a
// MediaStreamAudioDestinationNode in an AudioContext of its own; the test queues PCM
// into it with window.__mic.say(base64 PCM16 mono, rate) and waits for what it needs
// on the page (a message, a state) before saying the next thing. Between sayings the
// microphone is silent (zeros), like a quiet room. Everything after getUserMedia is the
// page's own path: its capture worklet for the WebSocket, the track itself for WebRTC.
//
// window.__mic.said: one record per saying, in order: {n, seconds, ended}; `ended`
// turns true once the microphone has played all of it.
(() => {
  const mic = { ctx: null, bus: null, next: 0, said: [], opened: 0 };

  function context() {
    if (!mic.ctx) {
      mic.ctx = new AudioContext({ sampleRate: 48000 });
      mic.bus = new GainNode(mic.ctx, { gain: 1 });
      // Always one live source: once the last saying's source ends, Chromium stops
      // rendering a graph with nothing live into the destination, and a WebRTC sender
      // then gets no audio at all (no packets, not silence). A constant 0 keeps the
      // stream going, silent, as a microphone in a quiet room does.
      const floor = new ConstantSourceNode(mic.ctx, { offset: 0 });
      floor.connect(mic.bus);
      floor.start();
    }
    return mic.ctx;
  }

  async function getUserMedia(constraints) {
    if (!constraints || !constraints.audio) {
      throw new DOMException("the scripted microphone has audio only", "NotFoundError");
    }
    const ctx = context();
    if (ctx.state !== "running") await ctx.resume();
    const dest = new MediaStreamAudioDestinationNode(ctx, { channelCount: 1 });
    mic.bus.connect(dest);
    mic.opened += 1;
    return dest.stream;
  }

  if (navigator.mediaDevices) {
    Object.defineProperty(navigator.mediaDevices, "getUserMedia", {
      value: getUserMedia, configurable: true, writable: true,
    });
  }

  function say(b64, rate) {
    const ctx = context();
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
    const buffer = new AudioBuffer({ length: Math.max(1, pcm.length), sampleRate: rate, numberOfChannels: 1 });
    const ch = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
    const source = new AudioBufferSourceNode(ctx, { buffer });
    source.connect(mic.bus);
    // After what is already queued: sayings never overlap.
    const at = Math.max(ctx.currentTime + 0.01, mic.next);
    mic.next = at + buffer.duration;
    const record = { n: mic.said.length, seconds: buffer.duration, ended: false };
    mic.said.push(record);
    source.onended = () => { record.ended = true; source.disconnect(); };
    source.start(at);
    return record.n;
  }

  Object.defineProperty(window, "__mic", {
    value: Object.freeze({
      say,
      get said() { return mic.said.map((r) => ({ ...r })); },
      get opened() { return mic.opened; },
    }),
  });
})();
