// Test only: what the page received on its WebSockets, in arrival order, audio frames
// included (the page itself counts frames but does not keep them). Injected by
// tests/support/browser.py as a Playwright init script, before the page's scripts.
//
// window.__wire: [{i, socket, type, utterance_id, sequence?}], one per message, in the
// order the page got them; `type` is the JSON message's type, or "audio" for a
// binary audio frame (its utterance id and sequence from the 12-byte header).
(() => {
  const wire = [];
  let sockets = 0;

  function record(socket, data) {
    const entry = { i: wire.length, socket };
    if (typeof data === "string") {
      let msg;
      try { msg = JSON.parse(data); } catch { msg = {}; }
      entry.type = msg.type;
      if (msg.utterance_id !== undefined) entry.utterance_id = msg.utterance_id;
    } else if (data instanceof ArrayBuffer && data.byteLength >= 12) {
      const head = new DataView(data, 0, 12);
      entry.type = "audio";
      entry.utterance_id = head.getUint32(4, true);
      entry.sequence = head.getUint32(8, true);
    } else {
      entry.type = "binary?";
    }
    wire.push(entry);
  }

  const Native = window.WebSocket;
  class RecordedWebSocket extends Native {
    constructor(...args) {
      super(...args);
      const socket = ++sockets;
      // Added before the page sets onmessage: this listener sees each message first.
      this.addEventListener("message", (e) => record(socket, e.data));
    }
  }
  window.WebSocket = RecordedWebSocket;

  Object.defineProperty(window, "__wire", { get: () => wire.slice() });
})();
