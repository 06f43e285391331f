// In-page measurements, read by tests and the browser benchmark through
// `window.duplexvoice`. Audio times are the AudioContext's clock (seconds), shared by
// the capture and playback worklets; message times are performance.now() (ms).
//
// measurements: a list of records, each with a `kind`:
//   {kind: "connect", transport, ms}              connect() call -> session usable
//                                                 (WebRTC: peer connected + remote track live)
//   {kind: "voice_to_voice", utterance_id, turn, ms, voice_end_t, onset_t}
//                                                 reply audio onset - last mic voice before it
//                                                 reply_to_onset_ms: first `reply` message -> onset
//                                                 (performance.now(), the downlink's share)
//   {kind: "text_to_voice", utterance_id, turn, ms}
//                                                 a typed turn: user_text sent -> reply onset
//                                                 (performance.now(); a typed turn has no
//                                                 voice to time from)
//   {kind: "hold", utterance_id, ms, render_ms}   `pause` arrival -> first silent output block
//   {kind: "interrupt", utterance_id, ms, render_ms}  `interrupt` arrival -> first silent block
//       ms: from the arrival on the output clock (what is heard now, getOutputTimestamp),
//       so it includes the device's output latency; render_ms: from the render clock
//       (ctx.currentTime at arrival), the page's own delay only
//   {kind: "server", ...}                         the server's `metrics` message, as is
// utterances: {uid: {turn, text, energy, energy_after_interrupt, played_ms, interrupted,
//                    paused, resumed, onset_t, ended, reply_at, onset_at, controls}}
//   energy: of the utterance's audio written to the output; played_ms: its audio played
//   (WebSocket: from its frames; WebRTC: from its onset on the track, gate open); controls: one
//   {kind: "pause"|"resume"|"interrupt", t, energy, played_ms} per control, where the
//   utterance stood when the playback took it (energy and played_ms so far)

const MAX_EVENTS = 2000;
const MAX_RECORDS = 1000;

export class Measure {
  constructor() {
    this.events = [];
    this.records = [];
    this.utterances = new Map();
    this.voiceEnds = []; // audio-clock times where a stretch of mic voice ended
    this.lastVoice = -1;
    this.levelT = 0; // audio-clock time of the capture's last level report
    this.micEnergy = 0;
    this.micLevel = 0;
    this.frames = 0;
    this.pending = new Map(); // "kind:uid" -> audio-clock arrival of pause/interrupt
    this.turns = new Map();
    this.typedTurns = new Map(); // turn -> performance.now() its text was sent
  }

  resetSession() {
    // utterance ids restart with each session
    this.utterances = new Map();
    this.pending = new Map();
    this.turns = new Map();
    this.typedTurns = new Map();
  }

  typed(turn, sentAt) {
    this.typedTurns.set(turn, sentAt);
    if (this.typedTurns.size > 64) this.typedTurns.delete(this.typedTurns.keys().next().value);
  }

  event(dir, msg) {
    this.events.push(Object.freeze({ t: performance.now(), dir, msg }));
    if (this.events.length > MAX_EVENTS) this.events.splice(0, this.events.length - MAX_EVENTS);
  }

  record(r) {
    this.records.push(Object.freeze({ ...r, at: performance.now() }));
    if (this.records.length > MAX_RECORDS) this.records.shift();
    if (r.turn !== undefined) {
      const row = this.turn(r.turn);
      if (r.kind === "voice_to_voice") row.page_voice_to_voice_ms = r.ms;
      if (r.kind === "text_to_voice") row.page_text_to_voice_ms = r.ms;
      if (r.kind === "hold") row.hold_ms = r.ms;
      if (r.kind === "interrupt") row.interrupt_ms = r.ms;
    }
  }

  turn(n) {
    if (!this.turns.has(n)) this.turns.set(n, { turn: n });
    return this.turns.get(n);
  }

