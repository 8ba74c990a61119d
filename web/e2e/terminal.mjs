// Opens a session URL in headless Chromium (Debian's, never a downloaded
// one), types a command into the terminal and waits for its output.
//   node e2e/terminal.mjs URL SCREENSHOT.png
// Prints JSON {ok, text} and exits non-zero on failure.
import { launch } from "./browser.mjs";

const [url, shot] = process.argv.slice(2);
if (!url || !shot) {
  console.error("usage: node e2e/terminal.mjs URL SCREENSHOT.png");
  process.exit(2);
}
const browser = await launch();
let ok = false, text = "";
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 900, height: 560 } });
  const page = await ctx.newPage();
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  // Tests running beside this one create and remove Docker networks, which
  // Chromium reports as ERR_NETWORK_CHANGED, for the page or for one of its
  // scripts: load it again when either happens (at most 5 times).
  const connected = (timeout) =>
    page.waitForFunction(() => document.getElementById("status")?.textContent === "connected", null, { timeout });
  for (let attempt = 1; ; attempt++) {
    try {
      await page.goto(url, { waitUntil: "load", timeout: 30000 });
      // The token must be gone from the address bar (exchanged for a cookie).
      if (page.url().includes("token=")) throw new Error(`token still in URL: ${page.url()}`);
      await connected(20000);
      break;
    } catch (e) {
      if (attempt >= 5 || String(e.message).includes("token still in URL")) throw e;
      console.error(`[retry] ${e.message.split("\n")[0]}`);
      await page.waitForTimeout(200 * attempt);
    }
  }
  const connectedLong = () => connected(60000);
  const read = () => page.evaluate(() => {
    const b = window.warrenTerm.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? "");
    return lines.join("\n");
  });
  // Keystrokes typed while the page is reconnecting (networks that tests
  // beside this one create make Chromium drop connections) are lost, as in
  // any terminal: type again, at most three times.
  for (let attempt = 1; attempt <= 3 && !ok; attempt++) {
    await connectedLong();
    await page.click("#term");
    await page.keyboard.type("echo warren-$((6*7))");
    await page.keyboard.press("Enter");
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      text = await read();
      if (/^warren-42$/m.test(text)) { ok = true; break; }
      await page.waitForTimeout(100);
    }
    if (!ok) console.error(`[retry] no output after attempt ${attempt}`);
  }
  // A phone-sized window: the terminal still fills it.
  await page.screenshot({ path: shot });
  await page.setViewportSize({ width: 390, height: 700 });
  await page.waitForTimeout(300);
  await page.screenshot({ path: shot.replace(/\.png$/, "-phone.png") });
  const fits = await page.evaluate(() => {
    const r = document.querySelector(".xterm-screen").getBoundingClientRect();
    return r.width <= window.innerWidth && r.width > window.innerWidth * 0.8;
  });
  if (!fits) { ok = false; text += "\n[terminal does not fit a phone-sized window]"; }
} catch (e) {
  text += `\n[error] ${e.message}`;
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok, text }));
process.exit(ok ? 0 : 1);
