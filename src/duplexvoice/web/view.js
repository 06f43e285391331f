// The conversation as the page shows it: the user's turns (partials updated in place),
// the replies (marked when interrupted) and the latency table. Only the DOM: what to
// show is the controller's (app.js). The log keeps the last MAX_MESSAGES messages, so
// a long session does not grow the page without bound.

const MAX_MESSAGES = 200;
const LATENCY_ROWS = 8;

function fmt(ms) {
  return typeof ms === "number" ? `${Math.round(ms)} ms` : "—";
}

export class ConversationView {
  constructor(ui, session) {
    this.ui = ui;
    this.session = session; // () => the session counter: keys restart with each session
  }

  bubble(key, cls, label) {
    const ui = this.ui;
    let li = ui.log.querySelector(`[data-key="${key}"]`);
    if (!li) {
      li = document.createElement("li");
      li.dataset.key = key;
      li.className = `msg ${cls}`;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = label;
      const body = document.createElement("span");
      body.className = "text";
      li.append(who, body);
      ui.log.append(li);
      while (ui.log.children.length > MAX_MESSAGES) ui.log.firstElementChild.remove();
      ui.empty.hidden = true;
    }
    return li;
  }

  scrollLog() {
    this.ui.log.lastElementChild?.scrollIntoView({ block: "nearest" });
  }

  // A line the user typed, shown at once; the server's final transcript of it takes it
  // over (showTranscript answers true: that turn was typed).
  showTyped(text) {
    const old = this.ui.log.querySelector(`[data-key="typed:${this.session()}"]`);
    if (old) old.dataset.key = `typed-done:${performance.now()}`;
    const li = this.bubble(`typed:${this.session()}`, "user typed", "You (typed)");
    li.querySelector(".text").textContent = text;
    this.scrollLog();
  }

  showTranscript(msg) {
    const session = this.session();
    const typed = this.ui.log.querySelector(`[data-key="typed:${session}"]`);
    if (typed && msg.final && typed.querySelector(".text").textContent.trim() === msg.text.trim()) {
      typed.dataset.key = `s${session}:u${msg.turn}`; // the server's turn for what was typed
      typed.classList.remove("partial");
      return true;
    }
    if (msg.final && !String(msg.text || "").trim()) {
      // Speech with no words in it (a cough, a word Whisper could not make out): the
      // turn's partial bubble, if any, says so; no empty bubble otherwise.
      const shown = this.ui.log.querySelector(`[data-key="s${session}:u${msg.turn}"]`);
      if (shown) {
        shown.classList.remove("partial");
        shown.querySelector(".text").textContent = "(no words heard)";
      }
      return false;
    }
    const li = this.bubble(`s${session}:u${msg.turn}`, "user", "You");
    li.classList.toggle("partial", !msg.final);
    li.querySelector(".text").textContent = msg.text;
    this.scrollLog();
    return false;
  }

  showReply(uid, text) {
    const li = this.bubble(`s${this.session()}:r${uid}`, "bot", "Assistant");
    li.dataset.utterance = String(uid);
    li.querySelector(".text").textContent = text;
    this.scrollLog();
  }

  markInterrupted(uid) {
    const li = this.ui.log.querySelector(`[data-key="s${this.session()}:r${uid}"]`);
    if (!li || li.classList.contains("interrupted")) return;
    li.classList.add("interrupted");
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = "interrupted";
    li.append(tag);
  }

  hasLatencyRow(turn) {
    return this.ui.latency.querySelector(`[data-key="s${this.session()}:t${turn}"]`) !== null;
  }

  showLatency(row) {
    const latency = this.ui.latency;
    const key = `s${this.session()}:t${row.turn}`;
    let tr = latency.querySelector(`[data-key="${key}"]`);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.key = key;
      latency.prepend(tr);
      while (latency.children.length > LATENCY_ROWS) latency.lastElementChild.remove();
    }
    // A typed turn has no voice to voice: its own figure, text sent -> first reply audio
    // (the server's, else the page's).
    const text = row.text_to_voice_ms !== undefined ? row.text_to_voice_ms : row.page_text_to_voice_ms;
    const cells = [row.turn, fmt(row.first_audio_ms), fmt(row.voice_to_voice_ms),
      fmt(row.page_voice_to_voice_ms), fmt(text), fmt(row.barge_in_ms)];
    tr.replaceChildren(...cells.map((c, i) => {
      const td = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) td.scope = "row";
      td.textContent = String(c);
      return td;
    }));
  }
}
