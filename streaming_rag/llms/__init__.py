"""Ready-made streaming LLMs for `StreamingRAG`, each on an optional extra.

- `OpenAICompatibleLLM` (extra ``openai``): OpenAI, vLLM, Ollama,
  the llama.cpp server, LM Studio, ... through the official ``openai`` SDK.
- `LangChainLLM` (extra ``langchain``): any LangChain chat model or
  runnable.

Importing this package imports neither SDK: each adapter imports its SDK when it is built
or starts a stream, and raises `ImportError` naming the extra to install when it is missing.
Their failures surface as `streaming_rag.exceptions.LLMError`.
"""

from .langchain import LangChainLLM
from .openai import OpenAICompatibleLLM

__all__ = ["LangChainLLM", "OpenAICompatibleLLM"]
