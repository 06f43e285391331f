// The state pill: the session's state (the server's) and what the assistant does as
// the user perceives it. Thinking: from the user's final transcript (or typed line) to
// the first audio of the reply, or its failure; also SPEAKING with nothing heard yet (a
// slow reply engine). Speaking: while the reply's audio plays. Only the DOM and this
// bookkeeping: when each happens is the controller's (app.js).

const WORDS = { LISTENING: "Listening", SPEAKING: "Speaking", BARGED_IN: "Barged in", PAUSED: "Paused", CLOSED: "Closed", DISCONNECTED: "Not connected" };
const MAX_LOG = 200;

export class StatePill {
  constructor(el) {
    this.el = el;
    this.state = "DISCONNECTED";
    this.thinking = false;
    this.audible = false;
    this.log = []; // the activity's changes, {t, activity}: read by tests
  }

  setState(state) {
    this.state = state;
    if (state === "LISTENING" || state === "DISCONNECTED" || state === "CLOSED") this.audible = false;
    if (state === "DISCONNECTED" || state === "CLOSED") this.thinking = false;
    this.show();
  }

  setThinking(on) {
    this.thinking = on;
    if (on) this.audible = false;
    this.show();
  }

  heard() {
    this.thinking = false;
    this.audible = true;
    this.show();
  }

  silent() {
    this.audible = false;
    this.thinking = false;
    this.show();
  }

  get activity() {
    if (this.state === "BARGED_IN" || this.state === "PAUSED") return "";
    if (this.audible && this.state === "SPEAKING") return "speaking";
    if (this.thinking || (this.state === "SPEAKING" && !this.audible)) return "thinking";
    return "";
  }

  show() {
    const doing = this.activity;
    const el = this.el;
    el.textContent = doing === "thinking" ? "Thinking…" : doing === "speaking" ? "Speaking" : (WORDS[this.state] || this.state);
    el.dataset.state = this.state;
    if (el.dataset.activity !== doing) {
      this.log.push({ t: performance.now(), activity: doing });
      if (this.log.length > MAX_LOG) this.log.shift();
    }
    el.dataset.activity = doing;
  }
}
