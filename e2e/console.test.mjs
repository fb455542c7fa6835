// End-to-end test of the web console in headless Chromium, against the real binary.
//
//   VAS_BIN=../target/debug/volcengine-ai-server node --test console.test.mjs
//
// Starts the service (embedded default, sandbox provider, one worker slot so a second task
// visibly waits), drives the console as a person would, and checks what they would see: the
// statuses arriving live over the `taskUpdated` subscription (recorded WebSocket frames, and no
// HTTP polling meanwhile), the image loaded and not blank on a screenshot, the gallery, cancel
// and retry, and an invalid key sent back to sign-in.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const BIN = resolve(process.env.VAS_BIN ?? "../target/debug/volcengine-ai-server");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT = 60_000;

let server, base, dataDir, profileDir, context, serverLog = "";

const freePort = () => new Promise((ok, fail) => {
  const s = createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => ok(port));
  }).on("error", fail);
});

async function waitHealthy(url) {
  const deadline = Date.now() + WAIT;
  while (Date.now() < deadline) {
    if (server.exitCode !== null) throw new Error(`server exited ${server.exitCode}:\n${serverLog}`);
    try {
      if ((await fetch(`${url}/health`)).ok) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no /health within ${WAIT} ms:\n${serverLog}`);
}

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  dataDir = mkdtempSync(join(tmpdir(), "vas-e2e-data-"));
  profileDir = mkdtempSync(join(tmpdir(), "vas-e2e-chromium-"));
  const env = { ...process.env, HOST: "127.0.0.1", PORT: String(port), DATA_DIR: dataDir,
    SANDBOX_LATENCY: "2s", WORKER_CONCURRENCY: "1", LOG_LEVEL: "warn", PUBLIC_BASE_URL: base };
  // The sandbox provider runs only without a key.
  delete env.VOLCENGINE_API_KEY;
  delete env.ARK_API_KEY;
  delete env.MONGO_URL;
  delete env.MONGODB_URI;
  delete env.REDIS_URL;
  server = spawn(BIN, ["serve"], { env, stdio: ["ignore", "pipe", "pipe"] });
  server.stdout.on("data", (d) => { serverLog += d; });
  server.stderr.on("data", (d) => { serverLog += d; });
  await waitHealthy(base);
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1200, height: 900 },
  });
});

after(async () => {
  await context?.close();
  if (server && server.exitCode === null) {
    server.kill("SIGTERM");
    await new Promise((r) => server.once("exit", r));
  }
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(profileDir, { recursive: true, force: true });
});

/** Recorded `taskUpdated` payloads received over WebSocket, and GraphQL operations over HTTP. */
function record(page) {
  const frames = [];
  const ops = [];
  page.on("websocket", (ws) => {
    ws.on("framereceived", ({ payload }) => {
      try {
        const msg = JSON.parse(payload);
        const t = msg.type === "next" && msg.payload?.data?.taskUpdated;
        if (t) frames.push(t);
      } catch { /* not JSON */ }
    });
  });
  page.on("request", (r) => {
    if (r.method() === "POST" && new URL(r.url()).pathname === "/graphql") {
      ops.push(r.postDataJSON()?.operationName ?? "(anonymous)");
    }
  });
  return { frames, ops, statusesOf: (id) => frames.filter((t) => t.id === id).map((t) => t.status) };
}

const dedupe = (xs) => xs.filter((x, i) => x !== xs[i - 1]);

/** Pixel spread of a PNG, decoded by the browser: near zero for a blank or flat image. */
async function pixelSpread(page, png) {
  return page.evaluate(async (dataUrl) => {
    const img = new Image();
    img.src = dataUrl;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    const { data } = g.getImageData(0, 0, c.width, c.height);
    let n = 0, sum = 0, sq = 0;
    for (let i = 0; i < data.length; i += 4) {
      const l = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
      n++; sum += l; sq += l * l;
    }
    const mean = sum / n;
    return Math.sqrt(sq / n - mean * mean);
  }, `data:image/png;base64,${png.toString("base64")}`);
}

test("an invalid key is refused and sends the user back to sign-in", async () => {
  const page = await context.newPage();
  // The server under test runs without keys (they are another issue's work); answer as a
  // server with keys answers a wrong one, so the console's handling of it is what is tested.
  await page.route("**/graphql", (route) => {
    if (route.request().headers().authorization === "Bearer wrong-key") {
      return route.fulfill({ status: 401, contentType: "application/json",
        body: JSON.stringify({ data: null, errors: [{ message: "invalid API key", extensions: { code: "UNAUTHENTICATED" } }] }) });
    }
    return route.continue();
  });
  await page.goto(`${base}/`);
  await page.locator("#signin-view").waitFor();
  await page.fill("#api-key", "wrong-key");
  await page.click("#signin-btn");
  await page.locator("#signin-error", { hasText: "Invalid key" }).waitFor({ timeout: WAIT });
  assert.equal(await page.locator("#signin-view").isVisible(), true);
  assert.equal(await page.evaluate(() => localStorage.getItem("vas.apiKey")), null, "a refused key is forgotten");
  await page.close();
});

test("sign in, submit, watch the task live, see the image, browse, cancel and retry", async () => {
  const page = await context.newPage();
  const rec = record(page);
  page.on("pageerror", (e) => assert.fail(`page error: ${e.message}`));

  // Sign in with an empty key (the server runs without auth), then pick a new user.
  await page.goto(`${base}/`);
  await page.fill("#api-key", "");
  await page.click("#signin-btn");
  await page.locator("#user-view").waitFor({ timeout: WAIT });
  await page.fill("#user-email", "console@example.com");
  await page.fill("#user-name", "Console User");
  await page.click("#user-btn");
  await page.locator("#app-view").waitFor({ timeout: WAIT });
  assert.match(await page.textContent("#who"), /console@example\.com/);
  const models = await page.locator("#model option").count();
  assert.ok(models >= 1, "models come from imageModels");
  assert.ok(await page.locator("#size option").count() >= 1, "sizes for the chosen model");

  // Two prompts: the single worker slot takes the first, so the second is seen waiting.
  await page.fill("#prompt", "a red fox in snow");
  await page.click("#submit");
  await page.locator("#current[data-task-id]").waitFor({ timeout: WAIT });
  const first = await page.getAttribute("#current", "data-task-id");
  await page.fill("#prompt", "a blue whale at dawn");
  await page.click("#submit");
  await page.waitForFunction((id) => document.querySelector("#current")?.dataset.taskId !== id, first, { timeout: WAIT });
  const second = await page.getAttribute("#current", "data-task-id");
  const opsAtSubmit = rec.ops.length;

  await page.locator("#current-status", { hasText: "COMPLETED" }).waitFor({ timeout: WAIT });
  const shown = await page.locator("#current-history li").allTextContents();
  assert.deepEqual(shown, ["PENDING", "PROCESSING", "COMPLETED"], "every status shown, in order");
  assert.deepEqual(dedupe(rec.statusesOf(second)), ["PENDING", "PROCESSING", "COMPLETED"],
    "the statuses arrived as taskUpdated frames over the WebSocket");
  assert.deepEqual(rec.ops.slice(opsAtSubmit), [], "no HTTP request while watching (no polling)");
  assert.ok(rec.statusesOf(first).includes("COMPLETED"), "the first task was followed live too");

  // The image loads and is a picture, not a blank box, on a screenshot.
  const img = page.locator("#current-image");
  await page.waitForFunction(() => {
    const i = document.querySelector("#current-image");
    return i && !i.hidden && i.complete && i.naturalWidth > 0;
  }, null, { timeout: WAIT });
  const natural = await img.evaluate((i) => [i.naturalWidth, i.naturalHeight]);
  assert.deepEqual(natural, [1024, 1024]);
  const shot = await img.screenshot();
  const spread = await pixelSpread(page, shot);
  assert.ok(spread > 5, `the image region is not blank (luminance spread ${spread.toFixed(1)})`);
  const full = join(tmpdir(), "vas-e2e-console.png");
  writeFileSync(full, await page.screenshot({ fullPage: true }));

  // The gallery shows both tasks, completed, with their images.
  for (const id of [first, second]) {
    const card = page.locator(`#gallery [data-task-id="${id}"][data-status="COMPLETED"]`);
    await card.waitFor({ timeout: WAIT });
    await card.locator("img").waitFor();
  }

  // Cancel a new task while it is still running, then retry it to completion.
  await page.fill("#prompt", "a lighthouse in a storm");
  await page.click("#submit");
  await page.waitForFunction((id) => document.querySelector("#current")?.dataset.taskId !== id, second, { timeout: WAIT });
  const third = await page.getAttribute("#current", "data-task-id");
  const card = page.locator(`#gallery [data-task-id="${third}"]`);
  await card.locator("button.cancel").click();
  await page.locator(`#gallery [data-task-id="${third}"][data-status="CANCELLED"]`).waitFor({ timeout: WAIT });
  await card.locator("button.retry").click();
  await page.locator(`#gallery [data-task-id="${third}"][data-status="COMPLETED"]`).waitFor({ timeout: WAIT });
  const thirdStatuses = dedupe(rec.statusesOf(third));
  const cancelledAt = thirdStatuses.indexOf("CANCELLED");
  assert.ok(cancelledAt >= 0, `CANCELLED over the subscription: ${thirdStatuses}`);
  assert.equal(thirdStatuses.at(-1), "COMPLETED", `completed after the retry: ${thirdStatuses}`);
  assert.ok(thirdStatuses.slice(cancelledAt).includes("PROCESSING"), `ran again after the retry: ${thirdStatuses}`);
  assert.deepEqual(rec.ops.filter((o) => o === "Task"), [], "no single-task polling query");

  // A reload keeps the key and the user; the gallery comes back from the tasks query.
  await page.reload();
  await page.locator("#app-view").waitFor({ timeout: WAIT });
  for (const id of [first, second, third]) {
    await page.locator(`#gallery [data-task-id="${id}"][data-status="COMPLETED"]`).waitFor({ timeout: WAIT });
  }
  await page.close();
});

test("the REST docs page renders every operation of /openapi.json", async () => {
  const page = await context.newPage();
  page.on("pageerror", (e) => assert.fail(`page error: ${e.message}`));
  const spec = await (await fetch(`${base}/openapi.json`)).json();
  const expected = Object.entries(spec.paths).flatMap(([path, item]) =>
    ["get", "post", "put", "patch", "delete"].filter((m) => item[m]).map((m) => `${m} ${path}`));
  await page.goto(`${base}/docs`);
  await page.locator("section.op").first().waitFor({ timeout: WAIT });
  const shown = await page.locator("section.op").evaluateAll((els) => els.map((e) => `${e.dataset.method} ${e.dataset.path}`));
  assert.deepEqual(shown.sort(), expected.sort());
  assert.ok(await page.locator("#schema-TaskJson").isVisible(), "schemas are listed");
  await page.close();
});
