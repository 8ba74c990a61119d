// Predictive local echo, mosh-style: characters typed are drawn at once in
// an overlay above the terminal, never into xterm.js's buffer, and each
// guess is confirmed (removed) or dropped against the real screen as the
// session's output arrives.
//
// Every printable key becomes a guess at the cell after the previous one.
// Epochs keep it honest: after Enter, a control key, a paste, a resize, a
// gap or a reconnect the guesses are kept hidden until the epoch's probe is
// echoed where it was typed. The probe is a key typed when the terminal has
// acknowledged all earlier input, and it counts only once its own
// acknowledgement says the terminal was not at a password prompt (init
// reads the PTY's modes when it writes the key: canonical with echo off is
// `read -s`, `sudo`, `passwd`). So neither a prompt that does not echo nor
// a slow command's lagging echo of earlier keys can open an epoch there.
// A terminal that does not report its echo state (an older init) gets no
// guesses at all. The modes are those of the session's own PTY: a program
// that runs its own terminal inside (ssh, tmux) keeps that PTY raw, so a
// password prompt on the far side is guarded only by the epoch rule.
//
// Modes: "off", "always", or "adaptive" (only when the measured round trip
// is at least ADAPTIVE_MS). Guesses are underlined when the round trip is
// slow (SLOW_MS or more), as mosh does.

const ADAPTIVE_MS = 30;
const SLOW_MS = 250;
/** A guess not confirmed this long after its key (or 3 round trips) is dropped. */
const EXPIRE_MS = 1500;
/** How often guesses are checked against the screen while any is waiting. */
const TICK_MS = 100;

const blank = (c) => c === "" || c === " ";

export class Predictor {
  /**
   * `input()` says where the typed input stands: `{end, unacked, echo}`,
   * bytes typed so far, those the terminal has not acknowledged, and
   * whether its acknowledgements report the echo state; or null for a
   * terminal that acknowledges nothing (an older init).
   */
  constructor(term, mode, input = () => null) {
    this.term = term;
    this.mode = ["off", "always", "adaptive"].includes(mode) ? mode : "adaptive";
    this.input = input;
    this.rtt = 0;
    this.guesses = []; // {ch, x, y, at, shown, shownAt, probe, end, echoes}
    this.confirmed = false;
    this.timer = null;
    // wrongMs: how long each wrong guess was visible (the last 100).
    this.stats = { shown: 0, confirmed: 0, wrong: 0, wrongMs: [] };
    this.layer = document.createElement("div");
    this.layer.className = "predictions";
    this.layer.setAttribute("aria-hidden", "true");
    Object.assign(this.layer.style, { position: "absolute", inset: "0", pointerEvents: "none", zIndex: "10" });
  }

  /** Puts the overlay above the terminal's screen (after `term.open`). */
  attach() {
    const screen = this.term.element?.querySelector(".xterm-screen");
    if (screen) screen.appendChild(this.layer);
    // Guesses sit on buffer rows: scrolling moves them with the text.
    this.term.onScroll(() => this.render());
  }

  setRtt(ms) { this.rtt = ms; }

  setMode(mode) { this.mode = mode; this.reset(false); }

  active() {
    return this.mode === "always" || (this.mode === "adaptive" && this.rtt >= ADAPTIVE_MS);
  }

  /** Where the next typed character goes: after the last guess, else the cursor. */
  nextCell() {
    const last = this.guesses[this.guesses.length - 1];
    if (last) return { x: last.x + 1, y: last.y };
    const b = this.term.buffer.active;
    return { x: b.cursorX, y: b.baseY + b.cursorY };
  }

  /** A key the user typed (what `onData` gives), before it is sent. */
  typed(data) {
    const printable = data.length === 1 && data >= " " && data <= "~";
    if (!printable || this.mode === "off") {
      // Enter, control keys, escape sequences, pastes: a new epoch.
      this.reset(false);
      return;
    }
    const cell = this.nextCell();
    if (cell.x >= this.term.cols - 1) { this.reset(false); return; } // no guessing across a wrap
    const g = { ch: data, ...cell, at: Date.now(), shown: false, probe: false, end: 0, echoes: false };
    if (!this.confirmed && !this.guesses.some((o) => o.probe)) {
      const i = this.input();
      if (i !== null && i.echo && i.unacked === 0) Object.assign(g, { probe: true, end: i.end + 1 });
    }
    this.guesses.push(g);
    if (this.confirmed && this.active()) this.show(g);
    this.tick();
    this.render();
  }

  show(g) {
    if (g.shown) return;
    g.shown = true;
    g.shownAt = Date.now();
    this.stats.shown += 1;
  }

  /**
   * The terminal wrote `offset` bytes of input; `noecho`: at a prompt that
   * does not echo. Such a prompt ends the epoch and hides every guess.
   */
  acked(offset, noecho) {
    if (noecho) { this.reset(false); return; }
    for (const g of this.guesses) if (g.probe && g.end <= offset) g.echoes = true;
    this.check();
  }

  cellChar(x, y) {
    const line = this.term.buffer.active.getLine(y);
    return line?.getCell(x)?.getChars() ?? "";
  }

  /** After output was written to the terminal (and on a timer): confirm or drop guesses. */
  check() {
    const now = Date.now();
    const limit = Math.max(EXPIRE_MS, 3 * this.rtt);
    const b = this.term.buffer.active;
    const cy = b.baseY + b.cursorY;
    while (this.guesses.length) {
      const g = this.guesses[0];
      const got = this.cellChar(g.x, g.y);
      if (got === g.ch) {
        // The probe opens the epoch only once its acknowledgement said the
        // terminal echoes (until then it waits, shown as nothing).
        if (g.probe && !this.confirmed && !g.echoes) {
          if (now - g.at > limit) this.reset(false);
          break;
        }
        this.guesses.shift();
        if (g.probe && !this.confirmed) {
          // The prompt echoes: show what was typed after the probe.
          this.confirmed = true;
          if (this.active()) this.guesses.forEach((o) => this.show(o));
        }
        if (g.shown) this.stats.confirmed += 1;
        continue;
      }
      const cursorPast = cy > g.y || (cy === g.y && b.cursorX > g.x);
      if (!blank(got) || cursorPast || now - g.at > limit) {
        // The screen says otherwise: every guess goes, and a new epoch.
        if (g.shown) {
          this.stats.wrong += 1;
          this.stats.wrongMs = [...this.stats.wrongMs.slice(-99), now - g.shownAt];
        }
        this.reset(false);
      }
      break;
    }
    if (!this.guesses.length) this.stopTick();
    this.render();
  }

  tick() {
    if (this.timer === null) this.timer = setInterval(() => this.check(), TICK_MS);
  }

  stopTick() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** Drops every guess; `keepEpoch` keeps predicting (a harmless redraw). */
  reset(keepEpoch) {
    this.guesses = [];
    this.stopTick();
    if (!keepEpoch) this.confirmed = false;
    this.render();
  }

  render() {
    const screen = this.layer.parentElement;
    if (!screen) return;
    const shown = this.guesses.filter((g) => g.shown);
    if (!shown.length) { this.layer.replaceChildren(); return; }
    const w = screen.clientWidth / this.term.cols, h = screen.clientHeight / this.term.rows;
    const top = this.term.buffer.active.viewportY;
    const slow = this.rtt >= SLOW_MS;
    this.layer.replaceChildren(...shown.filter((g) => g.y >= top && g.y < top + this.term.rows).map((g) => {
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
