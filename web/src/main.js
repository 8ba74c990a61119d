// Warren's browser terminal: xterm.js over the terminal WebSocket
// (CONTRACT.md: binary frames are terminal bytes; text frames are JSON
// control messages; warren-proto's terminal module is the reference).
// Re-attaches to the same shell after a drop, resuming at the exact output
// offset, and tells "signed out" (close 4401) from a network drop.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { WebLinksAddon } from "@xterm/addon-web-links";
import { WebglAddon } from "@xterm/addon-webgl";
import { SearchAddon } from "@xterm/addon-search";
import { Predictor } from "./predict.js";
import "@xterm/xterm/css/xterm.css";

const $ = (id) => document.getElementById(id);
const dot = $("dot"), status = $("status"), banner = $("banner");
$("sid").textContent = location.hostname.split(".")[0];

const small = Math.min(window.innerWidth, window.innerHeight) < 600;
const term = new Terminal({
  cursorBlink: true,
  fontSize: small ? 12 : 14,
  fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace",
  scrollback: 5000,
  theme: { background: "#101418" },
});
const fit = new FitAddon();
term.loadAddon(fit);
term.loadAddon(new WebLinksAddon());
const search = new SearchAddon();
term.loadAddon(search);
term.open($("term"));
try {
  const gl = new WebglAddon();
  gl.onContextLoss(() => gl.dispose());
  term.loadAddon(gl);
} catch (_) {
  // No WebGL here: the DOM renderer stays.
}
fit.fit();
term.focus();
window.warrenTerm = term; // for tests and debugging

// Predictive echo (predict.js): `?predict=off|adaptive|always` or the
// choice kept in this browser; clicking the round-trip figure cycles it.
const MODES = ["off", "adaptive", "always"];
const predictor = new Predictor(term,
  new URLSearchParams(location.search).get("predict") || localStorage.getItem("warren.predict") || "adaptive",
  // Where typed input stands (a new epoch's probe needs every earlier key
  // acknowledged); null for a terminal that acknowledges nothing.
  () => (tracked ? { end: inputBase + pendingLen, unacked: pendingLen, echo: echoReported } : null));
predictor.attach();
window.warrenPredictor = predictor;
term.onWriteParsed(() => predictor.check());

const enc = new TextEncoder();
// The terminal protocol version this page speaks (warren-proto's VERSION).
const PROTOCOL = 1;
// Close codes after which reconnecting cannot help (warren-proto's close).
const SIGNED_OUT = 4401, FORBIDDEN = 4403, GONE = 4404, VERSION = 4426, BAD = 4400;
let ws = null, terminalId = null, offset = null, exited = false, stopped = false;
let attempt = 0, timer = null, refreshed = false;

function setState(kind, text) {
  dot.className = kind;
  status.textContent = text;
}
function showBanner(text, error, action) {
  banner.textContent = text;
  banner.className = "show" + (error ? " error" : "");
  if (action) {
    const b = document.createElement("button");
    b.textContent = action.label;
    b.onclick = action.run;
    banner.appendChild(b);
  }
}
function hideBanner() { banner.className = ""; }

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

// A read share link: output only (the server drops input too).
let readOnly = false;

// Exactly-once input: what is typed is kept until the terminal acknowledges
// it (input_ack), typed on while disconnected, and sent again from where the
// terminal's hello says it stands; init writes each byte once.
const MAX_PENDING = 256 * 1024;
const newInputId = () => Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
let inputId = newInputId(), inputBase = 0, pending = [], pendingLen = 0, attached = false;
// Off for a terminal that keeps no input streams (an older init): keys are
// then sent as typed, as before, and not kept.
let tracked = true;
// The terminal's input acks say whether it was at a no-echo prompt.
let echoReported = false;
function showPending() {
  const el = $("pending");
  el.hidden = pendingLen === 0 || attached;
  el.textContent = `${pendingLen} typed, waiting`;
}
function typed(bytes) {
  if (readOnly) return;
  lastKeyAt = Date.now();
  if (!tracked) {
    if (attached && ws && ws.readyState === WebSocket.OPEN) ws.send(bytes);
    return;
  }
  if (pendingLen + bytes.length > MAX_PENDING) {
    showBanner("Too much typed while disconnected: these keys were not kept.", true);
    return;
  }
  pending.push(bytes);
  pendingLen += bytes.length;
  if (attached && ws && ws.readyState === WebSocket.OPEN) ws.send(bytes);
  else showPending();
}
function ackInput(n) {
  let drop = n - inputBase;
  while (drop > 0 && pending.length) {
    const c = pending[0];
    const k = Math.min(drop, c.length);
    if (k === c.length) pending.shift(); else pending[0] = c.subarray(k);
    inputBase += k; pendingLen -= k; drop -= k;
  }
  if (pending.length === 0 && n > inputBase) inputBase = n;
}
function resetInput() { pending = []; pendingLen = 0; inputBase = 0; inputId = newInputId(); }

