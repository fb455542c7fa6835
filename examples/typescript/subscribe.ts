// Create an image task over GraphQL, then follow it live with the `taskUpdated` subscription
// (graphql-transport-ws, via the `graphql-ws` library) until it completes, and download the image.
//
//   npm ci && npm run build && API_URL=http://127.0.0.1:8080 node dist/subscribe.js "a red fox"
//
//   API_URL=… API_KEY=vas_… node dist/subscribe.js "a red fox in snow"
//
// `npm run build` type-checks (strict) and compiles with `tsc`.
//
// API_KEY (optional; none when the server runs without keys) is sent as `Authorization: Bearer`
// over HTTP and in the connection_init payload over WebSocket. A user's key submits for its own
// user (`me`); with the admin key, or none, the user USER_EMAIL is found or created. Exits
// non-zero if the task does not complete.
import { createClient } from "graphql-ws";
import WebSocket from "ws";

/** The fields of `Task` this example asks for (see schema.graphql). */
interface TaskState {
  status: "PENDING" | "PROCESSING" | "COMPLETED" | "FAILED" | "CANCELLED";
  version: number;
  result: { imageUrl: string } | null;
  error: { code: string; message: string } | null;
}

interface GqlError {
  message: string;
  extensions?: { code?: string };
}

const base = (process.env.API_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const key = process.env.API_KEY ?? "";
const prompt = process.argv[2] ?? "a red fox in snow";
const email = process.env.USER_EMAIL ?? "example@example.com";
const auth: Record<string, string> = key ? { authorization: `Bearer ${key}` } : {};

async function gql<T>(query: string, variables?: Record<string, unknown>): Promise<T> {
  const resp = await fetch(`${base}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", ...auth },
    body: JSON.stringify({ query, variables }),
  });
  const body = (await resp.json()) as { data?: T; errors?: GqlError[] };
  if (!resp.ok || body.errors?.length || body.data === undefined) {
    throw new Error(`GraphQL ${resp.status}: ${JSON.stringify(body.errors ?? body)}`);
  }
  return body.data;
}

// A user's key: its own user. The admin key (or none): a user found or created by email.
type Id = { id: string } | null;

async function userId(): Promise<string> {
  const { me } = await gql<{ me: Id }>("{ me { id } }");
  if (me) return me.id;
  const { userByEmail } = await gql<{ userByEmail: Id }>(
    "query($e: String!) { userByEmail(email: $e) { id } }",
    { e: email },
  );
  if (userByEmail) return userByEmail.id;
  const { createUser } = await gql<{ createUser: { id: string } }>(
    "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }",
    { i: { email, name: "Example" } },
  );
  return createUser.id;
}

const uid = await userId();
const { createImageTask: task } = await gql<{ createImageTask: { id: string; status: string } }>(
  "mutation($i: CreateImageTaskInput!) { createImageTask(input: $i) { id status } }",
  { i: { userId: uid, prompt, size: "1024x1024" } },
);
console.log(`task ${task.id}: ${task.status}`);

const client = createClient({
  url: `${base.replace(/^http/, "ws")}/graphql/ws`,
  webSocketImpl: WebSocket,
  connectionParams: auth,
  lazy: true,
});

// `taskUpdated` sends the current state first, then each change, and completes after the end.
const final = await new Promise<TaskState | null>((resolve, reject) => {
  let last: TaskState | null = null;
  const timer = setTimeout(() => reject(new Error("no terminal state within 120 s")), 120_000);
  client.subscribe<{ taskUpdated: TaskState }>(
    {
      query: `subscription($id: ID!) {
        taskUpdated(id: $id) { status version result { imageUrl } error { code message } }
      }`,
      variables: { id: task.id },
    },
    {
      next: ({ data, errors }) => {
        if (errors?.length || !data) return reject(new Error(JSON.stringify(errors)));
        last = data.taskUpdated;
        console.log(`task ${task.id}: ${last.status} (version ${last.version})`);
      },
      error: (e: unknown) => { clearTimeout(timer); reject(e instanceof Error ? e : new Error(JSON.stringify(e))); },
      complete: () => { clearTimeout(timer); resolve(last); },
    },
  );
});
await client.dispose();

if (final?.status !== "COMPLETED" || !final.result) {
  console.error(`task ended ${final?.status}: ${JSON.stringify(final?.error)}`);
  process.exit(1);
}
const img = await fetch(final.result.imageUrl);
const bytes = (await img.arrayBuffer()).byteLength;
if (!img.ok || bytes === 0) {
  console.error(`image download failed: HTTP ${img.status}, ${bytes} bytes`);
  process.exit(1);
}
console.log(`image: ${final.result.imageUrl} (${img.headers.get("content-type")}, ${bytes} bytes)`);
