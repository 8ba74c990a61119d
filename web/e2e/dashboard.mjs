// The dashboard and a read-only share link in headless Chromium, as two
// people would use them:
//   node e2e/dashboard.mjs DASHBOARD_URL API_KEY ARTIFACTS_DIR
// The owner signs in, creates a session, opens its terminal and types; a
// viewer opens a read-only link on a phone-sized screen, sees the owner's
// output live, and what the viewer types never reaches the shell (checked
// in the shell); the owner plays the terminal's recording and deletes the
// session. Prints JSON {ok, id, step} and exits non-zero on failure.
import { launch } from "./browser.mjs";

const [dash, key, dir] = process.argv.slice(2);
if (!dash || !key || !dir) {
  console.error("usage: node e2e/dashboard.mjs DASHBOARD_URL API_KEY ARTIFACTS_DIR");
  process.exit(2);
}
const browser = await launch();
let step = "start", id = null, ok = false;
const readTerm = (page, name = "warrenTerm") => page.evaluate((n) => {
  const b = window[n].buffer.active;
  const lines = [];
  for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? "");
  return lines.join("\n");
}, name);
async function waitText(page, re, ms = 20000, name = "warrenTerm") {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const t = await readTerm(page, name).catch(() => "");
    if (re.test(t)) return t;
    await page.waitForTimeout(100);
  }
  throw new Error(`${re} not seen; screen:\n${await readTerm(page, name).catch(() => "")}`);
}
try {
  const owner = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await owner.newPage();
  page.on("console", (m) => console.error(`[dashboard] ${m.text()}`));
  step = "sign in";
  await page.goto(dash, { waitUntil: "load", timeout: 30000 });
  await page.fill("#key", key);
  await page.click("#signin-form button[type=submit]");
  await page.waitForSelector("#app:not([hidden])", { timeout: 15000 });
  step = "create";
  await page.selectOption("#create select[name=ttl]", "900");
  await page.click("#create button[type=submit]");
  await page.waitForFunction(() => /is running/.test(document.getElementById("msg").textContent), null, { timeout: 120000 });
  id = (await page.textContent("#msg")).match(/Session (\S+) is running/)[1];
  await page.waitForSelector(`tr[data-session="${id}"]`);
  await page.screenshot({ path: `${dir}/dashboard.png` });

  step = "open the terminal";
  const [term] = await Promise.all([
    owner.waitForEvent("page"),
    page.click(`tr[data-session="${id}"] button:has-text("Open")`),
  ]);
  await term.waitForFunction(() => document.getElementById("status")?.textContent === "connected", null, { timeout: 30000 });
  await term.click("#term");
  await term.keyboard.type("echo owner-$((6*7))");
  await term.keyboard.press("Enter");
  await waitText(term, /^owner-42$/m);

  step = "share read-only";
  await page.click(`tr[data-session="${id}"] button:has-text("Share")`);
  await page.click("text=New read-only link");
  const link = await (await page.waitForSelector("[data-testid=share-url]")).textContent();
  await page.keyboard.press("Escape");

  step = "the viewer watches";
  const phone = await browser.newContext({ viewport: { width: 390, height: 740 }, isMobile: true, hasTouch: true });
  const viewer = await phone.newPage();
  viewer.on("console", (m) => console.error(`[viewer] ${m.text()}`));
  await viewer.goto(link, { waitUntil: "load", timeout: 30000 });
  await viewer.waitForFunction(() => document.getElementById("status")?.textContent === "connected", null, { timeout: 30000 });
  await viewer.waitForSelector("#mode:not([hidden])", { timeout: 10000 });
  await waitText(viewer, /owner-42/);
  // The owner sees someone watching.
  await term.waitForFunction(() => /2/.test(document.getElementById("viewers")?.textContent ?? ""), null, { timeout: 10000 });
  // The viewer's keys go nowhere.
  await viewer.click("#term");
  await viewer.keyboard.type("echo typed-by-viewer > /tmp/viewer");
  await viewer.keyboard.press("Enter");
  // A read-only viewer gets no key bar.
  if (await viewer.isVisible("#keys")) throw new Error("a read-only viewer has the key bar");
  await term.keyboard.type("echo live-$((2+3)); test -e /tmp/viewer && echo HAS-$((1)) || echo NONE-$((1))");
  await term.keyboard.press("Enter");
  await waitText(viewer, /^live-5/m);
  const seen = await waitText(term, /^(HAS|NONE)-1$/m);
  if (!/^NONE-1$/m.test(seen)) throw new Error(`the viewer's keys reached the shell:\n${seen}`);
  await viewer.screenshot({ path: `${dir}/share-viewer-phone.png` });
  await term.screenshot({ path: `${dir}/share-owner.png` });

  step = "play the recording";
  const started = Date.now();
  let played = false;
  while (!played && Date.now() - started < 30000) {
    await page.click(`tr[data-session="${id}"] button:has-text("Recordings")`);
    const play = await page
      .waitForSelector("#dialog[open] button:has-text('Play')", { timeout: 5000 })
      .catch(() => null);
    if (play) {
      await play.click();
      await page.waitForFunction(() => document.querySelector("[data-testid=player]")?.dataset.done === "true", null, { timeout: 60000 });
      const text = await readTerm(page, "warrenPlayer");
      played = /owner-42/.test(text) && /live-5/.test(text);
    }
    if (!played) { await page.keyboard.press("Escape"); await page.waitForTimeout(1000); }
  }
  if (!played) throw new Error("the recording never played the owner's output");
  await page.screenshot({ path: `${dir}/dashboard-recording.png` });
  await page.keyboard.press("Escape");

  step = "delete";
  await page.click(`tr[data-session="${id}"] button:has-text("Delete")`);
  await page.waitForFunction(() => /stopping/.test(document.getElementById("msg").textContent), null, { timeout: 20000 });
  // The dashboard on a phone.
  await page.setViewportSize({ width: 390, height: 740 });
  await page.screenshot({ path: `${dir}/dashboard-phone.png` });
  ok = true;
} catch (e) {
  console.error(`failed at ${step}: ${e.stack || e}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok, id, step }));
process.exit(ok ? 0 : 1);
