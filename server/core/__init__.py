"""Bookkeeping: requests, sampling parameters, KV blocks, the scheduler, text output, messages.

May import: the standard library and gpt2serve.model.tokenizer. Never torch, FastAPI/Starlette,
or the worker, engine and api layers, so it is tested in milliseconds with fake token ids.
"""
