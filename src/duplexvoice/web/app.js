// The duplexvoice browser client: one conversation with the orchestrator over WebRTC
// (default) or a WebSocket (the fallback it switches to by itself when WebRTC fails).
// No build step: plain ES modules served from the package.

import { AudioEngine, MicError } from "./audio.js";
import { StatePill } from "./activity.js";
import { Measure } from "./measure.js";
import { MicMode } from "./mic.js";
import { ConnectError, WebRtcTransport, WebSocketTransport } from "./transports.js";
import { ConversationView } from "./view.js";

const KEY_STORE = "duplexvoice.apiKey";
const BACKOFF_S = [0.5, 1, 2, 4, 5];
const REOPEN_AFTER_INTERRUPT_MS = 150; // WebRTC: old audio may still be in flight
const FRAME_BYTES = 1932;

const $ = (id) => document.getElementById(id);
const ui = {
  connect: $("connect"), transport: $("transport"), voice: $("voice"),
  ptt: $("ptt"), keyRow: $("key-row"), key: $("api-key"), notices: $("notices"),
  state: $("state"), conn: $("conn"), meter: $("meter"), meterBar: $("meter-bar"),
  log: $("log"), form: $("text-form"), text: $("text-input"), latency: $("latency-body"),
  remote: $("remote-audio"), empty: $("log-empty"),
};

const measure = new Measure();
const pill = new StatePill(ui.state);
const view = new ConversationView(ui, () => app.session);
const audio = new AudioEngine({
  capture: (m) => onCapture(m),
  playback: (m) => onPlayback(m),
});

const app = {
  connection: "disconnected", // disconnected | connecting | connected | reconnecting
  state: "DISCONNECTED",
  transport: null, // the transport object in use
  configuredTransport: null, // the transport whose session got its config (mic audio may flow)
  wanted: false,
  attempt: 0,
  retryTimer: null,
  sessionId: null,
  session: 0, // counts sessions: turn numbers restart with each
  micState: "off", // off | on | denied | missing | failed
  interruptAt: -Infinity,
  gateTimer: null,
  reconnects: 0,
  connectStarted: 0,
  typedAt: null, // performance.now() of the last typed line not yet taken as a turn
  workerMissing: false, // the no-worker notice is up
  config: { auth_required: false, webrtc: true, default_voice: "" },
};

// -- notices -----------------------------------------------------------------------

function notice(key, kind, text) {
  let el = ui.notices.querySelector(`[data-notice="${key}"]`);
  if (!text) { if (el) el.remove(); return; }
  if (!el) {
    el = document.createElement("p");
    el.dataset.notice = key;
    ui.notices.append(el);
  }
  el.className = `notice ${kind}`;
  el.textContent = text;
}

// -- connection --------------------------------------------------------------------

