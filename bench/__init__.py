"""Benchmarks of streaming_rag; run them with `python -m bench`."""
