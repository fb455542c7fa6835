// A webhook receiver for volcengine-ai-server: checks each request's Standard Webhooks signature
// with the `standardwebhooks` package, answers 204 to a verified event and 400 to anything else,
// and handles each event once (retries and redeliveries carry the same webhook-id).
//
//   npm ci && WEBHOOK_SECRET=whsec_... [HOST=127.0.0.1] [PORT=8000] node receiver.mjs [--once]
//
// Give tasks `"webhook": "http://<this host>:8000/webhook"`. With --once it exits (status 0)
// after the first verified task.completed, printing that event's task as JSON on stdout.
import http from "node:http";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

const secret = process.env.WEBHOOK_SECRET;
if (!secret) {
  console.error("set WEBHOOK_SECRET (the server's, whsec_...)");
  process.exit(2);
}
const verifier = new Webhook(secret);
const port = Number(process.env.PORT ?? 8000);
const host = process.env.HOST ?? "127.0.0.1";
const once = process.argv.includes("--once");
// Bodies are the task as the REST detail route shows it: small. Refuse anything much larger.
const MAX_BODY = 1024 * 1024;
// webhook-ids already handled. A real receiver keeps these in its database, with the work the
// event caused, so a retry after a lost answer changes nothing.
const handled = new Set();

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Error("body too large"));
        req.destroy();
      } else {
        chunks.push(c);
      }
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

const server = http.createServer(async (req, res) => {
  if (req.method !== "POST" || req.url !== "/webhook") {
    res.writeHead(404).end();
    return;
  }
  let event;
  try {
    // Verify the exact bytes received, before parsing: re-serialised JSON would not match.
    const body = await readBody(req);
    event = verifier.verify(body, req.headers);
  } catch (e) {
    const why = e instanceof WebhookVerificationError ? e.message : String(e);
    console.error(`refused: ${why}`);
    res.writeHead(400, { "content-type": "text/plain" }).end(why);
    return;
  }
  const id = req.headers["webhook-id"];
  // Answer quickly (the server waits WEBHOOK_TIMEOUT, 10 s, then retries); do slow work later.
  res.writeHead(204).end();
  if (handled.has(id)) {
    console.error(`${id}: seen before (a retry or a redelivery), ignored`);
    return;
  }
  handled.add(id);
  const task = event.data ?? {};
  console.error(`${id}: ${event.type} task ${task.task_id} is ${task.status}`);
  if (once && event.type === "task.completed") {
    process.stdout.write(JSON.stringify(task) + "\n", () => process.exit(0));
  }
});

server.listen(port, host, () => {
  console.error(`listening on http://${host}:${server.address().port}/webhook`);
});
