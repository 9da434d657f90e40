// Drive the built web demo in real Chromium (Debian's /usr/bin/chromium) through playwright-core.
//
//   node web_demo/test/drive.mjs PLAN.json
//
// PLAN.json: {"out": "results.json", "chromium": "/usr/bin/chromium", "pages": [
//   {"name": "...", "url": "http://127.0.0.1:PORT/?threads=1", "golden_check": true,
//    "photos": ["/abs/a.png"], "screenshot": "/abs/shot.png", "bench": {"iterations": 50, "warmup": 10}}]}
//
// Each page opens in a fresh tab of one headless Chromium with a fresh profile, offline: the
// host resolver maps every name but 127.0.0.1 to nothing, and any request that leaves the
// page's own origin is aborted and recorded. The results (state, error text, golden-check
// logits, the DOM's top-3 after each photo, bench rows) are written as JSON for pytest and
// benchmarks/browser.py to judge: this script asserts nothing itself.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  // Without this Chromium tries to reach Google's servers on every start.
  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
];
const READY_TIMEOUT_MS = 120_000;
const PHONE = { width: 412, height: 915 }; // a common Android phone's CSS viewport

/** The disclaimer's text and whether it is inside the viewport (it must stay visible, even scrolled). */
function disclaimer(page) {
  return page.evaluate(() => {
    const node = document.querySelector(".disclaimer");
    const box = node?.getBoundingClientRect();
    return { text: node?.innerText ?? null, in_viewport: Boolean(box && box.height > 0 && box.top >= 0 && box.bottom <= innerHeight) };
  });
}

async function runPage(context, spec) {
  const origin = new URL(spec.url).origin;
  const page = await context.newPage();
  const result = { name: spec.name, url: spec.url, outside_requests: [], console_errors: [], photos: [] };
  page.on("console", (message) => {
    if (message.type() === "error") result.console_errors.push(message.text());
  });
  page.on("pageerror", (error) => result.console_errors.push(`pageerror: ${error.message}`));
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + "/")) return route.continue();
    result.outside_requests.push(url);
    return route.abort();
  });
  try {
    await page.goto(spec.url, { waitUntil: "load" });
    await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: READY_TIMEOUT_MS });
    Object.assign(result, await page.evaluate(() => ({
      state: document.body.dataset.state,
      status: document.getElementById("status").textContent,
      error: document.getElementById("error").hidden ? null : document.getElementById("error").innerText,
      cross_origin_isolated: globalThis.crossOriginIsolated,
      threads: window.dermmobile?.state?.runtime?.threads ?? null,
      load_ms: window.dermmobile?.state?.loadMs ?? null,
      first_inference_ms: window.dermmobile?.state?.firstMs ?? null,
    })));
    if (spec.screenshot && !(spec.photos || []).length) {
      await page.screenshot({ path: spec.screenshot, fullPage: false });
      result.screenshot = spec.screenshot;
      result.disclaimer = await disclaimer(page);
    }
    if (result.state !== "ready") return result;
    if (spec.golden_check) result.golden = await page.evaluate(() => window.dermmobile.goldenCheck());
    for (const [index, photo] of (spec.photos || []).entries()) {
      result.photos.push({ photo, ...(await choosePhoto(page, photo, index === 0 ? spec.screenshot : null)) });
    }
    if (spec.bench) result.bench = await page.evaluate((options) => window.dermmobile.benchmark(options), spec.bench);
  } catch (error) {
    result.driver_error = String(error && error.stack ? error.stack : error);
  } finally {
    await page.close();
  }
  return result;
}

// Choose `photo` in the page's file input and read what the page shows; `screenshot`: a path to capture the result.
async function choosePhoto(page, photo, screenshot) {
  await page.setInputFiles("#photo-input", photo);
  await page.waitForFunction((name) => window.dermmobile.lastPhoto === name || document.body.dataset.state === "error" ||
    !document.getElementById("error").hidden, path.basename(photo), { timeout: READY_TIMEOUT_MS });
  const shown = await page.evaluate(() => ({
    error: document.getElementById("error").hidden ? null : document.getElementById("error").innerText,
    top1_label: document.getElementById("top1")?.dataset.label ?? null,
    top_labels: Array.from(document.querySelectorAll("#top-list li"), (li) => li.dataset.label),
    top_text: document.getElementById("top-list")?.innerText ?? null,
    timing_text: document.getElementById("timing")?.innerText ?? null,
    result: window.dermmobile.lastResult,
  }));
  if (screenshot) {
    await page.evaluate(() => document.getElementById("result").scrollIntoView({ block: "start" }));
    await page.screenshot({ path: screenshot, fullPage: false });
    shown.screenshot = screenshot;
    shown.disclaimer = await disclaimer(page);
  }
  return shown;
}

async function main() {
  const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "dermmobile-chromium-"));
  const results = { chromium: plan.chromium || "/usr/bin/chromium", pages: [] };
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: results.chromium,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: PHONE,
      deviceScaleFactor: 1,
      hasTouch: true,
      isMobile: true,
      acceptDownloads: false,
    });
    results.browser_version = context.browser()?.version() ?? null;
    for (const spec of plan.pages) results.pages.push(await runPage(context, spec));
    results.user_agent = await (async () => {
      const page = await context.newPage();
      try {
        return await page.evaluate(() => navigator.userAgent);
      } finally {
        await page.close();
      }
    })();
  } finally {
    if (context) await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  fs.writeFileSync(plan.out, JSON.stringify(results, null, 2) + "\n");
}

await main();