function setConnection(value) {
  app.connection = value;
  const words = { disconnected: "Disconnected", connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…" };
  const via = app.transport && value === "connected" ? ` · ${app.transport.name === "webrtc" ? "WebRTC" : "WebSocket"}` : "";
  ui.conn.textContent = words[value] + via;
  ui.conn.dataset.connection = value;
  ui.connect.textContent = value === "disconnected" ? "Connect" : "Disconnect";
  ui.connect.setAttribute("aria-pressed", String(value !== "disconnected"));
  ui.transport.disabled = value !== "disconnected";
  if (value === "disconnected") setState("DISCONNECTED");
}

function setState(state) {
  app.state = state;
  pill.setState(state);
}

function heard() {
  // Reply audio is playing: the assistant speaks, and a voice worker is evidently back.
  pill.heard();
  workerBack();
}

function workerBack() {
  if (!app.workerMissing) return;
  app.workerMissing = false;
  notice("worker", "", "");
}

async function connect(reconnect = false) {
  clearTimeout(app.retryTimer);
  app.wanted = true;
  setConnection(reconnect ? "reconnecting" : "connecting");
  app.connectStarted = performance.now();
  try {
    await audio.start();
  } catch (err) {
    notice("audio", "error", `Audio could not start in this browser: ${err.message || err}`);
  }
  if (audio.ctx && app.micState !== "on") await openMic();
  checkWorkers();
  const chosen = ui.transport.value;
  let name = chosen;
  let rtcFailure = null; // why WebRTC failed, once the page tries the WebSocket instead
  let openStarted = performance.now();
  for (;;) {
    try {
      openStarted = performance.now();
      await open(name);
      break;
    } catch (err) {
      if (!app.wanted) return;
      const kind = err instanceof ConnectError ? err.kind : "network";
      if (name === "webrtc" && kind !== "auth") {
        // Any WebRTC failure (a blocked offer, no ICE path, a proxy): try the WebSocket.
        rtcFailure = err.message || String(err);
        name = "websocket";
        continue;
      }
      // Both failed: the server itself is the problem; the retry starts from the choice.
      if (rtcFailure !== null) ui.transport.value = chosen;
      if (kind === "auth") {
        showKey(true);
        notice("auth", "error", app.config.auth_required && !ui.key.value
          ? "This server needs an API key: enter it and connect."
          : "The server refused the API key: check it and connect again.");
        app.wanted = false;
        setConnection("disconnected");
        ui.key.focus();
        return;
      }
      scheduleRetry(err.message || String(err));
      return;
    }
  }
  if (rtcFailure !== null) {
    ui.transport.value = "websocket";
    notice("transport", "warn", `WebRTC could not connect (${rtcFailure}); switched to WebSocket.`);
  }
  const wasRetry = app.attempt > 0 || reconnect;
  app.attempt = 0;
  notice("auth", "", "");
  setConnection("connected");
  const now = performance.now();
  measure.record({ kind: "connect", transport: app.transport.name, ms: now - app.connectStarted,
    transport_ms: now - openStarted, reconnect: wasRetry });
  if (wasRetry) {
    app.reconnects += 1;
    notice("conn", "ok", "Reconnected.");
    setTimeout(() => { if (app.connection === "connected") notice("conn", "", ""); }, 8000);
  } else {
    notice("conn", "", "");
  }
}

async function open(name) {
  const apiKey = ui.key.value.trim();
  const common = { apiKey, onMessage: (m) => onMessage(t, m), onDrop: (why) => onDrop(t, why) };
  let t;
  if (name === "webrtc") {
    audio.setMode("stream");
    audio.toCapture({ type: "send", on: false });
    t = new WebRtcTransport({ ...common, micTrack: audio.micTrack, onRemoteStream: attachRemote });
  } else {
    audio.setMode("buffer");
    audio.toCapture({ type: "send", on: true });
    audio.detachRemote();
    t = new WebSocketTransport({ ...common, onFrame: (buf) => onFrame(t, buf) });
  }
  app.transport = t;
  try {
    await t.connect();
  } catch (err) {
    if (app.transport === t) app.transport = null;
    throw err;
  }
  if (!app.wanted) { t.close(); throw new ConnectError("network", "disconnected"); }
  mic.apply();
}

function attachRemote(stream) {
  // Chromium gives a remote stream to WebAudio only while a media element plays it.
  ui.remote.srcObject = stream;
  ui.remote.muted = true;
  ui.remote.play().catch(() => {});
  audio.attachRemote(stream);
}

function scheduleRetry(why) {
  const delay = BACKOFF_S[Math.min(app.attempt, BACKOFF_S.length - 1)];
  app.attempt += 1;
  setConnection("reconnecting");
  notice("conn", "warn", `Connection lost (${why.replace(/\.$/, "")}). Reconnecting in ${delay} s…`);
  app.retryTimer = setTimeout(() => { if (app.wanted) connect(true); }, delay * 1000);
}

function onDrop(t, why) {
  if (t !== app.transport) return;
  app.transport = null;
  t.close();
  setState("DISCONNECTED");
  if (app.wanted) scheduleRetry(why);
}

function disconnect() {
  app.wanted = false;
  clearTimeout(app.retryTimer);
  app.attempt = 0;
  const t = app.transport;
  app.transport = null;
  if (t) t.close();
  audio.detachRemote();
  audio.closeMic();
  app.micState = "off";
  audio.toPlayback({ type: "reset" });
  setConnection("disconnected");
  notice("conn", "", "");
}

async function openMic() {
  try {
    await audio.openMic();
    app.micState = "on";
    notice("mic", "", "");
  } catch (err) {
    app.micState = err instanceof MicError ? err.kind : "failed";
    const text = app.micState === "denied"
      ? "Microphone access was refused, so the server cannot hear you. You can still type below. To talk, allow the microphone for this page in the browser's site settings, then disconnect and connect again."
      : `${err.message} You can still type below.`;
    notice("mic", "error", text);
  }
}

async function checkWorkers() {
  try {
    const r = await fetch("/ready", { cache: "no-store" });
    if (r.status === 503) {
      app.workerMissing = true;
      notice("worker", "warn", "No voice worker is available right now: replies will be silent until one is up.");
    } else if (r.ok) {
      workerBack();
    }
  } catch { /* the connection reports an unreachable server */ }
}

// -- messages ----------------------------------------------------------------------

function send(obj) {
  if (!app.transport) return false;
  app.transport.send(obj);
  measure.event("out", obj);
  return true;
}

function sendConfig() {
  const config = { type: "config", mode: "conversation" };
  if (app.transport.name === "websocket") {
    config.input_sample_rate = 16000;
    config.output_format = "binary";
  }
  if (ui.voice.value) config.voice = ui.voice.value;
  send(config);
  // Microphone audio only after this: before it the session is in text mode, and the
  // server refuses audio there (INVALID_STATE) — a WebSocket opens before session_start.
  app.configuredTransport = app.transport;
}

function onMessage(t, msg) {
  if (t !== app.transport || !msg || typeof msg.type !== "string") return;
  measure.event("in", msg);
  const uid = msg.utterance_id;
  switch (msg.type) {
    case "session_start":
      app.sessionId = msg.session_id;
      app.session += 1;
      measure.resetSession();
      audio.toPlayback({ type: "reset" });
      sendConfig();
      break;
    case "state":
      setState(msg.state);
      if (msg.state === "SPEAKING") reopenGate();
      break;
    case "transcript": {
      const typed = view.showTranscript(msg);
      if (typed && app.typedAt !== null) {
        measure.typed(msg.turn, app.typedAt);
        app.typedAt = null;
      }
      if (msg.final && String(msg.text || "").trim()) pill.setThinking(true);
      break;
    }
    case "reply": {
      const u = measure.utterance(uid);
      if (u.turn === null && typeof msg.turn === "number") u.turn = msg.turn;
      if (u.reply_at === null) u.reply_at = performance.now();
      u.text = `${u.text} ${msg.text}`.replace(/\s+/g, " ").trim();
      audio.toPlayback({ type: "current", uid });
      view.showReply(uid, u.text);
      break;
    }
    case "pause":
      measure.arrival("pause", uid, audio.now(), audio.ctx ? audio.ctx.currentTime : 0);
      audio.toPlayback({ type: "pause", uid });
      measure.utterance(uid).paused += 1;
      break;
    case "resume":
      audio.toPlayback({ type: "resume", uid });
      measure.utterance(uid).resumed += 1;
      break;
    case "interrupt":
      measure.arrival("interrupt", uid, audio.now(), audio.ctx ? audio.ctx.currentTime : 0);
      audio.toPlayback({ type: "interrupt", uid });
      app.interruptAt = performance.now();
      pill.silent();
      measure.utterance(uid).interrupted = true;
      view.markInterrupted(uid);
      break;
    case "utterance_end":
      audio.toPlayback({ type: "end", uid });
      measure.utterance(uid).ended = msg.reason;
      if (msg.reason === "interrupted" || msg.reason === "stopped") view.markInterrupted(uid);
      if (msg.reason === "completed" && msg.frames > 0) workerBack(); // a whole utterance was voiced
      if (pill.thinking && measure.utterance(uid).onset_at === null) pill.setThinking(false); // ended unheard
      break;
    case "metrics": {
      const row = measure.server(msg);
      if (row) view.showLatency(row);
      break;
    }
    case "error":
      if (["REPLY_FAILED", "ASR_FAILED", "ASR_BUSY", "WORKER_UNAVAILABLE", "QUEUE_FULL"].includes(msg.code)) {
        pill.setThinking(false); // that turn gets no (audible) reply
      }
      if (msg.code === "WORKER_UNAVAILABLE") {
        app.workerMissing = true;
        notice("worker", "warn", "No voice worker is available: this reply has no audio. The conversation goes on.");
      } else {
        notice("error", "warn", `${msg.code}: ${msg.message}`);
        setTimeout(() => notice("error", "", ""), 8000);
      }
      break;
    case "session_end":
      if (msg.reason === "idle_timeout") {
        notice("conn", "warn", "The session ended after a long silence. Connect again to go on.");
        app.wanted = false;
        app.transport = null;
        t.close();
        setConnection("disconnected");
      } else {
        onDrop(t, msg.reason === "server_shutdown" ? "the server is restarting" : `session ended: ${msg.reason}`);
      }
      break;
    default: break;
  }
}

function reopenGate() {
  // WebRTC: after an interrupt the gate stays closed until SPEAKING comes at least
  // REOPEN_AFTER_INTERRUPT_MS later (audio of the old utterance may still be queued).
  if (!app.transport || app.transport.name !== "webrtc") return;
  clearTimeout(app.gateTimer);
  const wait = app.interruptAt + REOPEN_AFTER_INTERRUPT_MS - performance.now();
  if (wait <= 0) audio.toPlayback({ type: "open" });
  else app.gateTimer = setTimeout(() => { if (app.state === "SPEAKING") audio.toPlayback({ type: "open" }); }, wait);
}

function onFrame(t, buf) {
  if (t !== app.transport || buf.byteLength !== FRAME_BYTES) return;
  const head = new DataView(buf, 0, 12);
  if (head.getUint8(0) !== 0x44 || head.getUint8(1) !== 0x56 || head.getUint8(2) !== 1) return;
  const uid = head.getUint32(4, true);
  measure.frames += 1;
  workerBack(); // audio arrives: a worker is back
  const pcm = buf.slice(12);
  audio.toPlayback({ type: "frame", uid, pcm }, [pcm]);
}

function onCapture(m) {
  if (m.type === "pcm") {
    if (app.transport && app.configuredTransport === app.transport) app.transport.sendAudio(m.pcm);
    return;
  }
  measure.capture(m);
  if (m.type === "level") {
    const db = m.rms > 0 ? 20 * Math.log10(m.rms) : -100;
    const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
    ui.meterBar.style.width = `${pct}%`;
    ui.meter.setAttribute("aria-valuenow", String(Math.round(pct)));
  }
}

function onPlayback(m) {
  measure.playback(m);
  if (m.type === "onset" && m.uid && !measure.utterance(m.uid).interrupted) heard();
  // What the user heard of an utterance, on either transport (WebRTC: on the data
  // channel): an interruption cuts the reply's history to it.
  if (m.type === "played" && app.transport) {
    send({ type: "playback", utterance_id: m.uid, played_ms: Math.max(0, Math.round(m.played_ms)) });
  }
}

// page measurements arrive after the server's: refresh the rows now and then
setInterval(() => {
  for (const row of measure.snapshotTurns()) {
    if (view.hasLatencyRow(row.turn) || row.first_audio_ms !== undefined
      || row.voice_to_voice_ms !== undefined || row.page_voice_to_voice_ms !== undefined
      || row.text_to_voice_ms !== undefined || row.page_text_to_voice_ms !== undefined) view.showLatency(row);
  }
}, 1000);

// -- microphone: hands-free or push-to-talk (mic.js) -------------------------------

const mic = new MicMode(ui.ptt, (open) => {
  audio.toCapture({ type: "mute", muted: !open });
  if (app.transport) app.transport.setMicOpen(open);
});

// -- controls ----------------------------------------------------------------------

ui.connect.addEventListener("click", () => {
  if (app.connection === "disconnected") connect(false);
  else disconnect();
});

// Enter in the key field connects
$("connect-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY_STORE, ui.key.value.trim());
  if (app.connection === "disconnected") connect(false);
});

