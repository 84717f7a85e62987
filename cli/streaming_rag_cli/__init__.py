"""The `streaming-rag` command line.

Subcommands: `worker` (run an arq worker; `--llm-model` answers with an OpenAI-compatible LLM),
`serve` (the web app, under uvicorn; needs the `web` extra), `ask` (submit a question, print the
answer as it streams), `watch` (join any job), `replay` (re-emit a finished trace), `status`,
`cancel`, and `demo` (everything in one process over an embedded Valkey: no server, model or
key needed).

Output contract: answer text goes to stdout, chunk by chunk as it arrives (flushed);
retrieval, timing and error lines go to stderr in brackets (``[retrieved N docs in X s: ...]``,
``[done in X s, first chunk at Y s, job JOB_ID]``, ``[error at STAGE: MSG]``). Exit codes: 0
success; 1 the job ended with an ERROR event (or `status` says ``not found``); 2 a usage error
or an error raised by this project (`StreamingRAGError`: unreachable server, unknown job, invalid
request, bad worker setting, missing web extra), printed as one line without a traceback; 130
interrupted.

The CLI is the top of the house: the one package allowed to import both `streaming_rag_worker`
and `streaming_rag_client`. It imports them lazily inside the subcommands, so `--help` is fast.

Modules: `_settings` (defaults, env variables), `_parser`, `_printing` (`EventPrinter`),
`_commands` (the handlers but `demo`), `_demo`, `_main` (`main`: exit codes);
public: `embedded` (`EmbeddedValkey`: the throw-away Valkey of the demo, benchmarks and tests).
"""

from __future__ import annotations

from streaming_rag.exceptions import CLIError

from ._main import main
from ._parser import build_parser, subcommands
from ._printing import EventPrinter
from ._settings import DEFAULT_REDIS_URL, ENV_VARS

__all__ = [
    "DEFAULT_REDIS_URL",
    "ENV_VARS",
    "CLIError",
    "EventPrinter",
    "build_parser",
    "main",
    "subcommands",
]
