// End-to-end test of the web console in headless Chromium, against the real binary.
//
//   VAS_BIN=../target/debug/volcengine-ai-server node --test console.test.mjs
//
// Starts the service with auth on (ADMIN_API_KEY set; embedded default, sandbox provider, one
// worker slot so a second task visibly waits), makes a user and a user key through the admin
// REST routes, and drives the console as a person would: a wrong key refused by a real 401 and
// forgotten, a refused key on the WebSocket (real close 4403), the user's key straight to the
// user's view, the statuses arriving live over the `taskUpdated` subscription (recorded WebSocket
// frames, the key in connection_init, and no HTTP polling meanwhile), the image loaded and not
// blank on a screenshot, the gallery, cancel and retry, a key revoked mid-session (refused over
// HTTP, and over the WebSocket when it reconnects after a server restart: 4403 shown as "Invalid
// key"), the admin key picking a user. One more scenario runs a second server without keys
// (loopback, auth off) and signs in with an empty key. A video task made from the console plays
// in its <video> element: the browser loads the MP4's metadata through Range requests (206). The GraphiQL playground (`GET /graphql`)
// is loaded with the network cut to anything but the server: its docs explorer shows the schema
// (graphql-js's introspection query on the default limits) and its editor runs a query.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const BIN = resolve(process.env.VAS_BIN ?? "../target/debug/volcengine-ai-server");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT = 60_000;
const ADMIN_KEY = `admin-${randomBytes(16).toString("hex")}`;
/** Well-formed (the user key prefix and length) but no such key. */
const WRONG_KEY = `vas_${"0".repeat(64)}`;
const EMAIL = "console@example.com";

let server, base, profileDir, context;
/** The console user, its key (secret) and a second key of it that a test revokes. */
let user, userKey, spareKey;

const freePort = () => new Promise((ok, fail) => {
  const s = createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => ok(port));
  }).on("error", fail);
});

/**
 * Starts the binary on a free loopback port (or `again`'s port and data: a restart); `env` is
 * added to the test defaults.
 */
