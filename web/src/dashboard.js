// Warren's dashboard at the apex domain: sessions, share links,
// recordings and (for the operator's key) nodes, over the public API at
// this same origin (the relay forwards /v1/ to control). The API key lives
// in this script's memory only: no cookie, no storage.
import { Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";

const $ = (id) => document.getElementById(id);
let key = null;

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!r.ok) throw new Error(data?.error?.message ?? `${r.status}`);
  return data;
}

function say(text, error) {
  $("msg").textContent = text;
  $("msg").className = error ? "error" : "ok";
}

const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const mins = (s) => (s < 3600 ? `${Math.max(0, Math.round(s / 60))} min` : `${(s / 3600).toFixed(1)} h`);
const now = () => Math.floor(Date.now() / 1000);

// A session host at this page's own scheme and port.
const sessionUrl = (id, token) => `${location.protocol}//${id}.${location.host}/?token=${encodeURIComponent(token)}`;

function dialog(title, ...content) {
  const body = $("dialog-body");
  body.replaceChildren(el("h2", {}, title), ...content);
  if (!$("dialog").open) $("dialog").showModal();
}

async function openSession(id) {
  const t = await api("POST", `/v1/sessions/${id}/token`, { scope: "terminal" });
  window.open(sessionUrl(id, t.token), "_blank", "noopener");
}

async function copySsh(s) {
  await navigator.clipboard?.writeText(s.ssh).catch(() => {});
  say(`Copied: ${s.ssh} (the password is a session token: warren session ssh ${s.id})`);
}

async function shares(id) {
  const list = await api("GET", `/v1/sessions/${id}/shares`);
  const rows = list.shares.map((sh) => el("tr", {},
    el("td", {}, sh.id), el("td", {}, sh.mode), el("td", {}, sh.name ?? ""), el("td", {}, `in ${mins(sh.expires_at - now())}`),
    el("td", {}, el("button", { class: "danger", onclick: async () => { await api("DELETE", `/v1/sessions/${id}/shares/${sh.id}`); shares(id); } }, "Revoke"))));
  const made = el("p", { id: "share-link" });
  const make = (mode) => async () => {
    const sh = await api("POST", `/v1/sessions/${id}/share`, { mode, ttl_seconds: 3600 });
    const link = sessionUrl(id, sh.token);
    made.replaceChildren(`${mode} link (1 hour): `, el("code", { "data-testid": "share-url" }, link));
    await navigator.clipboard?.writeText(link).catch(() => {});
    const again = await api("GET", `/v1/sessions/${id}/shares`);
    table.tBodies[0].replaceChildren(...again.shares.map((s) => el("tr", {}, el("td", {}, s.id), el("td", {}, s.mode), el("td", {}, s.name ?? ""), el("td", {}, `in ${mins(s.expires_at - now())}`),
      el("td", {}, el("button", { class: "danger", onclick: async () => { await api("DELETE", `/v1/sessions/${id}/shares/${s.id}`); shares(id); } }, "Revoke")))));
  };
  const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Link"), el("th", {}, "Mode"), el("th", {}, "Name"), el("th", {}, "Expires"), el("th", {}))), el("tbody", {}, ...rows));
  dialog(`Share ${id}`,
    el("p", {}, el("button", { onclick: make("read") }, "New read-only link"), " ", el("button", { onclick: make("write") }, "New link that can type")),
    made, table);
}

async function recordings(id) {
  const list = await api("GET", `/v1/sessions/${id}/recordings`);
  const items = list.recordings.map((r) => el("li", {}, `terminal ${r.terminal}, ${r.bytes} bytes${r.truncated ? " (truncated)" : ""} `,
    el("button", { onclick: () => play(id, r) }, "Play"), " ",
    el("button", { onclick: () => download(id, r) }, "Download")));
  dialog(`Recordings of ${id}`, items.length ? el("ul", {}, ...items) : el("p", { class: "muted" }, "No recordings yet."));
}

async function castOf(r) {
  const res = await fetch(r.url, { headers: { authorization: `Bearer ${key}` } });
  if (!res.ok) throw new Error(`download failed: ${res.status}`);
  return res.text();
}

async function download(id, r) {
  const blob = new Blob([await castOf(r)], { type: "application/x-asciicast" });
  const a = el("a", { href: URL.createObjectURL(blob), download: `${id}-${r.terminal}.cast` });
  a.click();
}

