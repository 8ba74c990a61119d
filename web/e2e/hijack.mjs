// The cross-site WebSocket hijack (security review C3), in a real browser:
// the victim is signed in to session B; a page served by session A's
// preview tries to open B's terminal with B's cookie riding along.
//   node e2e/hijack.mjs VICTIM_URL ATTACKER_URL SCREENSHOT.png
// Prints JSON {ok, text}: ok when the victim's terminal worked and every
// attempt from the attacker's page failed.
import { launch } from "./browser.mjs";

const [victim, attacker, shot] = process.argv.slice(2);
if (!victim || !attacker || !shot) {
  console.error("usage: node e2e/hijack.mjs VICTIM_URL ATTACKER_URL SCREENSHOT.png");
  process.exit(2);
}
const browser = await launch();
let ok = false, text = "";
const go = async (page, url) => {
  for (let attempt = 1; ; attempt++) {
    try {
      await page.goto(url, { waitUntil: "load", timeout: 30000 });
      return;
    } catch (e) {
      if (attempt >= 5 || !String(e.message).includes("ERR_NETWORK_CHANGED")) throw e;
      await page.waitForTimeout(200 * attempt);
    }
  }
};
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await ctx.newPage();
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  // The victim opens their own session: its cookie is now in the browser.
  // (Chromium drops connections when tests beside this one change Docker
  // networks: load the page again, at most three times.)
  for (let attempt = 1; ; attempt++) {
    await go(page, victim);
    try {
      await page.waitForFunction(() => document.getElementById("status")?.textContent === "connected", null, { timeout: 20000 });
      break;
    } catch (e) {
      if (attempt >= 3) throw e;
      console.error(`[retry] victim page not connected after attempt ${attempt}`);
    }
  }
  const cookies = await ctx.cookies();
  text += `victim cookies: ${cookies.map((c) => c.name).join(",")}\n`;
  // Then visits the attacker's preview page, which reports what happened.
  await go(page, attacker);
  await page.waitForFunction(() => document.title.startsWith("done:"), null, { timeout: 30000 });
  const result = await page.evaluate(() => document.title);
  text += `attacker page: ${result}\n`;
  await page.screenshot({ path: shot });
  ok = cookies.some((c) => c.name.includes("warren_token")) && !result.includes("OPENED") && result.includes("closed");
} catch (e) {
  text += `\n[error] ${e.message}`;
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok, text }));
process.exit(ok ? 0 : 1);
