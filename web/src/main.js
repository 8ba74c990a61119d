// Warren's browser terminal: xterm.js over the terminal WebSocket
// (CONTRACT.md: binary frames are terminal bytes; text frames are JSON
// control messages). Re-attaches to the same shell after a drop.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { WebLinksAddon } from "@xterm/addon-web-links";
import { WebglAddon } from "@xterm/addon-webgl";
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

const enc = new TextEncoder();
let ws = null, terminalId = null, exited = false, attempt = 0, timer = null;

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

function connect() {
  clearTimeout(timer);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams({ cols: term.cols, rows: term.rows });
  if (terminalId !== null) q.set("terminal", terminalId);
  setState("connecting", attempt ? `reconnecting (attempt ${attempt})…` : "connecting…");
  ws = new WebSocket(`${proto}//${location.host}/_warren/terminal?${q}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    attempt = 0;
    setState("connected", "connected");
    hideBanner();
    send({ type: "resize", cols: term.cols, rows: term.rows });
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") {
      term.write(new Uint8Array(ev.data));
      return;
    }
    let msg;
    try { msg = JSON.parse(ev.data); } catch (_) { return; }
    if (msg.type === "hello") terminalId = msg.terminal;
    else if (msg.type === "exit") {
      exited = true;
      setState("closed", `exited (${msg.code})`);
      showBanner(`The shell exited with code ${msg.code}.`, msg.code !== 0, {
        label: "New shell", run: () => { exited = false; terminalId = null; term.reset(); connect(); },
      });
    }
  };
  ws.onclose = (ev) => {
    if (exited) return;
    const reason = ev.reason || "connection lost";
    if (ev.code === 4401 || ev.code === 4403 || ev.code === 4404) {
      setState("closed", "closed");
      showBanner(`Disconnected: ${reason}. Open the session link again to get a fresh token.`, true);
      return;
    }
    attempt += 1;
    // Full-jitter backoff, capped at 10 s.
    const delay = Math.random() * Math.min(10000, 500 * 2 ** attempt);
    setState("connecting", "disconnected");
    showBanner(`Disconnected (${reason}). Reconnecting in ${(delay / 1000).toFixed(1)} s…`, false, {
      label: "Reconnect now", run: connect,
    });
    timer = setTimeout(connect, delay);
  };
}

term.onData((d) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
term.onBinary((d) => {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const b = new Uint8Array(d.length);
  for (let i = 0; i < d.length; i++) b[i] = d.charCodeAt(i) & 255;
  ws.send(b);
});
term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
new ResizeObserver(() => fit.fit()).observe($("term"));
window.addEventListener("online", () => { if (!exited && (!ws || ws.readyState > 1)) connect(); });
connect();