async function startServer(env, latency, again) {
  const port = again ? new URL(again.url).port : await freePort();
  const url = `http://127.0.0.1:${port}`;
  const dataDir = again?.dataDir ?? mkdtempSync(join(tmpdir(), "vas-e2e-data-"));
  const full = { ...process.env, HOST: "127.0.0.1", PORT: String(port), DATA_DIR: dataDir,
    SANDBOX_LATENCY: latency, WORKER_CONCURRENCY: "1", LOG_LEVEL: "warn", PUBLIC_BASE_URL: url, ...env };
  // The sandbox provider runs only without a provider key; auth is on only with ADMIN_API_KEY.
  for (const k of ["VOLCENGINE_API_KEY", "ARK_API_KEY", "MONGO_URL", "MONGODB_URI", "REDIS_URL"]) delete full[k];
  if (!env.ADMIN_API_KEY) delete full.ADMIN_API_KEY;
  const proc = spawn(BIN, ["serve"], { env: full, stdio: ["ignore", "pipe", "pipe"] });
  const s = { proc, url, dataDir, env, latency, log: "" };
  proc.stdout.on("data", (d) => { s.log += d; });
  proc.stderr.on("data", (d) => { s.log += d; });
  const deadline = Date.now() + WAIT;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`server exited ${proc.exitCode}:\n${s.log}`);
    try {
      if ((await fetch(`${url}/health`)).ok) return s;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`no /health within ${WAIT} ms:\n${s.log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function stopServer(s, { keepData = false } = {}) {
  if (s?.proc.exitCode === null) {
    s.proc.kill("SIGTERM");
    await new Promise((r) => s.proc.once("exit", r));
  }
  if (s && !keepData) rmSync(s.dataDir, { recursive: true, force: true });
}

/** A REST call with the admin key; returns `data` of the envelope. */
async function admin(method, path, body) {
  const resp = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await resp.json();
  assert.ok(resp.ok, `${method} ${path}: HTTP ${resp.status} ${JSON.stringify(json)}`);
  return json.data;
}

before(async () => {
  server = await startServer({ ADMIN_API_KEY: ADMIN_KEY }, "2s");
  base = server.url;
  user = await admin("POST", "/api/v1/users", { email: EMAIL, name: "Console User" });
  userKey = (await admin("POST", `/api/v1/users/${user.id}/api-keys`, { name: "console e2e" })).key;
  spareKey = await admin("POST", `/api/v1/users/${user.id}/api-keys`, { name: "revoked in e2e" });
  assert.match(userKey, /^vas_/);
  profileDir = mkdtempSync(join(tmpdir(), "vas-e2e-chromium-"));
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
  await stopServer(server);
  if (profileDir) rmSync(profileDir, { recursive: true, force: true });
});

/** A page on the console's sign-in view with nothing remembered (the profile is shared). */
async function signedOutPage(url = base) {
  const page = await context.newPage();
  page.on("pageerror", (e) => assert.fail(`page error: ${e.message}`));
  await page.goto(`${url}/`);
  await page.evaluate(() => localStorage.clear());
  await page.reload();
  await page.locator("#signin-view").waitFor();
  return page;
}

async function signIn(page, key) {
  await page.fill("#api-key", key);
  await page.click("#signin-btn");
}

/** Recorded `taskUpdated` payloads received over WebSocket, and GraphQL operations over HTTP. */
function record(page) {
  const frames = [];
  const ops = [];
  const inits = [];
  page.on("websocket", (ws) => {
    ws.on("framesent", ({ payload }) => {
      try {
        const msg = JSON.parse(payload);
        if (msg.type === "connection_init") inits.push(msg.payload);
      } catch { /* not JSON */ }
    });
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
  return { frames, ops, inits, statusesOf: (id) => frames.filter((t) => t.id === id).map((t) => t.status) };
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

test("the server runs with auth: no key is a 401", async () => {
  const resp = await fetch(`${base}/graphql`, { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ query: "{ me { id } }" }) });
  assert.equal(resp.status, 401);
  assert.equal((await resp.json()).errors?.[0]?.extensions?.code, "UNAUTHENTICATED");
});

test("a wrong key is refused by the server (401), forgotten, and sends the user back to sign-in", async () => {
  const page = await signedOutPage();
  const statuses = [];
  page.on("response", (r) => { if (new URL(r.url()).pathname === "/graphql") statuses.push(r.status()); });
  await signIn(page, WRONG_KEY);
  await page.locator("#signin-error", { hasText: "Invalid key" }).waitFor({ timeout: WAIT });
  assert.deepEqual(statuses, [401], "the server itself answered 401");
  assert.equal(await page.locator("#signin-view").isVisible(), true);
  assert.equal(await page.locator("#app-view").isVisible(), false);
  assert.equal(await page.evaluate(() => localStorage.getItem("vas.apiKey")), null, "a refused key is forgotten");
  assert.equal(await page.inputValue("#api-key"), "", "and cleared from the form");
  await page.close();
});

test("the WebSocket client sends the key in connection_init and reports a refused key (4403)", async () => {
  const page = await signedOutPage();
  const sent = [];
  page.on("websocket", (ws) => ws.on("framesent", ({ payload }) => { try { sent.push(JSON.parse(payload)); } catch { /* */ } }));
  const got = await page.evaluate(async (key) => {
    const { SubscriptionClient } = await import("/console/ws.js");
    return new Promise((done) => {
      const c = new SubscriptionClient(`ws://${location.host}/graphql/ws`, () => key, {
        onAuthError: (reason, code) => done({ reason, code }),
      });
      c.subscribe("subscription S($id: ID!) { taskUpdated(id: $id) { id } }", { id: "none" },
        { next: () => done({ unexpected: "next" }), error: (e) => done({ unexpected: e }) });
      setTimeout(() => done({ unexpected: "no close within 10 s" }), 10_000);
    });
  }, WRONG_KEY);
  for (let i = 0; i < 50 && sent.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(got.code, 4403, JSON.stringify(got));
  assert.match(got.reason, /Forbidden/);
  assert.deepEqual(sent[0], { type: "connection_init", payload: { authorization: `Bearer ${WRONG_KEY}` } });
  await page.close();
});