// Round trip, measured every 5 s over the terminal socket itself.
setInterval(() => send({ type: "ping", t: Date.now() }), 5000);
function showRtt(ms) {
  predictor.setRtt(ms);
  const el = $("rtt");
  el.textContent = `${ms} ms`;
  el.className = ms > 300 ? "slow" : "";
  el.title = `round trip to the session; predictive echo: ${predictor.mode} (click to change)`;
}
$("rtt").addEventListener("click", () => {
  const next = MODES[(MODES.indexOf(predictor.mode) + 1) % MODES.length];
  predictor.setMode(next);
  localStorage.setItem("warren.predict", next);
  $("rtt").title = `predictive echo: ${next}`;
});

// Who else is attached to this terminal.
function showViewers(count, names) {
  const el = $("viewers");
  el.hidden = count < 2;
  el.textContent = `${count} here`;
  el.title = `${count} attached${names.length ? ": " + names.join(", ") : ""}`;
}

// Search over scrollback: Ctrl/Cmd-F opens it, Enter/Shift-Enter step, Esc closes.
const searchBox = $("search");
function openSearch() { searchBox.hidden = false; searchBox.focus(); searchBox.select(); }
searchBox.addEventListener("keydown", (e) => {
  if (e.key === "Enter") { e.shiftKey ? search.findPrevious(searchBox.value) : search.findNext(searchBox.value); e.preventDefault(); }
  if (e.key === "Escape") { searchBox.hidden = true; search.clearDecorations?.(); term.focus(); }
});
term.attachCustomKeyEventHandler((e) => {
  if (e.type === "keydown" && (e.ctrlKey || e.metaKey) && !e.altKey && e.key.toLowerCase() === "f") {
    openSearch();
    return false;
  }
  return true;
});

// Copy on select, and OSC 52 (a program setting the clipboard) for the
// people typing, never for a read-only viewer.
term.onSelectionChange(() => {
  const text = term.getSelection();
  if (text && navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).catch(() => {});
});
// OSC 52 is honoured only on the owner's page (never through a share
// link, whose holder did not choose to trust this session) and only within
// 10 s of a key typed there: a session cannot fill the clipboard unasked.
let shared = false, lastKeyAt = 0;
term.parser.registerOscHandler(52, (data) => {
  const b64 = data.split(";").pop();
  if (shared || Date.now() - lastKeyAt > 10000 || !navigator.clipboard || !b64 || b64 === "?") return true;
  try { navigator.clipboard.writeText(new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)))).catch(() => {}); } catch (_) {}
  return true;
});

// Drop files on the terminal: each is uploaded to /root in the session
// (the page's own cookie; a read-only link cannot).
const termEl = $("term");
termEl.addEventListener("dragover", (e) => { if (!readOnly) e.preventDefault(); });
termEl.addEventListener("drop", async (e) => {
  e.preventDefault();
  if (readOnly) return;
  for (const file of e.dataTransfer?.files ?? []) {
    showBanner(`Uploading ${file.name}…`, false);
    try {
      const r = await fetch(`/_warren/upload?name=${encodeURIComponent(file.name)}`, {
        method: "PUT", body: file, credentials: "same-origin",
      });
      if (!r.ok) {
        const why = await r.json().then((j) => j?.error?.message).catch(() => null);
        throw new Error(why || `status ${r.status}`);
      }
      showBanner(`Uploaded ${file.name} to /root/${file.name}.`, false);
      setTimeout(hideBanner, 4000);
    } catch (err) {
      showBanner(`Upload of ${file.name} failed: ${err.message}`, true);
    }
  }
});

