// The console: sign in with an API key, submit prompts for images or videos, follow each task
// live over the `taskUpdated` subscription (never by polling), and browse, cancel and retry the
// user's tasks. A video plays in a <video> element straight from this server's /videos/{id}.mp4
// (Range requests), so seeking works without downloading the whole file.
//
// A user's key goes straight to that user (`me`). The admin key (or no key, when the server runs
// without keys, loopback only) names no user: the admin picks one by email or creates it. A key
// the server refuses (HTTP 401, or the WebSocket closed with 4403) is forgotten and the console
// returns to sign-in.

import { createApi, AuthError } from "./api.js";
import { SubscriptionClient } from "./ws.js";

const KEY = "vas.apiKey";
const USER = "vas.userId";
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const TASK_FIELDS = "id kind status version attempts prompt model size createdAt result { imageUrl videoUrl } error { code message }";
const VIDEO_MODEL_FIELDS = "name displayName textToVideo minDuration maxDuration durations resolutions defaultResolution ratios";
// Common sizes offered besides each model's default and tiers; each is kept only if the model's
// pixel limits accept it.
const SIZES = ["1024x1024", "864x1152", "1152x864", "1280x720", "720x1280", "1664x936", "2048x2048"];

const $ = (id) => document.getElementById(id);
const store = {
  get key() { return localStorage.getItem(KEY); },
  set key(v) { v === null ? localStorage.removeItem(KEY) : localStorage.setItem(KEY, v); },
  get userId() { return localStorage.getItem(USER); },
  set userId(v) { v === null ? localStorage.removeItem(USER) : localStorage.setItem(USER, v); },
};

const api = createApi(() => store.key || "");
let ws = null;
let user = null;
/** true when signed in with the admin key (or none): a user is picked, not given by the key */
let asAdmin = false;
let models = [];
/** text-to-video models (the console sends no images) */
let videoModels = [];
let currentId = null;
/** id → latest task seen (by version) */
const tasks = new Map();
/** id → statuses in the order they were seen, with where each came from */
const history = new Map();
/** id → function ending its subscription */
const watching = new Map();

function show(view) {
  for (const v of ["signin-view", "user-view", "app-view"]) $(v).hidden = v !== view;
  $("signout").hidden = view === "signin-view";
}

function signOut(reason = "") {
  ws?.close();
  ws = null;
  watching.clear();
  tasks.clear();
  history.clear();
  user = null;
  asAdmin = false;
  currentId = null;
  store.key = null;
  $("api-key").value = "";
  store.userId = null;
  $("who").textContent = "";
  $("conn").textContent = "";
  $("signin-error").textContent = reason;
  $("gallery").replaceChildren();
  $("current").hidden = true;
  show("signin-view");
}

/** The server refused the key (or wants one): forget it and go back to sign-in. */
function refused() {
  signOut(store.key ? "Invalid key: sign in again." : "This server needs an API key: sign in with one.");
}

/** Runs an API call; an invalid key sends the user back to sign-in, other errors go to `errorEl`. */
async function guarded(errorEl, fn) {
  errorEl.textContent = "";
  try {
    return await fn();
  } catch (e) {
    if (e instanceof AuthError) refused();
    else errorEl.textContent = e.message;
    return undefined;
  }
}