ui.voice.addEventListener("change", () => {
  if (app.connection === "connected") send({ type: "config", voice: ui.voice.value || undefined });
});

ui.key.addEventListener("change", () => sessionStorage.setItem(KEY_STORE, ui.key.value.trim()));

ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = ui.text.value.trim();
  if (!text) return;
  if (!send({ type: "user_text", text })) {
    notice("error", "warn", "Connect first, then type.");
    return;
  }
  app.typedAt = performance.now();
  view.showTyped(text);
  pill.setThinking(true);
  ui.text.value = "";
});

function showKey(show) {
  ui.keyRow.hidden = !show;
}

async function loadSettings() {
  ui.key.value = sessionStorage.getItem(KEY_STORE) || "";
  try {
    const r = await fetch("/client-config", { cache: "no-store" });
    app.config = await r.json();
    if (app.config.auth_required) showKey(true);
    if (!app.config.webrtc) ui.transport.value = "websocket";
  } catch { /* offline: connecting says so */ }
  try {
    const r = await fetch("/models", { cache: "no-store" });
    const { models } = await r.json();
    for (const m of models || []) {
      const opt = document.createElement("option");
      opt.value = m.model_id;
      opt.textContent = m.model_id;
      ui.voice.append(opt);
    }
    if (app.config.default_voice) ui.voice.value = app.config.default_voice;
  } catch { /* the default voice stays */ }
}

