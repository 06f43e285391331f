// The two transports onto one session: both deliver the server's JSON messages to
// `onMessage`, report an unexpected end to `onDrop`, and take the client's JSON
// messages with `send`. The WebSocket carries audio as binary frames both ways; WebRTC
// carries it on the audio tracks (Opus) and the JSON on the "events" data channel.

export class ConnectError extends Error {
  // kind: "auth" (401/403), "busy" (503), "network" (server unreachable),
  // "webrtc" (WebRTC itself failed: the page falls back to the WebSocket)
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

const OPEN_DEADLINE_MS = 5000;
const GATHER_DEADLINE_MS = 2000;

function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new ConnectError("webrtc", `${what} took longer than ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

async function probeRefusal() {
  // A WebSocket refused before it opens tells the page nothing: ask the server why.
  try {
    const r = await fetch("/client-config", { cache: "no-store" });
    const config = await r.json();
    if (config.auth_required) return new ConnectError("auth", "The server refused the API key.");
    return new ConnectError("busy", "The server refused the connection (full or stopping).");
  } catch {
    return new ConnectError("network", "The server cannot be reached.");
  }
}

export class WebSocketTransport {
  constructor({ apiKey, onMessage, onFrame, onDrop }) {
    this.name = "websocket";
    this.apiKey = apiKey;
    this.onMessage = onMessage;
    this.onFrame = onFrame;
    this.onDrop = onDrop;
    this.ws = null;
    this.closing = false;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let url = `${scheme}://${location.host}/ws`;
    if (this.apiKey) url += `?api_key=${encodeURIComponent(this.apiKey)}`;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let opened = false;
      ws.onopen = () => { opened = true; resolve(); };
      ws.onmessage = (e) => {
        if (typeof e.data === "string") {
          let msg;
          try { msg = JSON.parse(e.data); } catch { return; }
          this.onMessage(msg);
        } else {
          this.onFrame(e.data);
        }
      };
      ws.onclose = async (e) => {
        if (!opened) { reject(await probeRefusal()); return; }
        if (!this.closing) this.onDrop(`connection closed (code ${e.code})`);
      };
    });
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
  }

  sendAudio(buffer) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.ws.bufferedAmount < 64000) {
      this.ws.send(buffer);
    }
  }

  setMicOpen() {} // the page sends zeros while the microphone is closed

  close() {
    this.closing = true;
    if (this.ws) this.ws.close(1000, "bye");
  }
}

export class WebRtcTransport {
  constructor({ apiKey, micTrack, onMessage, onDrop, onRemoteStream }) {
    this.name = "webrtc";
    this.apiKey = apiKey;
    // A clone goes to the peer: push-to-talk disables it (silence is sent) while the
    // page's own meter and measurements keep hearing the microphone.
    this.micTrack = micTrack ? micTrack.clone() : null;
    this.onMessage = onMessage;
    this.onDrop = onDrop;
    this.onRemoteStream = onRemoteStream;
    this.pc = null;
    this.dc = null;
    this.closing = false;
    this.sessionId = null;
  }

