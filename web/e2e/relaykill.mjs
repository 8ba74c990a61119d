// A tab across relay crashes, the second after its token expired.
//   node e2e/relaykill.mjs URL KILL_URL TOKEN_EXPIRES_AT(unix s) SCREENSHOT.png [once]
// KILL_URL answers once the relay was SIGKILLed and is listening again (or,
// for a drain, once the relay was told to stop). With `once`, only step 1.
// 1. A loop prints a numbered line every 250 ms; the relay is killed and
//    restarted: the page shows "reconnecting…", then "connected".
// 2. After the token (and its 5 s leeway) expired, the relay is killed and
//    restarted again: the page renews its token (never "signed out") and
//    resumes.
// Every line is shown exactly once, and the shell that prints its PID
// afterwards is the one that printed it before.
// With `typing` as the sixth argument, a step 0 first: text typed at about
// 25 keys a second into `cat > file` while the relay is killed (one more
// kill) reaches the file exactly: nothing lost, nothing twice.
// Prints JSON {ok, text} and exits non-zero on failure.
import { launch } from "./browser.mjs";

import { createHash } from "node:crypto";

const [url, killUrl, expiresAt, shot, once, typing] = process.argv.slice(2);
if (!url || !killUrl || !expiresAt || !shot) {
  console.error("usage: node e2e/relaykill.mjs URL KILL_URL TOKEN_EXPIRES_AT SCREENSHOT.png");
  process.exit(2);
}
const LINES = 120;
const browser = await launch();
let ok = false, text = "";
const fail = (m) => { throw new Error(m); };
try {
  const ctx = await browser.newContext({ viewport: { width: 900, height: 560 } });
  const page = await ctx.newPage();
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  const waitStatus = (want, timeout) =>
    page.waitForFunction((w) => document.getElementById("status")?.textContent === w, want, { timeout });
  for (let attempt = 1; ; attempt++) {
    try {
      await page.goto(url, { waitUntil: "load", timeout: 30000 });
      await waitStatus("connected", 20000);
      break;
    } catch (e) {
      if (attempt >= 5) throw e;
      console.error(`[retry] ${e.message.split("\n")[0]}`);
      await page.waitForTimeout(200 * attempt);
    }
  }
  await page.evaluate(() => {
    window.__states = [];
    new MutationObserver(() => window.__states.push(document.getElementById("status").textContent))
      .observe(document.getElementById("status"), { childList: true, characterData: true, subtree: true });
  });
  const read = () => page.evaluate(() => {
    const b = window.warrenTerm.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? "");
    return lines.join("\n");
  });
  const waitLine = async (re, ms, what) => {
    const deadline = Date.now() + ms;
    while (!re.test(text = await read())) {
      if (Date.now() > deadline) fail(`${what} never appeared`);
      await page.waitForTimeout(100);
    }
  };
  const kill = async () => {
    const r = await fetch(killUrl);
    if (!r.ok) fail(`kill answered ${r.status}`);
  };
  const pid = async () => {
    await page.keyboard.type("echo PID-$$-$((1+1))");
    await page.keyboard.press("Enter");
    await waitLine(/^PID-\d+-2$/m, 20000, "the shell's PID");
    const all = [...text.matchAll(/^PID-(\d+)-2$/gm)];
    return all[all.length - 1][1];
  };

  await page.click("#term");
  if (typing === "typing") {
    // 0. Typing through a crash: every key reaches the file once.
    await page.keyboard.type("cat > /tmp/typed");
    await page.keyboard.press("Enter");
    const words = Array.from({ length: 48 }, (_, i) => `w${i}-${(i * 7919) % 1000}`);
    let typed = "";
    const typeAll = (async () => {
      for (let i = 0; i < words.length; i++) {
        const chunk = words[i] + (i % 6 === 5 ? "\n" : " ");
        await page.keyboard.type(chunk, { delay: 40 });
        typed += chunk;
      }
    })();
    await page.waitForTimeout(1500);
    await kill();
    await typeAll;
    if (!typed.endsWith("\n")) { await page.keyboard.press("Enter"); typed += "\n"; }
    await waitStatus("connected", 30000);
    await page.keyboard.press("Control+D");
    const want = createHash("sha256").update(typed).digest("hex");
    await page.keyboard.type("sha256sum /tmp/typed; wc -c < /tmp/typed; echo sum-$((1+1))");
    await page.keyboard.press("Enter");
    await waitLine(/^sum-2$/m, 30000, "the file's checksum");
    if (!text.includes(want)) {
      await page.keyboard.type("cat /tmp/typed; echo cat-$((1+1))");
      await page.keyboard.press("Enter");
      await waitLine(/^cat-2$/m, 20000, "the file");
      fail(`the file is not what was typed (${typed.length} bytes, sha256 ${want}); screen:\n${text}`);
    }
    text = "";
    await page.evaluate(() => { window.__states = []; });
  }
  const before = await pid();
  await page.keyboard.type(`for i in $(seq 1 ${LINES}); do echo N$i-$((i*0)); sleep 0.25; done; echo end-$((2*4))`);
  await page.keyboard.press("Enter");
  await waitLine(/^N5-0$/m, 20000, "line N5");

  // 1. A crash while the token is fresh.
  await kill();
  await page.waitForFunction(() => window.__states.includes("reconnecting…"), null, { timeout: 15000 });
  await waitStatus("connected", 20000);
  const firstBack = await page.evaluate(() => window.__states.length);

  // 2. A crash after the token expired (and the relay's 5 s leeway).
  if (once !== "once") {
    const wait = Number(expiresAt) * 1000 - Date.now() + 6500;
    if (wait > 0) await page.waitForTimeout(wait);
    await kill();
    await page.waitForFunction((n) => window.__states.length > n && document.getElementById("status").textContent === "connected",
      firstBack, { timeout: 30000 });
  }
  const states = await page.evaluate(() => window.__states.slice());
  if (states.includes("signed out")) fail(`signed out: ${states}`);
  if (once !== "once" && !states.includes("renewing sign-in…")) fail(`the token was not renewed: ${states}`);

  await waitLine(/^end-8$/m, LINES * 250 + 30000, "the loop's end");
  for (let i = 1; i <= LINES; i++) {
    const n = text.split("\n").filter((l) => l === `N${i}-0`).length;
    if (n !== 1) fail(`line N${i} shown ${n} times across the crashes`);
  }
  const after = await pid();
  if (after !== before) fail(`shell PID ${before} before, ${after} after`);
  await page.screenshot({ path: shot });
  text = `states: ${JSON.stringify(states)}; pid ${before} before and after; ${LINES} lines once each`;
  ok = true;
} catch (e) {
  text += `\n[error] ${e.message}`;
  try { text += `\n[states] ${JSON.stringify(await browser.contexts()[0].pages()[0].evaluate(() => window.__states))}`; } catch (_) {}
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok, text }));
process.exit(ok ? 0 : 1);
