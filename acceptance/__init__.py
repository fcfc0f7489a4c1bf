"""GPU acceptance in one command: `python -m gpt2serve.acceptance --out DIR`.

Each step runs in its own process under its own time budget (a hang or a CUDA error ends only
that step), writes its measurements as JSON, and the run ends with one JSON and one Markdown
report. `--cpu-dry-run` runs every step at tiny shapes on the CPU, so CI exercises the script.
May import any part of gpt2serve; nothing imports it.
"""