// The key bar (phones): keys a touch keyboard lacks; Ctrl applies to the next key.
let ctrlNext = false;
const KEYS = { esc: "\x1b", tab: "\t", up: "\x1b[A", down: "\x1b[B", right: "\x1b[C", left: "\x1b[D" };
for (const b of document.querySelectorAll("#keys button")) {
  b.addEventListener("click", () => {
    const k = b.dataset.key;
    if (k === "ctrl") { ctrlNext = !ctrlNext; b.classList.toggle("on", ctrlNext); }
    else { predictor.typed(KEYS[k]); typed(enc.encode(KEYS[k])); }
    term.focus();
  });
}
if (window.matchMedia("(pointer: coarse)").matches || small) $("keys").hidden = false;
function withCtrl(d) {
  if (!ctrlNext || d.length !== 1) return d;
  ctrlNext = false;
  document.querySelector("#keys [data-key=ctrl]").classList.remove("on");
  const c = d.toUpperCase().charCodeAt(0);
  return c >= 64 && c < 96 ? String.fromCharCode(c - 64) : d;
}

// A state the page cannot leave by itself: say why and what to do.
function stop(kind, title, text) {
  stopped = true;
  clearTimeout(timer);
  setState("closed", kind);
  showBanner(`${title}: ${text}`, true);
}

