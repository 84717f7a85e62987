// resumable-stream readers: `node reader.mjs URL KEY_PREFIX`, then commands on stdin:
//   {"cmd":"attach","id":ID,"n":N,"timeout_ms":T,"progress_at":K}
//       -> N resumeExistingStream consumers; {"attached":N} once all are resolved (the
//       producer has registered them); {"progress":K} when the first has K tokens (if K);
//       {"finished":ID,...} when all streams end or T ms pass: per-reader token counts,
//       how each ended ("closed", "error: ...", "timeout") and every token's lag (ms).
//   {"cmd":"late","id":ID,"timeout_ms":T} -> one reader joining now: what it gets, how fast.
import { makeContext, send, serve, stamp, versions } from "./_common.mjs";

const [url, keyPrefix] = process.argv.slice(2);
const { context } = await makeContext(url, keyPrefix);

/** Reads `stream` to its end or `deadline`; counts tokens; lags (ms) into `lags`. */
async function consume(stream, deadline, lags, onToken) {
  const reader = stream.getReader();
  let tokens = 0;
  let chars = 0;
  let timer;
  const expiry = new Promise((resolve) => {
    timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - Date.now()));
  });
  try {
    for (;;) {
      const next = await Promise.race([reader.read(), expiry]);
      if (next === "timeout") {
        reader.cancel().catch(() => {});
        return { tokens, chars, end: "timeout" };
      }
      if (next.done) return { tokens, chars, end: "closed" };
      const now = stamp();
      chars += next.value.length;
      for (const word of next.value.split(" ")) {
        if (!word) continue;
        tokens += 1;
        if (lags) lags.push((now - Number(word)) * 1000);
        if (onToken) onToken(tokens);
      }
    }
  } catch (err) {
    return { tokens, chars, end: `error: ${err.message}` };
  } finally {
    clearTimeout(timer);
  }
}

async function attach({ id, n, timeout_ms: timeoutMs, progress_at: progressAt }) {
  const deadline = Date.now() + timeoutMs;
  const streams = await Promise.all(
    Array.from({ length: n }, () => context.resumeExistingStream(id)),
  );
  const missing = streams.filter((s) => !s).length;
  send({ attached: n, missing });
  const lags = [];
  let told = false;
  const onToken = (count) => {
    if (progressAt && !told && count >= progressAt) {
      told = true;
      send({ progress: count });
    }
  };
  const started = stamp();
  const results = await Promise.all(
    streams.map((s, i) =>
      s ? consume(s, deadline, lags, i === 0 ? onToken : null) : { tokens: 0, end: "none" },
    ),
  );
  return {
    finished: id,
    tokens: results.map((r) => r.tokens),
    ends: [...new Set(results.map((r) => r.end))],
    seconds: stamp() - started,
    lags_ms: lags,
  };
}

async function late({ id, timeout_ms: timeoutMs }) {
  const started = stamp();
  const stream = await context.resumeExistingStream(id);
  if (!stream) {
    const answer = stream === null ? "null (stream done)" : "undefined (no stream)";
    return { late: id, got: answer, tokens: 0, ms: (stamp() - started) * 1000 };
  }
  const result = await consume(stream, Date.now() + timeoutMs, null, null);
  return { late: id, got: result.end, tokens: result.tokens, ms: (stamp() - started) * 1000 };
}

serve(async (command) => {
  if (command.cmd === "attach") return attach(command);
  if (command.cmd === "late") return late(command);
  throw new Error(`unknown command ${command.cmd}`);
});
send({ started: true, versions, pid: process.pid });
