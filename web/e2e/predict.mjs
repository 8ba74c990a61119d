// Predictive echo in Chromium over a slow link (the test puts a delaying
// forwarder between the browser and the relay):
//   node e2e/predict.mjs URL
// 1. With prediction on, typed characters appear (in the overlay) before
//    their echo is on the screen; the screen at rest holds exactly what a
//    run without prediction would (no guess left behind).
// 2. Nothing typed at a `read -s` prompt is ever drawn, neither typed
//    there nor typed ahead of the command's own echo.
// 3. Keystroke → glyph (from keydown in the page), prediction off and on,
//    for a human typing trace (80–250 ms between keys) and for bursts
//    (0–20 ms): p50 and p99; wrong guesses and how long each was visible.
// Prints JSON {ok, text, human, burst, stats} and exits non-zero on failure.
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
  // Types one key and measures the ms from its keydown in the page until
  // its glyph is in the page at its cell (taken before the key): in the
  // overlay's DOM, or in the terminal's buffer once the echo is parsed.
  // Either is painted at the next frame.
  const measureKey = async (ch) => {
    await page.evaluate((c) => {
      const t = window.warrenTerm, b = t.buffer.active;
      const { x, y } = window.warrenPredictor.nextCell();
      const layer = document.querySelector(".predictions");
      let t0 = null;
      document.addEventListener("keydown", () => { t0 = performance.now(); }, { capture: true, once: true });
      window.warrenMeasure = new Promise((resolve) => {
        let done = false;
        const finish = (r) => { if (!done) { done = true; obs.disconnect(); parsed.dispose(); clearTimeout(timer); resolve(r); } };
        const look = () => {
          if (t0 === null) return;
          const onScreen = b.getLine(y)?.getCell(x)?.getChars() === c;
          const guessed = layer.childElementCount > 0 &&
            window.warrenPredictor.guesses.some((g) => g.shown && g.x === x && g.y === y && g.ch === c);
          if (onScreen || guessed) finish({ ms: performance.now() - t0, guessed: guessed && !onScreen });
        };
        const obs = new MutationObserver(look);
        obs.observe(layer, { childList: true, subtree: true, characterData: true });
        const parsed = t.onWriteParsed(look);
        const timer = setTimeout(() => finish({ missed: `${c} at ${x},${y}: ${JSON.stringify(b.getLine(y)?.translateToString(true))}` }), 5000);
      });
    }, ch);
    await page.keyboard.type(ch);
    return page.evaluate(() => window.warrenMeasure);
  };
  // Human pace: 80–250 ms between keys.
  const human = () => page.waitForTimeout(80 + Math.floor(Math.random() * 170));
  // Bursts: 0–20 ms between keys.
  const burst = () => page.waitForTimeout(Math.floor(Math.random() * 20));
  const run = async (mode, word, pace = human) => {
    await page.evaluate((m) => window.warrenPredictor.setMode(m), mode);
    await page.keyboard.type("echo "); // the first key opens the epoch once echoed
    await page.waitForTimeout(400);
    const times = [];
    let early = 0;
    for (const ch of word) {
      const r = await measureKey(ch);
      if (r.missed) fail(`a typed key never showed: ${r.missed}`);
      times.push(r.ms);
      if (r.guessed) early += 1;
      await pace();
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
  const word2 = "burstsoftypingareguessedtoo";
  const offBurst = await run("off", word2, burst);
  const onBurst = await run("always", word2.split("").reverse().join(""), burst);
  if (onBurst.early < word2.length / 2) fail(`in a burst only ${onBurst.early} of ${word2.length} characters appeared before their echo`);
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
  // Typed ahead: the command, Enter and the secret in one burst, before
  // the command's echo is back; then at human pace once it runs. What the
  // overlay shows after the Enter is watched on every frame.
  await page.keyboard.type("read -s y; echo ahead-$y");
  await page.keyboard.press("Enter");
  const watch = page.evaluate(() => new Promise((resolve) => {
    let seen = "";
    const end = performance.now() + 2500;
    const look = () => {
      seen += document.querySelector(".predictions")?.textContent ?? "";
      if (performance.now() > end) resolve(seen); else requestAnimationFrame(look);
    };
    look();
  }));
  await page.keyboard.type("sec");
  for (const ch of "ret") { await human(); await page.keyboard.type(ch); }
  const drawn = await watch;
  await page.keyboard.press("Enter");
  await waitFor(/^ahead-secret$/m);
  if (drawn !== "") fail(`a secret typed ahead was drawn: ${JSON.stringify(drawn)}`);
  const stats = await page.evaluate(() => window.warrenPredictor.stats);
  report = {
    human: {
      off: { p50: pct(off.times, 0.5), p99: pct(off.times, 0.99) },
      on: { p50: pct(on.times, 0.5), p99: pct(on.times, 0.99), unpredicted: on.times.flatMap((t, i) => (t > 50 ? [i] : [])) },
    },
    burst: {
      off: { p50: pct(offBurst.times, 0.5), p99: pct(offBurst.times, 0.99) },
      on: { p50: pct(onBurst.times, 0.5), p99: pct(onBurst.times, 0.99), unpredicted: onBurst.times.flatMap((t, i) => (t > 50 ? [i] : [])) },
    },
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
