// The microphone's mode: hands-free (always open) or push-to-talk (open while the
// button, or the space bar outside a text field, is held). What opening and closing
// does (muting the capture, the transport's track) is the controller's `onChange`.

function typingTarget(el) {
  return el && (el.tagName === "INPUT" && el.type !== "radio" || el.tagName === "TEXTAREA" || el.tagName === "SELECT");
}

export class MicMode {
  constructor(button, onChange) {
    this.button = button;
    this.onChange = onChange; // (open) => void
    this.mode = "handsfree";
    this.held = false;
    this.open = true;
    for (const radio of document.querySelectorAll('input[name="mode"]')) {
      radio.addEventListener("change", () => {
        this.mode = radio.value;
        button.disabled = this.mode !== "ptt";
        this.hold(false);
        this.apply();
      });
    }
    button.addEventListener("pointerdown", (e) => { e.preventDefault(); this.hold(true); });
    for (const ev of ["pointerup", "pointerleave", "pointercancel"]) button.addEventListener(ev, () => this.hold(false));
    document.addEventListener("keydown", (e) => {
      if (e.code !== "Space" || this.mode !== "ptt" || typingTarget(e.target)) return;
      e.preventDefault(); // no page scroll, no button click
      if (!e.repeat) this.hold(true);
    });
    document.addEventListener("keyup", (e) => {
      if (e.code !== "Space" || this.mode !== "ptt" || typingTarget(e.target)) return;
      e.preventDefault();
      this.hold(false);
    });
    window.addEventListener("blur", () => this.hold(false));
  }

  apply() {
    this.open = this.mode === "handsfree" || this.held;
    this.onChange(this.open);
    this.button.setAttribute("aria-pressed", String(this.held));
    this.button.classList.toggle("held", this.held);
  }

  hold(held) {
    if (this.held === held) return;
    this.held = held;
    this.apply();
  }
}