test("sign in with a user's key, submit, watch the task live, see the image, browse, cancel and retry", async () => {
  const page = await signedOutPage();
  const rec = record(page);

  // A user's key goes straight to the user's view: nothing to pick, no user to create.
  await signIn(page, userKey);
  await page.locator("#app-view").waitFor({ timeout: WAIT });
  assert.equal(await page.locator("#user-view").isVisible(), false);
  assert.equal(await page.textContent("#who"), `Console User <${EMAIL}>`);
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
  assert.deepEqual(rec.inits, [{ authorization: `Bearer ${userKey}` }], "one socket, the key in connection_init");

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

test("a video task: made from the catalog's options, followed live, played by a <video> through Range requests", async () => {
  const page = await signedOutPage();
  const rec = record(page);
  /** The MP4 requests the page made and what the server answered them. */
  const mp4 = [];
  page.on("response", async (r) => {
    if (!new URL(r.url()).pathname.endsWith(".mp4")) return;
    const headers = await r.request().allHeaders();
    mp4.push({ range: headers.range, status: r.status(), type: r.headers()["content-type"],
      contentRange: r.headers()["content-range"] });
  });
  await signIn(page, userKey);
  await page.locator("#app-view").waitFor({ timeout: WAIT });
  await page.selectOption("#kind", "VIDEO");
  assert.equal(await page.locator("#size").isVisible(), false, "no image size for a video");
  // The options come from videoModels: text-to-video models, each one's durations and resolutions.
  const offered = await page.locator("#model option").evaluateAll((os) => os.map((o) => o.value));
  assert.ok(offered.includes("seedance-1.0-lite-t2v"), `models: ${offered}`);
  assert.ok(!offered.includes("seedance-1.0-lite-i2v"), "no image-to-video model without images");
  await page.selectOption("#model", "seedance-1.0-lite-t2v");
  const durations = await page.locator("#duration option").evaluateAll((os) => os.map((o) => Number(o.value)));
  assert.deepEqual([durations[0], durations.at(-1)], [2, 12], "Seedance's 2 to 12 s");
  assert.equal(await page.inputValue("#resolution"), "720p", "the model's default resolution");
  await page.selectOption("#duration", "2");
  await page.selectOption("#resolution", "480p");
  await page.selectOption("#ratio", "16:9");
  await page.fill("#prompt", "a heron takes off from a misty river");
  await page.click("#submit");
  await page.locator("#current[data-task-id]").waitFor({ timeout: WAIT });
  const id = await page.getAttribute("#current", "data-task-id");
  assert.ok(rec.ops.includes("CreateVideoTask"), `ops: ${rec.ops}`);
  await page.locator("#current-status", { hasText: "COMPLETED" }).waitFor({ timeout: 2 * WAIT });
  assert.equal(dedupe(rec.statusesOf(id)).at(-1), "COMPLETED", "followed over the subscription");
  const task = await admin("GET", `/api/v1/tasks/${id}`);
  assert.equal(task.type, "video_generation");
  assert.equal(task.video.duration, 2);
  assert.equal(task.video.resolution, "480p");

  // The browser fetched and parsed the MP4: its metadata is loaded (duration, frame size).
  await page.waitForFunction(() => {
    const v = document.querySelector("#current-video");
    return v && !v.hidden && v.readyState >= 1 && v.duration > 0;
  }, null, { timeout: WAIT });
  const media = await page.locator("#current-video").evaluate((v) => ({
    src: v.currentSrc, controls: v.controls, readyState: v.readyState, duration: v.duration,
    width: v.videoWidth, height: v.videoHeight, error: v.error?.message ?? null }));
  assert.equal(media.error, null);
  assert.equal(media.controls, true);
  assert.equal(media.src, task.video_url, "this server's own video URL");
  assert.ok(media.src.startsWith(`${base}/videos/`), media.src);
  assert.ok(media.duration > 1.5 && media.duration < 3, `a 2 s video: ${media.duration}`);
  assert.ok(media.width > 0 && media.height > 0, JSON.stringify(media));
  // Through Range requests: the browser asked for a range and the server answered 206 video/mp4.
  const ranged = mp4.filter((m) => m.range && m.status === 206);
  assert.ok(ranged.length >= 1, `a ranged request answered 206: ${JSON.stringify(mp4)}`);
  assert.ok(ranged.every((m) => m.type === "video/mp4" && /^bytes \d+-\d+\/\d+$/.test(m.contentRange)), JSON.stringify(mp4));

  // The gallery card shows the video too, a frame of it decoded (not a blank box).
  await page.locator(`#gallery [data-task-id="${id}"][data-status="COMPLETED"] video`).waitFor({ timeout: WAIT });
  await page.waitForFunction((taskId) => {
    const v = document.querySelector(`#gallery [data-task-id="${taskId}"] video`);
    return v && v.readyState >= 2 && v.videoWidth > 0;
  }, id, { timeout: WAIT });
  await page.close();
});

test("a key revoked during a session sends the user back to sign-in", async () => {
  const page = await signedOutPage();
  await signIn(page, spareKey.key);
  await page.locator("#app-view").waitFor({ timeout: WAIT });
  await admin("DELETE", `/api/v1/api-keys/${spareKey.id}`);
  await page.click("#refresh");
  await page.locator("#signin-error", { hasText: "Invalid key" }).waitFor({ timeout: WAIT });
  assert.equal(await page.evaluate(() => localStorage.getItem("vas.apiKey")), null);
  await page.close();
});

test("the admin key names no user: the admin picks one by email and sees its tasks", async () => {
  const page = await signedOutPage();
  await signIn(page, ADMIN_KEY);
  await page.locator("#user-view").waitFor({ timeout: WAIT });
  await page.fill("#user-email", EMAIL);
  await page.click("#user-btn");
  await page.locator("#app-view").waitFor({ timeout: WAIT });
  assert.equal(await page.textContent("#who"), `admin, as Console User <${EMAIL}>`);
  await page.locator('#gallery [data-status="COMPLETED"]').first().waitFor({ timeout: WAIT });
  await page.close();
});

test("a key revoked while its socket is open (closed with 4403 at once) sends the user back to sign-in", async () => {
  const key = await admin("POST", `/api/v1/users/${user.id}/api-keys`, { name: "revoked while open" });
  const page = await signedOutPage();
  const rec = record(page);
  await signIn(page, key.key);
  await page.locator("#app-view").waitFor({ timeout: WAIT });
  await page.fill("#prompt", "a kite over the dunes");
  await page.click("#submit");
  await page.locator("#conn", { hasText: "live" }).waitFor({ timeout: WAIT });
  // Revocation reaches every open socket of the key before the revoke returns (#16 item 6): the
  // server closes the console's socket with 4403, and the console signs out with no HTTP request
  // in between.
  const opsBefore = rec.ops.length;
  await admin("DELETE", `/api/v1/api-keys/${key.id}`);
  await page.locator("#signin-error", { hasText: "Invalid key" }).waitFor({ timeout: WAIT });
  assert.deepEqual(rec.ops.slice(opsBefore), [], "refused over the WebSocket, not by an HTTP call");
  assert.ok(rec.inits.length >= 1 && rec.inits.every((p) => p.authorization === `Bearer ${key.key}`),
    "the key was sent in connection_init");
  assert.equal(await page.evaluate(() => localStorage.getItem("vas.apiKey")), null);
  await page.close();
});

test("without ADMIN_API_KEY (loopback, auth off) an empty key signs in as the admin", async () => {
  const open = await startServer({}, "300ms");
  try {
    const page = await signedOutPage(open.url);
    const rec = record(page);
    await signIn(page, "");
    await page.locator("#user-view").waitFor({ timeout: WAIT });
    await page.fill("#user-email", "open@example.com");
    await page.fill("#user-name", "Open User");
    await page.click("#user-btn");
    await page.locator("#app-view").waitFor({ timeout: WAIT });
    assert.equal(await page.textContent("#who"), "admin, as Open User <open@example.com>");
    await page.fill("#prompt", "a paper boat on a pond");
    await page.click("#submit");
    await page.locator("#current[data-task-id]").waitFor({ timeout: WAIT });
    const id = await page.getAttribute("#current", "data-task-id");
    await page.locator("#current-status", { hasText: "COMPLETED" }).waitFor({ timeout: WAIT });
    assert.equal(dedupe(rec.statusesOf(id)).at(-1), "COMPLETED", "followed over the subscription");
    assert.deepEqual(rec.inits, [{}], "no key in connection_init");
    await page.close();
  } finally {
    await stopServer(open);
  }
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

test("GraphiQL works offline: served whole by the server, nothing fetched elsewhere, docs explorer and queries", async () => {
  const open = await startServer({}, "300ms");
  const page = await context.newPage();
  try {
    const server = new URL(open.url);
    const elsewhere = [];
    const problems = [];
    // The network stops at the server: any other host is refused (and recorded).
    await page.route("**/*", (route) => {
      const url = new URL(route.request().url());
      if (url.host === server.host || url.protocol === "data:") return route.continue();
      elsewhere.push(url.href);
      return route.abort("internetdisconnected");
    });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
    page.on("requestfailed", (r) => problems.push(`failed: ${r.url()} ${r.failure()?.errorText}`));

    await page.goto(`${open.url}/graphql`);
    const editor = page.locator(".graphiql-query-editor .CodeMirror");
    await editor.waitFor({ timeout: WAIT });

    // The docs explorer loads the schema by introspection (graphql-js's query, as GraphiQL sends
    // it) and shows it: Mutation, then createImageTask and its type.
    await page.getByRole("button", { name: /Documentation Explorer/i }).click();
    const explorer = page.locator(".graphiql-doc-explorer");
    await explorer.locator("a.graphiql-doc-explorer-type-name", { hasText: /^Mutation$/ }).click({ timeout: WAIT });
    const field = explorer.locator(".graphiql-doc-explorer-item", { hasText: "createImageTask" }).first();
    await field.waitFor({ timeout: WAIT });
    assert.match(await field.textContent(), /createImageTask\(.*\): Task!/s);
    await field.locator("a.graphiql-doc-explorer-type-name", { hasText: /^Task$/ }).click();
    await explorer.locator(".graphiql-doc-explorer-field-name", { hasText: /^queuePosition$|^status$/ }).first()
      .waitFor({ timeout: WAIT });
    assert.equal(await explorer.getByText("Error fetching schema").count(), 0);

    // The editor runs a query against the server.
    await editor.evaluate((el) => el.CodeMirror.setValue("query Models { imageModels { name } }"));
    await page.locator("button.graphiql-execute-button").click();
    const result = page.locator(".graphiql-response .CodeMirror");
    await page.waitForFunction(() => {
      const cm = document.querySelector(".graphiql-response .CodeMirror")?.CodeMirror;
      return cm && cm.getValue().includes("imageModels");
    }, null, { timeout: WAIT });
    const answer = JSON.parse(await result.evaluate((el) => el.CodeMirror.getValue()));
    assert.ok(answer.data.imageModels.length >= 1, JSON.stringify(answer));

    assert.deepEqual(elsewhere, [], "nothing requested from another host");
    assert.deepEqual(problems, [], "no errors (a CSP violation would show here)");
  } finally {
    await page.close();
    await stopServer(open);
  }
});
