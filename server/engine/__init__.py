"""The engine loop (schedule -> execute -> update -> outputs), its async front, the builder.

May import: core, worker, config, gpt2serve.model, gpt2serve.kernels and torch. Never api or
FastAPI: the HTTP side subscribes to `StepStats` instead.
"""
