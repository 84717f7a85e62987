// The resumable-stream producer: `node producer.mjs URL KEY_PREFIX`, then commands on stdin:
//   {"cmd":"produce","id":ID,"tokens":N,"interval_ms":MS}  -> {"ready":ID} once the stream
//       exists (sentinel set); its tokens wait for "go". Each token is "<time.time()> ".
//   {"cmd":"go","id":ID}  -> tokens flow; the returned stream is drained here (as an HTTP
//       response would send it) -> {"done":ID,"tokens":N,"cpu_us":...} after its cleanup.
import { makeContext, send, serve, stamp, versions } from "./_common.mjs";

const [url, keyPrefix] = process.argv.slice(2);
const { context, pending } = await makeContext(url, keyPrefix);
const gates = new Map();

function tokenStream(tokens, intervalMs, gate) {
  let sent = 0;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  return new ReadableStream({
    async pull(controller) {
      if (sent === 0) await gate;
      if (sent >= tokens) return controller.close();
      if (intervalMs > 0) await sleep(intervalMs);
      sent += 1;
      controller.enqueue(`${stamp().toFixed(6)} `);
    },
  });
}

async function produce({ id, tokens, interval_ms: intervalMs }) {
  let open;
  const gate = new Promise((resolve) => (open = resolve));
  const stream = await context.createNewResumableStream(id, () =>
    tokenStream(tokens, intervalMs, gate),
  );
  gates.set(id, { open, stream, tokens });
  return { ready: id, versions };
}

async function go({ id }) {
  const { open, stream, tokens } = gates.get(id);
  gates.delete(id);
  const cpu = process.cpuUsage();
  open();
  const reader = stream.getReader();
  let chunks = 0;
  while (!(await reader.read()).done) chunks += 1;
  await Promise.allSettled([...pending]); // the sentinel set to DONE, DONE messages published
  const used = process.cpuUsage(cpu);
  return { done: id, tokens: chunks, expected: tokens, cpu_us: used.user + used.system };
}

serve(async (command) => {
  if (command.cmd === "produce") return produce(command);
  if (command.cmd === "go") return go(command);
  throw new Error(`unknown command ${command.cmd}`);
});
send({ started: true, versions, pid: process.pid });
