// Predictive local echo, mosh-style: characters typed are drawn at once in
// an overlay above the terminal, never into xterm.js's buffer, and each
// guess is confirmed (removed) or dropped against the real screen as the
// session's output arrives.
//
// Epochs keep it honest: after Enter, a control key, a paste, a resize, a
// gap or a reconnect nothing is predicted until the server has echoed one
// typed character where it was typed. So a prompt that does not echo
// (`sudo`, `read -s`, `passwd`) never shows a typed character: its first
// key is never echoed, the epoch never starts.
//
// Modes: "off", "always", or "adaptive" (only when the measured round trip
// is at least ADAPTIVE_MS). Guesses are underlined when the round trip is
// slow (SLOW_MS or more), as mosh does.

const ADAPTIVE_MS = 30;
const SLOW_MS = 250;
/** A guess not confirmed this long after its key (or 3 round trips) is dropped. */
const EXPIRE_MS = 1500;

export class Predictor {
  constructor(term, mode) {
    this.term = term;
    this.mode = ["off", "always", "adaptive"].includes(mode) ? mode : "adaptive";
    this.rtt = 0;
    this.guesses = []; // {ch, x, y, at}
    this.probe = null; // a key typed while the epoch is not confirmed
    this.confirmed = false;
    this.stats = { shown: 0, confirmed: 0, wrong: 0 };
    this.layer = document.createElement("div");
    this.layer.className = "predictions";
    this.layer.setAttribute("aria-hidden", "true");
    Object.assign(this.layer.style, { position: "absolute", inset: "0", pointerEvents: "none", zIndex: "10" });
  }

  /** Puts the overlay above the terminal's screen (after `term.open`). */
  attach() {
    const screen = this.term.element?.querySelector(".xterm-screen");
    if (screen) screen.appendChild(this.layer);
  }

  setRtt(ms) { this.rtt = ms; }

  setMode(mode) { this.mode = mode; this.reset(false); }

  active() {
    return this.mode === "always" || (this.mode === "adaptive" && this.rtt >= ADAPTIVE_MS);
  }

  /** Where the next typed character goes: the cursor, past the guesses shown. */
  nextCell() {
    const b = this.term.buffer.active;
    return { x: b.cursorX + this.guesses.length, y: b.baseY + b.cursorY };
  }

  /** A key the user typed (what `onData` gives), before it is sent. */
  typed(data) {
    const printable = data.length === 1 && data >= " " && data <= "~";
    if (!printable) {
      // Enter, control keys, escape sequences, pastes: a new epoch.
      this.reset(false);
      return;
    }
    const cell = this.nextCell();
    if (cell.x >= this.term.cols - 1) { this.reset(false); return; } // no guessing across a wrap
    if (!this.confirmed) {
      // Not shown: it tells whether this prompt echoes.
      if (this.guesses.length === 0 && !this.probe) this.probe = { ch: data, ...cell, at: Date.now() };
      return;
    }
    if (!this.active()) return;
    this.guesses.push({ ch: data, ...cell, at: Date.now() });
    this.stats.shown += 1;
    this.render();
  }

  cellChar(x, y) {
    const line = this.term.buffer.active.getLine(y);
    return line?.getCell(x)?.getChars() ?? "";
  }

  /** After output was written to the terminal: confirm or drop guesses. */
  check() {
    const now = Date.now();
    if (this.probe) {
      if (this.cellChar(this.probe.x, this.probe.y) === this.probe.ch) {
        this.confirmed = true;
        this.probe = null;
      } else if (now - this.probe.at > EXPIRE_MS) {
        this.probe = null;
      }
    }
    const limit = Math.max(EXPIRE_MS, 3 * this.rtt);
    while (this.guesses.length) {
      const g = this.guesses[0];
      const got = this.cellChar(g.x, g.y);
      if (got === g.ch) {
        this.guesses.shift();
        this.stats.confirmed += 1;
        continue;
      }
      const b = this.term.buffer.active;
      const cursorPast = b.baseY + b.cursorY > g.y || (b.baseY + b.cursorY === g.y && b.cursorX > g.x);
      if ((got !== "" && got !== " ") || cursorPast || now - g.at > limit) {
        // The screen says otherwise: every guess goes, and a new epoch.
        this.stats.wrong += 1;
        this.reset(false);
      }
      break;
    }
    this.render();
  }

  /** Drops every guess; `keepEpoch` keeps predicting (a harmless redraw). */
  reset(keepEpoch) {
    this.guesses = [];
    this.probe = null;
    if (!keepEpoch) this.confirmed = false;
    this.render();
  }

  render() {
    const screen = this.layer.parentElement;
    if (!screen) return;
    if (!this.guesses.length) { this.layer.replaceChildren(); return; }
    const w = screen.clientWidth / this.term.cols, h = screen.clientHeight / this.term.rows;
    const top = this.term.buffer.active.viewportY;
    const slow = this.rtt >= SLOW_MS;
    this.layer.replaceChildren(...this.guesses.map((g) => {
      const s = document.createElement("span");
      s.textContent = g.ch;
      s.className = "guess";
      Object.assign(s.style, {
        position: "absolute", left: `${g.x * w}px`, top: `${(g.y - top) * h}px`, width: `${w}px`, height: `${h}px`,
        lineHeight: `${h}px`, font: "inherit", fontFamily: this.term.options.fontFamily, fontSize: `${this.term.options.fontSize}px`,
        color: "#d8dee9", background: "#101418", textDecoration: slow ? "underline" : "none", whiteSpace: "pre",
      });
      return s;
    }));
  }
}
