// The official `openai` npm package against this server's /v1 images API, unchanged.
// Run by scripts/test-openai-sdks with API_URL, USER_KEY (a user's key) set, against a server with
// USER_MAX_IN_FLIGHT=1 and a sandbox slow enough to hold one task in flight. Tests run one after
// another (the quota test needs the user's only in-flight place).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI, { toFile } from 'openai';

const API_URL = process.env.API_URL;
const USER_KEY = process.env.USER_KEY;
const PNG_1PX = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC',
  'base64',
);

const client = (apiKey = USER_KEY, opts = {}) =>
  new OpenAI({ baseURL: `${API_URL}/v1`, apiKey, ...opts });

const isImage = (b) =>
  (b[0] === 0x89 && b[1] === 0x50) || (b[0] === 0xff && b[1] === 0xd8);

test('models.list', async () => {
  const ids = [];
  for await (const m of client().models.list()) ids.push(m.id);
  for (const want of ['doubao-seedream-3.0-t2i', 'doubao-seededit-3.0-i2i', 'doubao-seedream-4.0']) {
    assert.ok(ids.includes(want), ids.join(','));
  }
});

test('url', async () => {
  const r = await client().images.generate({
    model: 'doubao-seedream-3.0-t2i',
    prompt: 'a lighthouse at dawn',
    size: '1024x1024',
  });
  assert.ok(r.created > 1_600_000_000);
  assert.equal(r.data.length, 1);
  const url = r.data[0].url;
  assert.ok(url.startsWith(`${API_URL}/images/`), url);
  const img = await fetch(url);
  assert.equal(img.status, 200);
  assert.ok(isImage(Buffer.from(await img.arrayBuffer())));
});

test('b64_json, n = 2', async () => {
  const r = await client().images.generate({
    model: 'doubao-seedream-4.0',
    prompt: 'two owls',
    n: 2,
    response_format: 'b64_json',
  });
  assert.equal(r.data.length, 2);
  for (const d of r.data) {
    assert.equal(d.url, undefined);
    assert.ok(isImage(Buffer.from(d.b64_json, 'base64')));
  }
});

test('an edit with a reference image', async () => {
  const r = await client().images.edit({
    model: 'doubao-seededit-3.0-i2i',
    image: await toFile(PNG_1PX, 'ref.png', { type: 'image/png' }),
    prompt: 'make it green',
    size: 'adaptive',
  });
  assert.equal(r.data.length, 1);
  assert.ok(r.data[0].url.startsWith(`${API_URL}/images/`));
});

test('a bad size is a BadRequestError naming the param', async () => {
  await assert.rejects(
    client().images.generate({ model: 'doubao-seedream-3.0-t2i', prompt: 'x', size: '12x12' }),
    (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, String(e));
      assert.equal(e.status, 400);
      assert.equal(e.param, 'size');
      assert.equal(e.type, 'invalid_request_error');
      return true;
    },
  );
});

test('a content filter refusal is a BadRequestError with the provider code', async () => {
  await assert.rejects(client().images.generate({ prompt: 'a sensitive-content scene' }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError, String(e));
    assert.equal(e.code, 'InputTextSensitiveContentDetected');
    return true;
  });
});

test('a wrong key is an AuthenticationError', async () => {
  await assert.rejects(
    client('sk-not-a-key', { maxRetries: 0 }).images.generate({ prompt: 'x' }),
    (e) => {
      assert.ok(e instanceof OpenAI.AuthenticationError, String(e));
      assert.equal(e.status, 401);
      return true;
    },
  );
});

test('the user quota is a RateLimitError with Retry-After', async () => {
  const c = client(USER_KEY, { maxRetries: 0 });
  const first = await c.images
    .generate({ prompt: 'slow one' }, { headers: { Prefer: 'respond-async' } })
    .asResponse();
  assert.equal(first.status, 202);
  const location = first.headers.get('location');
  await assert.rejects(c.images.generate({ prompt: 'one too many' }), (e) => {
    assert.ok(e instanceof OpenAI.RateLimitError, String(e));
    assert.equal(e.status, 429);
    assert.ok(Number(e.headers.get('retry-after')) >= 1);
    return true;
  });
  // The accepted task finishes; its Location then answers as the POST would have.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const r = await fetch(`${API_URL}${location}`, { headers: { Authorization: `Bearer ${USER_KEY}` } });
    const body = await r.json();
    if (r.status === 200) {
      assert.equal(body.data.length, 1);
      break;
    }
    assert.equal(r.status, 202, JSON.stringify(body));
    assert.ok(Date.now() < deadline, JSON.stringify(body));
    await new Promise((res) => setTimeout(res, 200));
  }
});

// Last: it leaves its task in flight for a moment (the quota above is one task).
test('the wait ends before the client timeout, naming the task', async () => {
  // The sandbox takes 1 s; this call gives up after 1.5 s in all. (The SDK says so in
  // X-Stainless-Timeout for a per-request timeout, not for the client's default.)
  await assert.rejects(
    client(USER_KEY, { maxRetries: 0 }).images.generate({ prompt: 'too slow' }, { timeout: 1500 }),
    (e) => {
      assert.ok(e instanceof OpenAI.InternalServerError, String(e));
      assert.equal(e.status, 504);
      assert.equal(e.code, 'task_pending');
      assert.match(e.message, new RegExp(e.headers.get('x-task-id')));
      return true;
    },
  );
});