// Replays an asciicast v2 in xterm.js: output and resizes at their times
// (pauses longer than 1 s are shortened).
async function play(id, r) {
  const lines = (await castOf(r)).split("\n").filter(Boolean);
  const header = JSON.parse(lines.shift());
  const box = el("div", { id: "player", "data-testid": "player" });
  dialog(`Terminal ${r.terminal} of ${id}`, box);
  const term = new Terminal({ cols: header.width, rows: header.height, convertEol: false, disableStdin: true, theme: { background: "#101418" } });
  term.open(box);
  window.warrenPlayer = term; // for tests
  let last = 0;
  for (const l of lines) {
    let ev;
    try { ev = JSON.parse(l); } catch (_) { continue; }
    const wait = Math.min(1, Math.max(0, ev[0] - last));
    last = ev[0];
    if (wait > 0.005) await new Promise((res) => setTimeout(res, wait * 1000));
    if (ev[1] === "o") term.write(ev[2]);
    else if (ev[1] === "r") { const [c, rws] = ev[2].split("x").map(Number); if (c && rws) term.resize(c, rws); }
  }
  box.dataset.done = "true";
}

function actions(s) {
  const live = s.status === "running" || s.status === "pending";
  const b = (label, run, cls) => el("button", { onclick: () => run().catch((e) => say(e.message, true)), ...(cls ? { class: cls } : {}) }, label);
  return el("td", { class: "actions" },
    ...(live ? [b("Open", () => openSession(s.id), "primary"), b("SSH", () => copySsh(s)), b("Share", () => shares(s.id))] : []),
    b("Recordings", () => recordings(s.id)),
    ...(live ? [b("Delete", async () => { await api("DELETE", `/v1/sessions/${s.id}`); say(`Session ${s.id} is stopping.`); refresh(); }, "danger")] : []));
}

async function refresh() {
  const list = await api("GET", "/v1/sessions");
  const rows = list.sessions
    .filter((s) => s.status !== "stopped" || now() - s.created_at < 3600)
    .map((s) => el("tr", { "data-session": s.id },
      el("td", {}, s.id), el("td", {}, s.status), el("td", { class: "wide" }, s.node),
      el("td", { class: "wide" }, `${s.memory_mb} MB`), el("td", { class: "wide" }, s.disk_mb ? `${s.disk_mb} MB` : "default"),
      el("td", { class: "wide" }, mins(now() - s.created_at)), el("td", {}, mins(s.expires_at - now())), actions(s)));
  $("sessions").tBodies[0].replaceChildren(...rows);
  try {
    const nodes = await api("GET", "/v1/nodes");
    $("nodes-section").hidden = false;
    const act = (n, what) => el("button", { onclick: async () => { await api("POST", `/v1/nodes/${n.id}/${what}`); refresh(); } }, what);
    $("nodes").tBodies[0].replaceChildren(...nodes.nodes.map((n) => el("tr", {},
      el("td", {}, n.id), el("td", {}, n.cordoned ? `${n.state} (cordoned)` : n.state), el("td", {}, `${n.free_mb} MB`),
      el("td", {}, String(n.sessions ?? "")), el("td", { class: "wide" }, n.security_profile ?? ""),
      el("td", { class: "actions" }, n.cordoned ? act(n, "uncordon") : act(n, "cordon"), act(n, "drain")))));
  } catch (_) {
    $("nodes-section").hidden = true; // not the operator's key
  }
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  key = $("key").value.trim();
  $("key").value = "";
  try {
    await refresh();
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    say("");
  } catch (err) {
    key = null;
    say(`Sign-in failed: ${err.message}`, true);
    $("app").hidden = false;
    $("sessions").tBodies[0].replaceChildren();
  }
});
$("signout").addEventListener("click", () => { key = null; location.reload(); });
$("create").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const body = {};
  if (f.get("image")) body.image = f.get("image");
  if (f.get("memory_mb")) body.memory_mb = Number(f.get("memory_mb"));
  if (f.get("ttl")) body.ttl_seconds = Number(f.get("ttl"));
  say("Creating…");
  try {
    const s = await api("POST", "/v1/sessions", body);
    say(`Session ${s.id} is running.`);
    await refresh();
  } catch (err) {
    say(`Create failed: ${err.message}`, true);
  }
});
// A closed dialog keeps nothing (a player stops drawing into a gone box).
$("dialog").addEventListener("close", () => $("dialog-body").replaceChildren());
setInterval(() => { if (key) refresh().catch(() => {}); }, 10000);
