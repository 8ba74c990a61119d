// Predictive echo in Chromium over a slow link (the test puts a delaying
// forwarder between the browser and the relay):
//   node e2e/predict.mjs URL
// 1. With prediction on, typed characters appear (in the overlay) before
//    their echo is on the screen; the screen at rest holds exactly what a
//    run without prediction would (no guess left behind).
// 2. Nothing typed at a `read -s` prompt is ever drawn.
// 3. Perceived keystroke → glyph, prediction off and on, for a human typing
//    trace (80–250 ms between keys): p50 and p99.
// Prints JSON {ok, text, off, on, stats} and exits non-zero on failure.
import { launch } from "./browser.mjs";

const [url] = process.argv.slice(2);
if (!url) { console.error("usage: node e2e/predict.mjs URL"); process.exit(2); }
const browser = await launch();
let ok = false, text = "", report = {};
const fail = (m) => { throw new Error(m); };
const pct = (v, q) => { const s = [...v].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(q * s.length))]; };
try {
  const page = await (await browser.newContext({ viewport: { width: 900, height: 560 } })).newPage();
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  await page.goto(url, { waitUntil: "load", timeout: 30000 });
  await page.waitForFunction(() => document.getElementById("status")?.textContent === "connected", null, { timeout: 30000 });
  await page.click("#term");
  const screen = () => page.evaluate(() => {
    const b = window.warrenTerm.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? "");
    return lines.join("\n");
  });
  const overlay = () => page.evaluate(() => document.querySelector(".predictions")?.textContent ?? "");
  const waitFor = async (re, ms = 20000) => {
    const end = Date.now() + ms;
    while (!re.test(text = await screen())) { if (Date.now() > end) fail(`${re} never appeared`); await page.waitForTimeout(50); }
  };
  // Measures one key: ms until it is visible (overlay or screen) at its cell.
  const measureKey = (ch) => page.evaluate((c) => new Promise((resolve) => {
    const t = window.warrenTerm, b = t.buffer.active;
    const x = b.cursorX + (window.warrenPredictor.guesses?.length ?? 0), y = b.baseY + b.cursorY;
    const t0 = performance.now();
    const seen = () => {
      const onScreen = b.getLine(y)?.getCell(x)?.getChars() === c;
      const guessed = [...document.querySelectorAll(".predictions .guess")].some((s) => s.textContent === c);
      if (onScreen || guessed) resolve({ ms: performance.now() - t0, guessed: guessed && !onScreen });
      else requestAnimationFrame(seen);
    };
    requestAnimationFrame(seen);
  }), ch);
  // Human pace: 80–250 ms between keys.
  const human = () => page.waitForTimeout(80 + Math.floor(Math.random() * 170));
  const run = async (mode, word) => {
    await page.evaluate((m) => window.warrenPredictor.setMode(m), mode);
    await page.keyboard.type("echo "); // the first key opens the epoch once echoed
    await page.waitForTimeout(400);
    const times = [];
    let early = 0;
    for (const ch of word) {
      const p = measureKey(ch);
      await page.keyboard.type(ch);
      const r = await p;
      times.push(r.ms);
      if (r.guessed) early += 1;
      await human();
    }
    await page.keyboard.press("Enter");
    await waitFor(new RegExp(`^${word}$`, "m"));
    return { times, early };
  };
  const word = "predictedwordsareshownatonce";
  const off = await run("off", word);
  const on = await run("always", word.split("").reverse().join(""));
  if (on.early < word.length / 2) fail(`only ${on.early} of ${word.length} characters appeared before their echo`);
  if (off.early !== 0) fail("prediction off still guessed");
  // At rest: no guess left, and the screen shows both lines as typed.
  await page.waitForTimeout(500);
  if ((await overlay()) !== "") fail(`a guess was left at rest: ${await overlay()}`);
  // A prompt that does not echo: nothing typed is ever drawn.
  await page.keyboard.type("read -s x; echo got-$x-$((1+1))");
  await page.keyboard.press("Enter");
  await page.waitForTimeout(600);
  for (const ch of "hushhush") {
    await page.keyboard.type(ch);
    for (let i = 0; i < 4; i++) {
      const o = await overlay();
      if (o !== "") fail(`a character typed at read -s was drawn: ${JSON.stringify(o)}`);
      await page.waitForTimeout(40);
    }
  }
  await page.keyboard.press("Enter");
  await waitFor(/^got-hushhush-2$/m);
  if (/^hushhush$/m.test(text) || text.includes("read -s x; echo got-$x-$((1+1))hush")) fail("the secret was echoed");
  const stats = await page.evaluate(() => window.warrenPredictor.stats);
  report = {
    off: { p50: pct(off.times, 0.5), p99: pct(off.times, 0.99) },
    on: { p50: pct(on.times, 0.5), p99: pct(on.times, 0.99) },
    stats,
  };
  ok = true;
} catch (e) {
  text += `\n[error] ${e.message}`;
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok, text: ok ? "" : text, ...report }));
process.exit(ok ? 0 : 1);
