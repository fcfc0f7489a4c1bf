"""Offline throughput benchmark: the engine without HTTP, optionally beside HF transformers.

python -m gpt2serve.benchmarks.engine --model random:gpt2 --num-prompts 16 --input-len 128 \
    --output-len 128 --hf
(--hf-compile adds HF with a static cache + torch.compile, the fastest HF setup)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gpt2serve import kernels
from gpt2serve.model.cpu_linear import optimize_for_cpu
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.model.weights import load_model, save_hf_checkpoint
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.builder import configure_cpu_threads, resolve_device, resolve_dtype
from gpt2serve.server.engine.engine import Engine, EngineConfig


@dataclass
class BenchResult:
    """One system's numbers on the workload."""

    system: str
    seconds: float
    generated_tokens: int
    tokens_per_second: float
    batch1_ms_per_step: float


def random_prompts(num: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Token-id prompts of fixed length (fixed so HF needs no padding)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab - 1, (num, length), generator=gen).tolist()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(engine: Engine, prompts: list[list[int]], output_len: int) -> tuple[float, int]:
    """Seconds and generated tokens to finish every prompt, all submitted at once."""
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    device = engine.runner.device
    _sync(device)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"bench-{i}-{start}", engine.request_limits.check(prompt, params))
    generated = 0
    while engine.has_unfinished_requests():
        generated += sum(len(o.token_ids) for o in engine.step())
    _sync(device)
    return time.perf_counter() - start, generated


def engine_batch1_ms(engine: Engine, prompt: list[int], steps: int) -> float:
    """Mean decode step time of a lone request (prefill excluded)."""
    params = SamplingParams(max_tokens=steps + 1, temperature=0.0, ignore_eos=True)
    engine.add_request(f"batch1-{time.perf_counter()}", engine.request_limits.check(prompt, params))
    engine.step()  # prefill + first token
    _sync(engine.runner.device)
    start = time.perf_counter()
    num_steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        num_steps += 1
    _sync(engine.runner.device)
    return (time.perf_counter() - start) * 1000 / max(1, num_steps)


def bench_engine(args: argparse.Namespace, prompts: list[list[int]]) -> tuple[BenchResult, object]:
    """Run the workload through our engine (one warm-up pass first)."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model = load_model(args.model, device, dtype)
    if device.type == "cpu":  # as the server runs on a CPU
        optimize_for_cpu(model)
        kernels.use_cpu_attention_kernel(not args.no_cpu_kernel)
    config = EngineConfig(
        num_blocks=args.num_kv_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    engine = Engine(model, Tokenizer.from_tiktoken(), config)
    run_engine(engine, prompts[: min(4, len(prompts))], 4)  # warm-up
    seconds, generated = run_engine(engine, prompts, args.output_len)
    batch1 = engine_batch1_ms(engine, prompts[0], args.batch1_steps)
    return BenchResult("gpt2serve", seconds, generated, generated / seconds, batch1), model


def load_hf_copy(model):
    """The same weights as a transformers `GPT2LMHeadModel`, on the same device and dtype."""
    import transformers

    weight = model.transformer.wte.weight
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(model, Path(tmp))
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp, dtype=weight.dtype)
    return hf.to(weight.device).eval()


def bench_hf(
    hf, prompts: list[list[int]], output_len: int, batch1_steps: int, compiled: bool = False
) -> BenchResult:
    """The workload through `transformers` generate: eager dynamic cache, or static + compile."""
    device = next(hf.parameters()).device
    inputs = torch.tensor(prompts, device=device)
    kwargs: dict = {"do_sample": False, "pad_token_id": 50256}
    if compiled:
        # HF's recipe for fast decoding: a fixed-shape cache so one compiled graph serves all steps.
        kwargs["cache_implementation"] = "static"
        mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs need CUDA
        hf.forward = torch.compile(hf.forward, mode=mode, fullgraph=True)

    def generate(batch: torch.Tensor, new_tokens: int) -> None:
        hf.generate(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)

    with torch.no_grad():
        # Warm-up: a static cache is sized by prompt + new tokens, so each timed shape
        # compiles its own graph; compile them all before timing.
        warm_ups = [(inputs, output_len), (inputs[:1], 1), (inputs[:1], batch1_steps + 1)]
        for batch, new_tokens in warm_ups if compiled else [(inputs[:1], 3), (inputs, 3)]:
            generate(batch, new_tokens)
        _sync(device)
        start = time.perf_counter()
        generate(inputs, output_len)
        _sync(device)
        seconds = time.perf_counter() - start
        timings = []
        for new in (1, batch1_steps + 1):
            _sync(device)
            t0 = time.perf_counter()
            generate(inputs[:1], new)
            _sync(device)
            timings.append(time.perf_counter() - t0)
    generated = len(prompts) * output_len
    batch1 = (timings[1] - timings[0]) * 1000 / batch1_steps
    name = (
        "hf-transformers (static cache + torch.compile)" if compiled else "hf-transformers (eager)"
    )
    return BenchResult(name, seconds, generated, generated / seconds, batch1)


def format_table(results: list[BenchResult]) -> str:
    """A markdown table with throughput ratios against the first row."""
    base = results[0]
    lines = [
        "| system | seconds | generated tokens | tok/s | batch-1 ms/step | gpt2serve speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = base.tokens_per_second / r.tokens_per_second
        lines.append(
            f"| {r.system} | {r.seconds:.2f} | {r.generated_tokens} | {r.tokens_per_second:.1f} "
            f"| {r.batch1_ms_per_step:.2f} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run the benchmark, print a table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--batch1-steps", type=int, default=32)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=4096)
    parser.add_argument("--num-kv-blocks", type=int, default=4096)
    parser.add_argument("--cpu-threads", type=int, default=None, help="default: every core")
    parser.add_argument("--no-cpu-kernel", action="store_true", help="torch reference attention")
    parser.add_argument("--hf", action="store_true", help="also run HF transformers generate")
    parser.add_argument(
        "--hf-compile", action="store_true", help="also HF with a static cache + torch.compile"
    )
    parser.add_argument("--json", type=Path, help="write results here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if resolve_device(args.device).type == "cpu":
        configure_cpu_threads(args.cpu_threads)  # the same threads for both systems
    prompts = random_prompts(args.num_prompts, args.input_len, 50257)
    ours, model = bench_engine(args, prompts)
    results = [ours]
    if args.hf or args.hf_compile:
        hf = load_hf_copy(model)
        if args.hf:
            results.append(bench_hf(hf, prompts, args.output_len, args.batch1_steps))
        if args.hf_compile:
            results.append(bench_hf(hf, prompts, args.output_len, args.batch1_steps, compiled=True))
    print(
        f"workload: {args.num_prompts} prompts x ({args.input_len} in, {args.output_len} out), "
        f"model {args.model}, device {resolve_device(args.device)}"
    )
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