  async connect() {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    const dc = pc.createDataChannel("events", { ordered: true });
    this.dc = dc;
    if (this.micTrack) {
      pc.addTransceiver(this.micTrack, { direction: "sendrecv" });
    } else {
      pc.addTransceiver("audio", { direction: "sendrecv" }); // no microphone: listen only
    }
    const remote = new Promise((resolve) => {
      pc.ontrack = (e) => {
        const stream = e.streams[0] || new MediaStream([e.track]);
        this.onRemoteStream(stream);
        resolve(e.track);
      };
    });
    const dcOpen = new Promise((resolve, reject) => {
      dc.onopen = () => resolve();
      dc.onclose = () => {
        if (!this.closing && this.opened) this.onDrop("data channel closed");
        reject(new ConnectError("webrtc", "the data channel closed"));
      };
    });
    dcOpen.catch(() => {});
    dc.onmessage = (e) => {
      if (typeof e.data !== "string") return;
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      this.onMessage(msg);
    };
    const connected = new Promise((resolve, reject) => {
      pc.onconnectionstatechange = () => {
        const s = pc.connectionState;
        clearTimeout(this.lostTimer);
        if (s === "connected") resolve();
        else if (s === "disconnected" && this.opened) {
          // may recover by itself; a few seconds without it is a drop
          this.lostTimer = setTimeout(() => {
            if (pc.connectionState !== "connected" && !this.closing) this.onDrop("peer connection lost");
          }, 4000);
        } else if (s === "failed" || s === "closed") {
          reject(new ConnectError("webrtc", `the peer connection ${s}`));
          if (this.opened && !this.closing) this.onDrop(`peer connection ${s}`);
        }
      };
    });
    connected.catch(() => {});

    try {
      await pc.setLocalDescription(await pc.createOffer());
      await withDeadline(new Promise((resolve) => {
        if (pc.iceGatheringState === "complete") { resolve(); return; }
        pc.addEventListener("icegatheringstatechange", () => {
          if (pc.iceGatheringState === "complete") resolve();
        });
      }), GATHER_DEADLINE_MS, "gathering network candidates").catch(() => {}); // send what we have
      const headers = { "Content-Type": "application/json" };
      if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
      let response;
      try {
        response = await fetch("/webrtc/offer", {
          method: "POST", headers, cache: "no-store",
          body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
        });
      } catch {
        throw new ConnectError("network", "The server cannot be reached.");
      }
      if (response.status === 401 || response.status === 403) {
        throw new ConnectError("auth", "The server refused the API key.");
      }
      if (response.status === 503) {
        throw new ConnectError("busy", "The server is full or stopping.");
      }
      if (!response.ok) {
        let detail = `HTTP ${response.status}`;
        try {
          const body = await response.json();
          if (body && body.error) detail = `${body.error.code}: ${body.error.message}`;
        } catch { /* no JSON body */ }
        throw new ConnectError("webrtc", `the server refused the offer (${detail})`);
      }
      const answer = await response.json();
      this.sessionId = answer.session_id || null;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      await withDeadline(Promise.all([connected, dcOpen]), OPEN_DEADLINE_MS,
        "connecting the peer and its data channel");
      const track = await withDeadline(remote, OPEN_DEADLINE_MS, "receiving the server's audio track");
      if (track.readyState !== "live") throw new ConnectError("webrtc", "the server's audio track ended");
      this.opened = true;
    } catch (err) {
      this.closing = true;
      pc.close();
      throw err instanceof ConnectError ? err : new ConnectError("webrtc", String(err && err.message || err));
    }
  }

  send(obj) {
    if (this.dc && this.dc.readyState === "open") this.dc.send(JSON.stringify(obj));
  }

  // Where the received voice waits in the browser (averages since the start, ms):
  // WebRTC's jitter buffer, and the playout after it (getStats "media-playout").
  async delays() {
    if (!this.pc) return null;
    const out = { jitter_buffer_ms: null, jitter_target_ms: null, playout_ms: null };
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio" && s.jitterBufferEmittedCount) {
        out.jitter_buffer_ms = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
        out.jitter_target_ms = (1000 * s.jitterBufferTargetDelay) / s.jitterBufferEmittedCount;
      } else if (s.type === "media-playout" && s.totalSamplesCount) {
        out.playout_ms = (1000 * s.totalPlayoutDelay) / s.totalSamplesCount;
      }
    });
    return out;
  }

  sendAudio() {} // the microphone track goes to the peer itself

  setMicOpen(open) {
    if (this.micTrack) this.micTrack.enabled = open;
  }

  close() {
    this.closing = true;
    clearTimeout(this.lostTimer);
    if (this.dc) this.dc.close();
    if (this.pc) this.pc.close();
    if (this.micTrack) this.micTrack.stop();
  }
}