async function signIn(key) {
  ws?.close();
  store.key = key;
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql/ws`;
  // The key goes in connection_init; a refused one closes the socket with 4403.
  ws = new SubscriptionClient(wsUrl, () => store.key || "", {
    onAuthError: refused,
    onState: (s) => { $("conn").textContent = s === "connected" ? "● live" : s; },
  });
  const data = await guarded($("signin-error"), () => api.gql("Boot",
    `query Boot { me { id email name } imageModels { name displayName defaultSize sizeTiers minPixels maxPixels minReferenceImages } videoModels { ${VIDEO_MODEL_FIELDS} } }`));
  if (!data) return;
  models = data.imageModels.filter((m) => m.minReferenceImages === 0);
  videoModels = data.videoModels.filter((m) => m.textToVideo);
  $("signin-error").textContent = "";
  // A user's key: its own user, nothing to pick.
  asAdmin = !data.me;
  if (data.me) return enter(data.me);
  const remembered = store.userId;
  if (remembered) {
    const found = await guarded($("signin-error"), () => api.gql("User", "query User($id: ID!) { user(id: $id) { id email name } }", { id: remembered }));
    if (found === undefined) return;
    if (found.user) return enter(found.user);
  }
  show("user-view");
}

async function chooseUser(email, name) {
  const err = $("user-error");
  const found = await guarded(err, () => api.gql("UserByEmail", "query UserByEmail($email: String!) { userByEmail(email: $email) { id email name } }", { email }));
  if (found === undefined) return;
  let u = found.userByEmail;
  if (!u) {
    const created = await guarded(err, () => api.gql("CreateUser",
      "mutation CreateUser($input: CreateUserInput!) { createUser(input: $input) { id email name } }",
      { input: { email, name: name || email.split("@")[0] } }));
    if (!created) return;
    u = created.createUser;
  }
  enter(u);
}

function enter(u) {
  user = u;
  store.userId = u.id;
  $("who").textContent = `${asAdmin ? "admin, as " : ""}${u.name} <${u.email}>`;
  fillModels();
  show("app-view");
  loadGallery();
}

const isVideo = () => $("kind").value === "VIDEO";

function fillModels() {
  const video = isVideo();
  for (const el of document.querySelectorAll(".video-only")) el.hidden = !video;
  for (const el of document.querySelectorAll(".image-only")) el.hidden = video;
  const sel = $("model");
  const list = video ? videoModels : models;
  sel.replaceChildren(...list.map((m) => new Option(m.displayName, m.name)));
  sel.onchange = video ? fillVideoOptions : fillSizes;
  if (video) fillVideoOptions();
  else fillSizes();
}

/** Durations, ratios and resolutions as the chosen video model allows them. */
function fillVideoOptions() {
  const m = videoModels.find((x) => x.name === $("model").value);
  if (!m) return;
  const durations = m.durations ?? Array.from({ length: m.maxDuration - m.minDuration + 1 }, (_, i) => m.minDuration + i);
  const options = (id, values, chosen, label = (v) => String(v)) => {
    $(id).replaceChildren(...values.map((v) => new Option(label(v), String(v))));
    $(id).value = String(chosen);
  };
  options("duration", durations, durations.includes(5) ? 5 : durations[0], (d) => `${d} s`);
  options("ratio", m.ratios, m.ratios[0]);
  options("resolution", m.resolutions, m.defaultResolution);
}

function fillSizes() {
  const m = models.find((x) => x.name === $("model").value);
  if (!m) return;
  const fits = (s) => {
    const [w, h] = s.split("x").map(Number);
    return m.minPixels !== null && m.maxPixels !== null && w * h >= m.minPixels && w * h <= m.maxPixels;
  };
  const sizes = [...new Set([m.defaultSize, ...SIZES.filter(fits), ...m.sizeTiers])];
  $("size").replaceChildren(...sizes.map((s) => new Option(s, s)));
  $("size").value = m.defaultSize;
}

/** Keeps the newest version of a task and records each new status once, in order. */
function apply(task, source) {
  const known = tasks.get(task.id);
  if (known && known.version > task.version) return;
  tasks.set(task.id, { ...known, ...task });
  const h = history.get(task.id) || [];
  if (h.at(-1)?.status !== task.status) h.push({ status: task.status, source });
  history.set(task.id, h);
  render(task.id);
}

function watch(id) {
  if (watching.has(id) || !ws) return;
  const stop = ws.subscribe(
    `subscription TaskUpdated($id: ID!) { taskUpdated(id: $id) { ${TASK_FIELDS} } }`,
    { id },
    {
      next: (data) => data?.taskUpdated && apply(data.taskUpdated, "ws"),
      error: (errors) => { $("task-error").textContent = errors.map?.((e) => e.message).join("; ") || "subscription failed"; watching.delete(id); },
      complete: () => watching.delete(id),
    },
  );
  watching.set(id, stop);
}

async function loadGallery() {
  const data = await guarded($("task-error"), () => api.gql("Tasks",
    `query Tasks($userId: ID!) { tasks(userId: $userId, first: 48) { totalCount nodes { ${TASK_FIELDS} } } }`,
    { userId: user.id }));
  if (!data) return;
  for (const t of data.tasks.nodes.slice().reverse()) {
    apply(t, "http");
    if (!TERMINAL.has(t.status)) watch(t.id);
  }
  $("gallery-empty").hidden = data.tasks.nodes.length > 0;
}

async function submit() {
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  $("submit").disabled = true;
  const data = isVideo()
    ? await guarded($("task-error"), () => api.gql("CreateVideoTask",
      `mutation CreateVideoTask($input: CreateVideoTaskInput!) { createVideoTask(input: $input) { ${TASK_FIELDS} } }`,
      { input: { userId: user.id, prompt, model: $("model").value, duration: Number($("duration").value),
        ratio: $("ratio").value, resolution: $("resolution").value } }))
    : await guarded($("task-error"), () => api.gql("CreateImageTask",
      `mutation CreateImageTask($input: CreateImageTaskInput!) { createImageTask(input: $input) { ${TASK_FIELDS} } }`,
      { input: { userId: user.id, prompt, model: $("model").value, size: $("size").value } }));
  $("submit").disabled = false;
  if (!data) return;
  const t = data.createVideoTask ?? data.createImageTask;
  currentId = t.id;
  apply(t, "http");
  watch(t.id);
}

async function act(id, mutation) {
  const data = await guarded($("task-error"), () => api.gql(mutation,
    `mutation ${mutation}($id: ID!) { ${mutation === "CancelTask" ? "cancelTask" : "retryTask"}(id: $id) { ${TASK_FIELDS} } }`, { id }));
  if (!data) return;
  const t = data.cancelTask || data.retryTask;
  apply(t, "http");
  if (!TERMINAL.has(t.status)) watch(t.id);
}

function render(id) {
  const t = tasks.get(id);
  const statuses = history.get(id) || [];
  if (id === currentId) {
    $("current").hidden = false;
    $("current-id").textContent = id;
    $("current").dataset.taskId = id;
    $("current-status").textContent = t.status;
    $("current-detail").textContent = t.error ? `${t.error.code}: ${t.error.message}` : `attempts: ${t.attempts}`;
    $("current-history").replaceChildren(...statuses.map((s) => {
      const li = document.createElement("li");
      li.textContent = s.status;
      li.dataset.source = s.source;
      return li;
    }));
    const img = $("current-image");
    if (t.result?.imageUrl) {
      if (img.getAttribute("src") !== t.result.imageUrl) img.src = t.result.imageUrl;
      img.hidden = false;
    } else img.hidden = true;
    // The browser fetches the MP4 with Range requests: metadata first, the rest as it plays.
    const video = $("current-video");
    if (t.result?.videoUrl) {
      if (video.getAttribute("src") !== t.result.videoUrl) video.src = t.result.videoUrl;
      video.hidden = false;
    } else {
      if (video.hasAttribute("src")) { video.removeAttribute("src"); video.load(); }
      video.hidden = true;
    }
  }
  card(t);
}

function card(t) {
  const grid = $("gallery");
  let c = grid.querySelector(`[data-task-id="${CSS.escape(t.id)}"]`);
  if (!c) {
    c = document.createElement("article");
    c.className = "card";
    c.dataset.taskId = t.id;
    grid.prepend(c);
    $("gallery-empty").hidden = true;
  }
  c.dataset.status = t.status;
  const thumb = t.result?.imageUrl ? Object.assign(document.createElement("img"), { src: t.result.imageUrl, alt: t.prompt, loading: "lazy" })
    // `#t=0.1`: with metadata alone a browser draws no frame; a start time makes it decode one.
    : t.result?.videoUrl ? Object.assign(document.createElement("video"), { src: `${t.result.videoUrl}#t=0.1`, preload: "metadata", muted: true, title: t.prompt })
    : Object.assign(document.createElement("div"), { className: "thumb-empty" });
  const status = Object.assign(document.createElement("span"), { className: `status ${t.status}`, textContent: t.status });
  const prompt = Object.assign(document.createElement("span"), { className: "prompt", textContent: t.prompt, title: t.prompt });
  const buttons = document.createElement("div");
  if (!TERMINAL.has(t.status)) {
    buttons.append(Object.assign(document.createElement("button"), { className: "cancel secondary", type: "button", textContent: "Cancel", onclick: () => act(t.id, "CancelTask") }));
  }
  if (t.status === "FAILED" || t.status === "CANCELLED") {
    buttons.append(Object.assign(document.createElement("button"), { className: "retry secondary", type: "button", textContent: "Retry", onclick: () => act(t.id, "RetryTask") }));
  }
  const open = Object.assign(document.createElement("button"), { className: "open secondary", type: "button", textContent: "Show", onclick: () => { currentId = t.id; render(t.id); } });
  buttons.append(open);
  c.replaceChildren(thumb, status, prompt, buttons);
}

$("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("api-key").value.trim()); });
$("user-form").addEventListener("submit", (e) => { e.preventDefault(); chooseUser($("user-email").value.trim(), $("user-name").value.trim()); });
$("task-form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
$("signout").addEventListener("click", () => signOut());
$("kind").addEventListener("change", () => fillModels());
$("refresh").addEventListener("click", () => loadGallery());

if (store.key === null) show("signin-view");
else signIn(store.key);