// A renewal that could not be answered: reconnect later, and renew again
// if the token is still refused then.
function retryRenewal(ms) {
  refreshed = false;
  attempt += 1;
  setState("connecting", "renewing sign-in…");
  timer = setTimeout(connect, ms);
}
function connect() {
  clearTimeout(timer);
  if (stopped) return;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams({ v: PROTOCOL, cols: term.cols, rows: term.rows, input: inputId });
  attached = false;
  if (terminalId !== null) {
    q.set("terminal", terminalId);
    // Resume exactly after the last byte shown: nothing repeated, nothing lost.
    if (offset !== null) q.set("offset", offset);
  }
  setState("connecting", attempt ? "reconnecting…" : "connecting…");
  const sock = new WebSocket(`${proto}//${location.host}/_warren/terminal?${q}`);
  ws = sock;
  sock.binaryType = "arraybuffer";
  sock.onmessage = (ev) => {
    // A socket this page has replaced says nothing any more (its hello
    // must not mark the new one attached before its own).
    if (sock !== ws) return;
    if (typeof ev.data !== "string") {
      if (offset !== null) offset += ev.data.byteLength;
      term.write(new Uint8Array(ev.data));
      return;
    }
    let msg;
    try { msg = JSON.parse(ev.data); } catch (_) { return; }
    if (msg.type === "hello") {
      if ((msg.v ?? 1) !== PROTOCOL) {
        sock.close();
        stop("closed", "Cannot connect", `this page speaks terminal protocol v${PROTOCOL}, the server v${msg.v}. Reload the page.`);
        return;
      }
      // Open only once attached: a refused socket also opens, then closes.
      attempt = 0;
      refreshed = false;
      setState("connected", "connected");
      hideBanner();
      if (terminalId !== null && msg.terminal !== terminalId) {
        term.reset();
        term.write("\x1b[2m[warren: the previous shell ended; this is a new one]\x1b[0m\r\n");
        // Keys typed for the shell that ended are not typed into this one.
        pending = []; pendingLen = 0; inputBase = 0;
      }
      terminalId = msg.terminal ?? null;
      predictor.reset(false);
      // Send again what the terminal has not written yet (a server without
      // input streams cannot say: then nothing is sent twice).
      tracked = msg.input !== undefined && msg.input !== null;
      echoReported = msg.echo === true;
      if (!tracked) { pending = []; pendingLen = 0; }
      else {
        // A terminal that counts less than was acknowledged forgot the
        // stream: what is kept counts from its number.
        if (msg.input < inputBase) inputBase = msg.input;
        ackInput(msg.input);
        for (const c of pending) sock.send(c);
      }
      attached = true;
      showPending();
      offset = msg.offset ?? null;
      if (!readOnly) send({ type: "resize", cols: term.cols, rows: term.rows });
      send({ type: "ping", t: Date.now() });
    } else if (msg.type === "access") {
      shared = true;
      readOnly = msg.mode === "read";
      if (readOnly) predictor.setMode("off");
      $("mode").hidden = !readOnly;
      if (readOnly) $("keys").hidden = true;
      term.options.disableStdin = readOnly;
    } else if (msg.type === "viewers") {
      showViewers(msg.count ?? 0, msg.names ?? []);
    } else if (msg.type === "input_ack") {
      ackInput(msg.offset);
      predictor.acked(msg.offset, msg.noecho === true);
    } else if (msg.type === "pong") {
      showRtt(Math.max(0, Date.now() - msg.t));
    } else if (msg.type === "gap") {
      predictor.reset(false);
      // Output was lost while away: clear the screen; the shell redraws.
      offset = msg.to;
      term.reset();
      term.write(msg.to > msg.from
        ? `\x1b[2m[warren: ${msg.to - msg.from} bytes of output were missed]\x1b[0m\r\n`
        : "\x1b[2m[warren: the terminal's output was reset]\x1b[0m\r\n");
    } else if (msg.type === "exit") {
      exited = true;
      setState("closed", `exited (${msg.code})`);
      showBanner(`The shell exited with code ${msg.code}.`, msg.code !== 0, {
        label: "New shell", run: () => { exited = false; terminalId = null; offset = null; resetInput(); term.reset(); connect(); },
      });
    }
  };
  sock.onclose = (ev) => {
    if (sock !== ws || exited || stopped) return;
    const reason = ev.reason || "connection lost";
    if (ev.code === SIGNED_OUT) {
      // The token expired: renew it with the tab's refresh grant (once per
      // drop), then reconnect; only a refused renewal signs the page out.
      if (!refreshed) {
        refreshed = true;
        setState("connecting", "renewing sign-in…");
        fetch("/_warren/refresh", { method: "POST", credentials: "same-origin" })
          .then((r) => {
            if (r.status === 204) return connect();
            if (r.status === 404) return stop("session ended", "Session ended", "This session has ended.");
            // Busy or rate-limited: try the renewal again later, not "signed out".
            if (r.status === 429 || r.status >= 500) { retryRenewal(r.status === 429 ? 60000 : 1000); return; }
            stop("signed out", "Signed out", `${reason} Open the session link again to sign in.`);
          })
          .catch(() => retryRenewal(1000));
        return;
      }
      return stop("signed out", "Signed out", `${reason} Open the session link again to sign in.`);
    }
    if (ev.code === FORBIDDEN) return stop("not allowed", "Not allowed", reason);
    if (ev.code === GONE) return stop("session ended", "Session ended", reason);
    if (ev.code === VERSION || ev.code === BAD) return stop("closed", "Cannot connect", reason);
    attempt += 1;
    // The first retry comes at once (a relay restarting or draining is back
    // within moments), later ones back off with full jitter up to 10 s.
    const delay = ev.code === 1001 || attempt === 1
      ? 50 + Math.random() * 150
      : Math.random() * Math.min(10000, 250 * 2 ** attempt);
    setState("connecting", "reconnecting…");
    showBanner(`Disconnected (${reason}). Reconnecting…`, false, { label: "Reconnect now", run: connect });
    timer = setTimeout(connect, delay);
  };
}

term.onData((d) => {
  const data = withCtrl(d);
  if (!readOnly) predictor.typed(data);
  typed(enc.encode(data));
});
term.onBinary((d) => {
  const b = new Uint8Array(d.length);
  for (let i = 0; i < d.length; i++) b[i] = d.charCodeAt(i) & 255;
  predictor.reset(false);
  typed(b);
});
term.onResize(({ cols, rows }) => {
  predictor.reset(false);
  if (!readOnly) send({ type: "resize", cols, rows });
});
new ResizeObserver(() => fit.fit()).observe($("term"));
window.addEventListener("online", () => { if (!exited && !stopped && (!ws || ws.readyState > 1)) connect(); });
connect();
