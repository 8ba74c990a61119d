// What the page shows when its connection drops, and that it resumes
// exactly. The page is loaded through a forwarder the test can cut.
//   node e2e/states.mjs URL CUT_URL TOKEN_EXPIRES_AT(unix s) SCREENSHOT.png
// 1. A network drop (the forwarder cuts every connection) shows
//    "reconnecting…", then "connected" again, and output printed across the
//    drop appears exactly once (offset resume: no gap, no repeat).
// 2. After the page's token expired, a drop shows "signed out" (close 4401),
//    not "reconnecting" forever.
// Prints JSON {ok, text} and exits non-zero on failure.
import { launch } from "./browser.mjs";

const [url, cutUrl, expiresAt, shot] = process.argv.slice(2);
if (!url || !cutUrl || !expiresAt || !shot) {
  console.error("usage: node e2e/states.mjs URL CUT_URL TOKEN_EXPIRES_AT SCREENSHOT.png");
  process.exit(2);
}
const browser = await launch();
let ok = false, text = "";
const fail = (m) => { throw new Error(m); };
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 900, height: 560 } });
  const page = await ctx.newPage();
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  const status = () => page.evaluate(() => document.getElementById("status")?.textContent);
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
  // Every status the page shows, in order.
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
  const cut = async () => {
    const r = await fetch(cutUrl);
    if (!r.ok) fail(`cut answered ${r.status}`);
  };

  // 1. A drop in the middle of output.
  await page.click("#term");
  await page.keyboard.type("for i in $(seq 1 30); do echo L$i-$((i*0)); sleep 0.1; done; echo end-$((2*4))");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => {
    const b = window.warrenTerm.buffer.active;
    for (let i = 0; i < b.length; i++) if (/^L5-0$/.test(b.getLine(i)?.translateToString(true) ?? "")) return true;
    return false;
  }, null, { timeout: 20000 });
  await cut();
  await page.waitForFunction(() => window.__states.includes("reconnecting…"), null, { timeout: 10000 });
  await waitStatus("connected", 20000);
  const deadline = Date.now() + 20000;
  while (!/^end-8$/m.test(text = await read())) {
    if (Date.now() > deadline) fail("the loop's output never finished after the drop");
    await page.waitForTimeout(100);
  }
  for (let i = 1; i <= 30; i++) {
    const n = text.split("\n").filter((l) => l === `L${i}-0`).length;
    if (n !== 1) fail(`line L${i} shown ${n} times across the drop`);
  }
  const states1 = await page.evaluate(() => window.__states.slice());
  if (states1.some((s) => s === "signed out")) fail(`signed out on a network drop: ${states1}`);

  // 2. The token expires; the next drop signs the page out.
  const wait = Number(expiresAt) * 1000 - Date.now() + 1500;
  if (wait > 0) await page.waitForTimeout(wait);
  await cut();
  await waitStatus("signed out", 20000);
  const banner = await page.evaluate(() => document.getElementById("banner").textContent);
  if (!/Signed out/.test(banner)) fail(`banner says ${banner}`);
  // It stays signed out rather than retrying forever.
  await page.waitForTimeout(1500);
  if ((await status()) !== "signed out") fail(`left signed out for ${await status()}`);
  await page.screenshot({ path: shot });
  text = `states: ${JSON.stringify(await page.evaluate(() => window.__states))}; banner: ${banner}`;
  ok = true;
} catch (e) {
  text += `\n[error] ${e.message}`;
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok, text }));
process.exit(ok ? 0 : 1);
