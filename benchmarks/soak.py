"""Memory under a steady mixed load: the server's RSS sampled over minutes.

`python -m gpt2serve.benchmarks.soak --model random:gpt2 --minutes 10 [--env KEY=VALUE ...]`
starts `gpt2serve`, drives it with a mix of requests (completions and chat, streamed and not,
n up to 4, prompts of 8-400 tokens, a tenth of the streams cut off mid-way) from a few
concurrent clients, and prints the RSS every `--sample-seconds`, then the growth after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gpt2serve.benchmarks.local_server import free_port, stop, wait_healthy


@dataclass
class SoakResult:
    """RSS samples (seconds since the load started, MiB) and request counts."""

    samples: list[tuple[float, float]] = field(default_factory=list)  # under load
    idle_samples: list[tuple[float, float]] = field(default_factory=list)  # after it
    num_requests: int = 0
    num_errors: int = 0

    def growth_mib(self, warmup_fraction: float = 0.2) -> float:
        """RSS at the end minus RSS once the warm-up share of the run is over."""
        if len(self.samples) < 2:
            return 0.0
        start = self.samples[0][0] + warmup_fraction * (self.samples[-1][0] - self.samples[0][0])
        after = [rss for t, rss in self.samples if t >= start]
        return self.samples[-1][1] - after[0]


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def random_request(rng: random.Random) -> tuple[str, dict, bool]:
    """(path, body, cut_off): one request of the mix."""
    stream = rng.random() < 0.6
    tokens = [rng.randrange(50000) for _ in range(rng.randint(8, 400))]
    common = {"max_tokens": rng.randint(8, 64), "n": rng.choice([1, 1, 2, 4]),
              "temperature": rng.choice([0.0, 0.8]), "ignore_eos": True,
              "stream": stream}  # fmt: skip
    if rng.random() < 0.3:
        words = " ".join(rng.choice(["alpha", "river", "stone", "light"]) for _ in range(60))
        body = {"messages": [{"role": "user", "content": words}], **common}
        return "/v1/chat/completions", body, stream and rng.random() < 0.1
    if rng.random() < 0.2:
        common["logprobs"] = 2
    return "/v1/completions", {"prompt": tokens, **common}, stream and rng.random() < 0.1


async def client_loop(url: str, deadline: float, seed: int, result: SoakResult) -> None:
    """Send requests back to back until the deadline."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=120) as client:
        while time.monotonic() < deadline:
            path, body, cut_off = random_request(rng)
            result.num_requests += 1
            try:
                async with client.stream("POST", f"{url}{path}", json=body) as response:
                    if response.status_code != 200:
                        result.num_errors += 1
                    async for _ in response.aiter_bytes():
                        if cut_off and rng.random() < 0.2:
                            break  # leaving the block closes the connection mid-stream
            except httpx.HTTPError:
                result.num_errors += 1


async def sample_loop(pid: int, started: float, deadline: float, every: float,
                      result: SoakResult) -> None:  # fmt: skip
    """Record the RSS every `every` seconds."""
    while True:
        result.samples.append((time.monotonic() - started, rss_mib(pid)))
        print(f"{result.samples[-1][0]:7.0f} s  RSS {result.samples[-1][1]:8.1f} MiB  "
              f"requests {result.num_requests}", flush=True)  # fmt: skip
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))


async def drive(url: str, pid: int, seconds: float, clients: int, every: float) -> SoakResult:
    """The whole soak: `clients` request loops and the RSS sampler."""
    result = SoakResult()
    started = time.monotonic()
    deadline = started + seconds
    loops = [client_loop(url, deadline, seed, result) for seed in range(clients)]
    await asyncio.gather(sample_loop(pid, started, deadline, every, result), *loops)
    for _ in range(3):  # idle: what stays once the last requests are done
        await asyncio.sleep(5)
        result.idle_samples.append((time.monotonic() - started, rss_mib(pid)))
        print(f"{result.idle_samples[-1][0]:7.0f} s  RSS {result.idle_samples[-1][1]:8.1f} MiB"
              "  (idle)", flush=True)  # fmt: skip
    return result


def run_soak(args: argparse.Namespace) -> SoakResult:
    """Start the server, soak it, stop it."""
    port = free_port()
    argv = [sys.executable, "-m", "gpt2serve", "--model", args.model, "--port", str(port),
            "--log-level", "warning", *args.server_args]  # fmt: skip
    env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
    process = subprocess.Popen(argv, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, timeout=600)
        return asyncio.run(drive(url, process.pid, args.minutes * 60, args.clients,
                                 args.sample_seconds))  # fmt: skip
    finally:
        stop(process)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--sample-seconds", type=float, default=30)
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for the server process")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run one soak and print its RSS growth."""
    args = parse_args(argv)
    result = run_soak(args)
    print(f"\nrequests {result.num_requests}, non-200 or failed {result.num_errors}")
    print(f"RSS first {result.samples[0][1]:.1f} MiB, last under load "
          f"{result.samples[-1][1]:.1f} MiB, growth under load after the first 20% "
          f"{result.growth_mib():+.1f} MiB, idle after "
          f"{result.idle_samples[-1][1]:.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
