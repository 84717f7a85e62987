"""`StreamConfig`: every tunable of a `StreamingRAG`, with the spec's defaults."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

from .exceptions import ConfigError

__all__ = ["DEFAULT_PROMPT_TEMPLATE", "StreamConfig", "validate_config"]

DEFAULT_PROMPT_TEMPLATE = (
    "You are a precise RAG assistant.\n"
    "Strict rules:\n"
    "- Use ONLY the provided context.\n"
    "- Do NOT guess.\n"
    "- If missing info, say: 'no information to answer '.\n"
    "- The answer MUST be in the SAME language as the question.\n"
    "- NEVER switch language.\n"
    "Context:\n"
    "{context}\n"
    "Question: {query}\n"
    "Final Answer:"
)

_REQUIRED_PLACEHOLDERS = frozenset({"context", "query"})


@dataclass
class StreamConfig:
    """Tunable parameters of a `StreamingRAG` instance; every field has the spec's default.

    A `StreamingRAG` keeps a shallow copy, so changing this object afterwards changes nothing
    for instances already built. Values are validated when the `StreamingRAG` is constructed
    (see `validate_config`), not here, because a dataclass can be mutated after `__init__`.
    """

    chunk_size: int = 10
    sim_delay: float = 0.04
    max_context_docs: int = 5
    max_doc_chars: int = 500
    emit_metadata: bool = True  # reserved by the spec: every event is always emitted
    retrieval_timeout: float = 10.0
    generation_timeout: float = 60.0
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE


def _placeholders(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:  # unbalanced braces
        raise ConfigError(
            f"prompt_template is not a valid format string ({exc}); "
            "escape literal braces as '{{' and '}}'"
        ) from None


def validate_config(config: StreamConfig) -> None:
    """Raise `ConfigError` (a `ValueError`) naming the first field that cannot work.

    Rules: `chunk_size >= 1`; `sim_delay >= 0`; `max_context_docs >= 0`; `max_doc_chars >= 0`;
    both timeouts finite and `> 0`; `prompt_template` uses exactly the placeholders
    `{context}` and `{query}` (each at least once, no others, no positional `{}`).
    """
    if not isinstance(config, StreamConfig):
        raise ConfigError(f"config must be a StreamConfig, not {type(config).__name__}")
    if isinstance(config.chunk_size, bool) or not isinstance(config.chunk_size, int):
        raise ConfigError(f"chunk_size must be an int >= 1, got {config.chunk_size!r}")
    if config.chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {config.chunk_size}")
    for name in ("max_context_docs", "max_doc_chars"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    if not isinstance(config.sim_delay, int | float) or not config.sim_delay >= 0:
        raise ConfigError(f"sim_delay must be a number of seconds >= 0, got {config.sim_delay!r}")
    for name in ("retrieval_timeout", "generation_timeout"):
        value = getattr(config, name)
        if not isinstance(value, int | float) or not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    template = config.prompt_template
    if not isinstance(template, str):
        raise ConfigError(f"prompt_template must be a str, not {type(template).__name__}")
    found = _placeholders(template)
    missing = _REQUIRED_PLACEHOLDERS - found
    extra = found - _REQUIRED_PLACEHOLDERS
    if missing or extra:
        problems = []
        if missing:
            problems.append("missing " + ", ".join(f"{{{n}}}" for n in sorted(missing)))
        if extra:
            problems.append("unknown " + ", ".join(f"{{{n}}}" for n in sorted(extra)))
        raise ConfigError(
            "prompt_template must use exactly the placeholders {context} and {query} ("
            + "; ".join(problems)
            + "); escape literal braces as '{{' and '}}'"
        )