  utterance(uid) {
    if (!this.utterances.has(uid)) {
      this.utterances.set(uid, {
        utterance_id: uid, turn: null, text: "", energy: 0, energy_after_interrupt: 0,
        played_ms: 0, interrupted: false, paused: 0, resumed: 0, onset_t: null, ended: null,
        reply_at: null, onset_at: null, controls: [],
      });
    }
    return this.utterances.get(uid);
  }

  capture(m) {
    if (m.type === "voice_end") {
      this.voiceEnds.push(m.t);
      if (this.voiceEnds.length > 500) this.voiceEnds.shift();
    } else if (m.type === "level") {
      this.micLevel = m.rms;
      this.lastVoice = m.lastVoice;
      this.levelT = m.t;
      this.micEnergy = m.energy;
    }
  }

  arrival(kind, uid, audioNow, renderNow) {
    this.pending.set(`${kind}:${uid}`, { heard: audioNow, render: renderNow });
  }

  playback(m) {
    if (m.type === "stats") {
      for (const [uid, e] of Object.entries(m.energy)) this.utterance(Number(uid)).energy = e;
      for (const [uid, e] of Object.entries(m.after)) this.utterance(Number(uid)).energy_after_interrupt = e;
      for (const [uid, ms] of Object.entries(m.played)) this.utterance(Number(uid)).played_ms = ms;
    } else if (m.type === "played") {
      this.utterance(m.uid).played_ms = m.played_ms;
    } else if (m.type === "control") {
      this.utterance(m.uid).controls.push({ kind: m.kind, t: m.t, energy: m.energy, played_ms: m.played_ms });
    } else if (m.type === "onset" && m.uid) {
      const u = this.utterance(m.uid);
      if (u.onset_t !== null) return;
      u.onset_t = m.t;
      u.onset_at = performance.now();
      if (u.turn === null) return; // not a reply to a turn (say)
      if (this.typedTurns.has(u.turn)) {
        this.record({ kind: "text_to_voice", utterance_id: m.uid, turn: u.turn,
          ms: u.onset_at - this.typedTurns.get(u.turn) });
        return;
      }
      const before = this.voiceEnds.filter((t) => t < m.t);
      if (this.lastVoice >= 0 && this.lastVoice < m.t) before.push(this.lastVoice);
      if (!before.length) return;
      const voice = Math.max(...before);
      this.record({ kind: "voice_to_voice", utterance_id: m.uid, turn: u.turn,
        ms: (m.t - voice) * 1000, voice_end_t: voice, onset_t: m.t,
        reply_to_onset_ms: u.reply_at === null ? null : u.onset_at - u.reply_at });
    } else if (m.type === "silent_after") {
      const key = `${m.kind}:${m.uid}`;
      const arrived = this.pending.get(key);
      if (arrived === undefined) return;
      this.pending.delete(key);
      const u = this.utterance(m.uid);
      this.record({ kind: m.kind === "pause" ? "hold" : "interrupt", utterance_id: m.uid,
        turn: u.turn === null ? undefined : u.turn, ms: Math.max(0, (m.t - arrived.heard) * 1000),
        render_ms: Math.max(0, (m.t - arrived.render) * 1000) });
    }
  }

  server(msg) {
    // the server's own figures, per turn or per utterance
    this.record({ ...msg, kind: "server", type: undefined });
    let row = null;
    if (msg.turn !== undefined) row = this.turn(msg.turn);
    else if (msg.utterance_id !== undefined) {
      const u = this.utterance(msg.utterance_id);
      if (u.turn !== null) row = this.turn(u.turn);
    }
    if (!row) return null;
    for (const k of ["first_audio_ms", "transcript_ms", "voice_to_voice_ms", "text_to_voice_ms", "barge_in_ms"]) {
      if (typeof msg[k] === "number") row[k] = msg[k];
    }
    return row;
  }

  snapshotUtterances() {
    const out = {};
    for (const [uid, u] of this.utterances) out[uid] = { ...u, controls: u.controls.slice() };
    return out;
  }

  snapshotTurns() {
    return [...this.turns.values()].map((r) => ({ ...r }));
  }
}
