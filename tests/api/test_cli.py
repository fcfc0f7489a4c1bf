"""The CLI: every flag of the issue, its GPT2SERVE_* twin, precedence, and the startup log."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from gpt2serve.server.cli import build_parser, main, parse_settings, set_openmp_wait
from support.http_server import free_port

# field: (flag value, parsed flag value, env value, parsed env value)
FLAGS: dict[str, tuple[str, object, str, object]] = {
    "model": ("random:tiny", "random:tiny", "random:gpt2", "random:gpt2"),
    "served_model_name": ("cli-name", "cli-name", "env-name", "env-name"),
    "host": ("0.0.0.0", "0.0.0.0", "127.0.0.2", "127.0.0.2"),
    "port": ("9001", 9001, "9002", 9002),
    "device": ("cpu", "cpu", "cuda:1", "cuda:1"),
    "dtype": ("float16", "float16", "bfloat16", "bfloat16"),
    "num_kv_blocks": ("64", 64, "128", 128),
    "kv_cache_gb": ("0.5", 0.5, "1.5", 1.5),
    "gpu_memory_utilization": ("0.5", 0.5, "0.7", 0.7),
    "max_num_seqs": ("8", 8, "16", 16),
    "max_num_batched_tokens": ("512", 512, "1024", 1024),
    "max_waiting_requests": ("3", 3, "7", 7),
    "api_key": ("cli-key", "cli-key", "env-key", "env-key"),
    "chat_template": ("/tmp/cli.jinja", "/tmp/cli.jinja", "/tmp/env.jinja", "/tmp/env.jinja"),
    "shutdown_timeout": ("2.5", 2.5, "7", 7.0),
}


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return "GPT2SERVE_" + field.upper()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch) -> None:
    for name in list(os.environ):
        if name.startswith("GPT2SERVE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("field", sorted(FLAGS))
def test_flag_parses(field: str) -> None:
    given, parsed, _, _ = FLAGS[field]
    assert getattr(parse_settings([flag(field), given]), field) == parsed


@pytest.mark.parametrize("field", sorted(FLAGS))
def test_env_var_sets_the_field(field: str, monkeypatch) -> None:
    _, parsed_flag, given, parsed = FLAGS[field]
    monkeypatch.setenv(env_name(field), given)
    settings = parse_settings([])
    assert getattr(settings, field) == parsed != parsed_flag


@pytest.mark.parametrize("field", sorted(FLAGS))
def test_flag_overrides_env_var(field: str, monkeypatch) -> None:
    given, parsed, env_value, _ = FLAGS[field]
    monkeypatch.setenv(env_name(field), env_value)
    assert getattr(parse_settings([flag(field), given]), field) == parsed


def test_help_names_every_flag_and_its_env_var() -> None:
    text = " ".join(build_parser().format_help().split())
    for field in FLAGS:
        assert flag(field) in text and env_name(field) in text, field


@pytest.mark.parametrize("field", ["disable_triton", "enforce_eager", "enable_prefix_caching"])
def test_boolean_flags_and_env_vars(field: str, monkeypatch) -> None:
    default = getattr(parse_settings([]), field)
    assert getattr(parse_settings([flag(field)]), field) is True
    assert getattr(parse_settings(["--no-" + flag(field)[2:]]), field) is False
    monkeypatch.setenv(
        env_name(field), "1" if not default else "0"
    )  # e.g. GPT2SERVE_DISABLE_TRITON=1
    assert getattr(parse_settings([]), field) is (not default)
    assert flag(field) in " ".join(build_parser().format_help().split())


def test_defaults_and_served_name_fallback() -> None:
    settings = parse_settings([])
    assert (settings.model, settings.host, settings.port) == ("gpt2", "127.0.0.1", 8000)
    assert settings.model_name == "gpt2"
    assert parse_settings(["--served-model-name", "x"]).model_name == "x"


def test_invalid_value_exits_with_a_message() -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["--port", "not-a-port"])
    message = str(excinfo.value.code)
    assert message.startswith("gpt2serve: cannot start: invalid settings: port: ")
    assert "'not-a-port'" in message and "\n" not in message


def run_cli(*args: str) -> tuple[int, list[str]]:
    """Run `python -m gpt2serve` (CPU, no kernel build) to its exit: (status, stderr lines)."""
    command = [
        sys.executable, "-m", "gpt2serve", "--device", "cpu", "--no-cpu-attention-kernel",
        "--port", str(free_port()), *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr.splitlines()


def cannot_start_line(lines: list[str]) -> str:
    """The one `gpt2serve: cannot start:` line, which comes last."""
    matches = [line for line in lines if line.startswith("gpt2serve: cannot start: ")]
    assert len(matches) == 1 and lines[-1] == matches[0], lines
    return matches[0]


def test_missing_model_is_one_line_and_exit_1() -> None:
    status, lines = run_cli("--model", "/nonexistent/dir")
    assert status == 1, lines
    line = cannot_start_line(lines)
    assert "'/nonexistent/dir' not found" in line and "--log-level debug" in line
    assert len(lines) < 5 and not any("Traceback" in line for line in lines), lines


def test_missing_model_traceback_only_at_debug_level() -> None:
    status, lines = run_cli("--model", "/nonexistent/dir", "--log-level", "debug")
    assert status == 1, lines
    assert "'/nonexistent/dir' not found" in cannot_start_line(lines)
    assert any(line.startswith("Traceback") for line in lines), lines
    assert any("ModelLoadError" in line for line in lines), lines


def test_port_in_use_fails_before_the_model_loads() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        status, lines = run_cli("--model", "random:tiny", "--port", str(port))
    assert status == 1, lines
    line = cannot_start_line(lines)
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in line
    assert not any("loaded random:tiny" in line for line in lines), lines
    assert len(lines) < 5 and not any("Traceback" in line for line in lines), lines


def test_failure_in_the_app_lifespan_is_one_line(tmp_path) -> None:
    """A failure after the engine is built (a missing chat template) is one line too."""
    template = tmp_path / "missing.jinja"
    status, lines = run_cli(
        "--model", "random:tiny", "--num-kv-blocks", "8", "--chat-template", str(template)
    )
    assert status == 1, lines
    assert str(template) in cannot_start_line(lines)
    assert not any("Traceback" in line for line in lines), lines


def read_lines(stream, lines: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_startup_logs_model_then_cache_then_url_once_ready() -> None:
    port = free_port()
    env = {**os.environ, "GPT2SERVE_LOG_LEVEL": "info"}
    command = [
        sys.executable, "-m", "gpt2serve", "--model", "random:tiny", "--device", "cpu",
        "--port", str(port), "--num-kv-blocks", "64",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    url_line = f"serving random:tiny at http://127.0.0.1:{port}/v1"
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any(url_line in line for line in seen):
            assert time.monotonic() < deadline and process.poll() is None, "\n".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.5))
        # Announced only once ready: the server answers right away.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    def position(fragment: str) -> int:
        matches = [i for i, line in enumerate(seen) if fragment in line]
        assert len(matches) == 1, (fragment, seen)
        return matches[0]

    loaded = position("loaded random:tiny (2 layers")
    cache = position("KV cache: 63 blocks x 16 tokens = 1008 tokens")
    assert loaded < cache < position(url_line)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, {"GOMP_SPINCOUNT": "20000", "KMP_BLOCKTIME": "0"}),  # bounded spin, then sleep
        ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}),  # the user's wins
        ({"GOMP_SPINCOUNT": "0"}, {"GOMP_SPINCOUNT": "0"}),
        ({"KMP_BLOCKTIME": "200"}, {"KMP_BLOCKTIME": "200"}),
    ],
)
def test_openmp_threads_spin_briefly_unless_the_user_chose(environ, expected) -> None:
    set_openmp_wait(environ)
    assert environ == expected


def test_the_server_process_starts_with_the_openmp_wait_set() -> None:
    code = ("import os, sys\nfrom gpt2serve.server import cli\n"
            "def stop(settings):\n"
            "    print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)\n"
            "    raise SystemExit(0)\n"
            "cli.build_server = stop\ncli.main(['--model', 'random:tiny'])")  # fmt: skip
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["20000", "False"], done.stderr  # set before torch loads