// -- the read-only measurement API -------------------------------------------------

const api = Object.freeze({
  get state() { return app.state; },
  // what the state pill shows the assistant doing: "thinking", "speaking" or ""
  get activity() { return pill.activity; },
  get activities() { return pill.log.map((a) => a.activity); },
  get connection() { return app.connection; },
  get transport() { return app.transport ? app.transport.name : null; },
  get sessionId() { return app.sessionId; },
  get micState() { return app.micState; },
  get micLevel() { return measure.micLevel; },
  get micEnergy() { return measure.micEnergy; },
  get frames() { return measure.frames; },
  // How long the microphone has been quiet (ms) in what the capture has heard so far
  // (its last report, on the audio clock); null before any voice.
  get micQuietMs() {
    return measure.lastVoice >= 0 ? Math.max(0, (measure.levelT - measure.lastVoice) * 1000) : null;
  },
  get reconnects() { return app.reconnects; },
  get events() { return measure.events.slice(); },
  get measurements() { return measure.records.slice(); },
  get utterances() { return measure.snapshotUtterances(); },
  get turns() { return measure.snapshotTurns(); },
  get notices() {
    return Object.fromEntries([...ui.notices.querySelectorAll("[data-notice]")].map((el) => [el.dataset.notice, el.textContent]));
  },
  get outputLatencyMs() {
    const c = audio.ctx;
    return c ? ((c.baseLatency || 0) + (c.outputLatency || 0)) * 1000 : null;
  },
  audioTime() { return audio.ctx ? audio.ctx.currentTime : 0; },
  // WebRTC only: the browser's jitter buffer and playout delays of the voice (ms).
  rtcDelays() { return app.transport && app.transport.delays ? app.transport.delays() : Promise.resolve(null); },
  connect() { if (app.connection === "disconnected") return connect(false); return Promise.resolve(); },
  disconnect() { disconnect(); },
});
Object.defineProperty(window, "duplexvoice", { value: api, writable: false, configurable: false });

setConnection("disconnected");
loadSettings();
