// Shared by producer.mjs and reader.mjs: the packages (from the folder the bench installed
// them into, $BENCH_NODE_MODULES), a context on our own clients, and the line protocol
// (one JSON command per stdin line, one JSON answer per stdout line).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const modules = process.env.BENCH_NODE_MODULES;
const require = createRequire(path.join(modules, "bench.cjs"));
const { createResumableStreamContext } = require("resumable-stream");
const { createClient } = require("redis");

const version = (name) =>
  JSON.parse(readFileSync(path.join(modules, name, "package.json"), "utf8")).version;
export const versions = { "resumable-stream": version("resumable-stream"), redis: version("redis") };

/** Wall-clock seconds since the epoch, to the microsecond (Python's time.time()). */
export function stamp() {
  return (performance.timeOrigin + performance.now()) / 1000;
}

export function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

/** A resumable-stream context on two fresh `redis` clients (publisher, subscriber). */
export async function makeContext(url, keyPrefix) {
  const publisher = createClient({ url });
  const subscriber = createClient({ url });
  for (const client of [publisher, subscriber]) {
    client.on("error", (err) => send({ error: `redis: ${err.message}` }));
  }
  await Promise.all([publisher.connect(), subscriber.connect()]);
  const pending = new Set();
  const waitUntil = (promise) => {
    // keep the promise (the producer's cleanup) until it settles
    const kept = Promise.resolve(promise).finally(() => pending.delete(kept));
    pending.add(kept);
  };
  const context = createResumableStreamContext({ waitUntil, keyPrefix, publisher, subscriber });
  const close = async () => {
    await Promise.allSettled([...pending]);
    await Promise.allSettled([publisher.quit(), subscriber.quit()]);
  };
  return { context, close, pending };
}

/** Calls `handle(command)` for each stdin line; the answer (if any) goes to stdout. */
export function serve(handle) {
  const lines = readline.createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    Promise.resolve()
      .then(() => handle(JSON.parse(line)))
      .then((answer) => answer && send(answer))
      .catch((err) => send({ error: String(err && err.stack ? err.stack : err) }));
  });
  lines.on("close", () => process.exit(0));
}
