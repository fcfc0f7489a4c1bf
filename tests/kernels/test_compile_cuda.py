"""The Triton kernels compile to an H100 (sm_90) cubin on a machine with no GPU.

The interpreter runs kernels as numpy and forgives what the compiler rejects (loop-carried
types, scalar branches, layouts, shared memory); this compiles every kernel at the block
sizes its launcher picks, in a subprocess because TRITON_INTERPRET is read at decoration.
Run as a script, it does the compiling. It runs once with this environment's Triton and once
with each Triton folder in GPT2SERVE_EXTRA_TRITON (`pip install --target`; `.ci/run` adds 3.6,
the oldest release the project supports, while the environment has the newest).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SKIP_EXIT = 3  # the script's exit code when this Triton has no CUDA compiler


def _configs() -> Iterator[tuple[Any, str, dict[str, str], dict[str, Any], int]]:
    """(kernel, element type, pointer types, constexprs, num_warps) as the launchers pick them."""
    from gpt2serve.kernels.attention import (
        _decode_attention_kernel,
        _decode_reduce_kernel,
        _prefill_attention_kernel,
    )
    from gpt2serve.kernels.bitmask import _apply_token_bitmask_kernel
    from gpt2serve.kernels.block_copy import _copy_blocks_kernel
    from gpt2serve.kernels.kv_cache import _write_kv_cache_kernel
    from gpt2serve.kernels.logprobs import _chosen_logprob_kernel
    from gpt2serve.kernels.penalties import _add_bias_kernel, _count_tokens_kernel, _penalize_kernel
    from gpt2serve.kernels.sampling import _sample_kernel, search_rounds

    meta = {"block_tables_ptr": "*i32", "seq_lens_ptr": "*i32", "query_start_ptr": "*i32"}
    parts = {"part_out_ptr": "*fp32", "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32"}
    for dtype in ("fp16", "bf16", "fp32"):
        yield _write_kv_cache_kernel, dtype, {"slot_ptr": "*i64"}, {"BLOCK": 1024}, 4
        yield _copy_blocks_kernel, dtype, {"block_mapping_ptr": "*i64"}, {"BLOCK": 1024}, 4
        bitmask_ptrs = {"bitmask_ptr": "*i32", "row_indices_ptr": "*i64"}
        yield _apply_token_bitmask_kernel, dtype, bitmask_ptrs, {"BLOCK_WORDS": 128}, 4
        tiles = [(16, 32, 64), (32, 32, 16)] + ([] if dtype == "fp32" else [(64, 64, 128)])
        for m, n, d in tiles:
            constexprs = {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": d, "UPCAST": False}
            yield _prefill_attention_kernel, dtype, meta, constexprs, 4 if d <= 64 else 8
        for splits, d in ((1, 64), (8, 64), (4, 128)):
            constexprs = {"NUM_SPLITS": splits, "BLOCK_N": 64, "BLOCK_D": d}
            yield _decode_attention_kernel, dtype, meta | parts, constexprs, 4
        yield _decode_reduce_kernel, dtype, parts, {"NUM_SPLITS": 8, "BLOCK_D": 64}, 4
        logprob_ptrs = {"token_ids_ptr": "*i64", "out_ptr": "*fp32"}
        yield _chosen_logprob_kernel, dtype, logprob_ptrs, {"BLOCK_V": 4096}, 4
    yield _count_tokens_kernel, "i32", {"ids_ptr": "*i64"}, {"BLOCK": 1024}, 4
    bias_ptrs = {"rows_ptr": "*i64", "ids_ptr": "*i64"}
    yield _add_bias_kernel, "fp32", bias_ptrs, {"BLOCK": 1024}, 4
    tables = {"prompt_seen_ptr": "*i32", "output_counts_ptr": "*i32"}
    yield _penalize_kernel, "fp32", tables, {"BLOCK_V": 2048}, 4
    sampling = {"top_k_ptr": "*i32", "out_ptr": "*i64"}
    for rows, block_v, search_v, ways in ((1, 4096, 2048, 8), (128, 16, 16, 8), (4, 1024, 256, 1)):
        constexprs = {"ROUNDS": search_rounds(ways), "BLOCK_R": rows, "BLOCK_V": block_v,
                      "SEARCH_V": search_v, "WAYS": ways}  # fmt: skip
        yield _sample_kernel, "fp32", sampling, constexprs, 8 if rows * block_v >= 4096 else 4


def compile_all() -> int:
    """Compile every configuration for sm_90; return the count."""
    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        sys.exit(SKIP_EXIT)
    count = 0
    for kernel, dtype, pointers, constexprs, num_warps in _configs():
        signature = {}
        for name in kernel.arg_names:
            if name in constexprs:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = pointers.get(name, f"*{dtype}")
            else:
                signature[name] = "fp32" if name == "scale" else "i32"
        # Aligned pointers, as torch allocates them, get the runtime's divisibility hint.
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
                 if signature[name].startswith("*")}  # fmt: skip
        source = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
        triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        count += 1
    return count


def triton_installs() -> list[str]:
    """ "" for this environment's Triton, then each folder of GPT2SERVE_EXTRA_TRITON."""
    extra = os.environ.get("GPT2SERVE_EXTRA_TRITON", "")
    return ["", *(folder for folder in extra.split(os.pathsep) if folder)]


def folder_version(folder: str) -> str:
    """The Triton version a `pip install --target` folder holds."""
    (dist_info,) = Path(folder).glob("triton-*.dist-info")
    return dist_info.name.removeprefix("triton-").removesuffix(".dist-info")


@pytest.mark.parametrize("triton_folder", triton_installs())
def test_every_kernel_compiles_for_sm90(triton_folder: str) -> None:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if triton_folder:
        env["PYTHONPATH"] = os.pathsep.join([triton_folder, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, __file__], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    if proc.returncode == SKIP_EXIT:
        pytest.skip("this Triton build has no CUDA compiler")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "compiled 38 kernel configurations" in proc.stdout
    if triton_folder:  # it really was that Triton
        assert proc.stdout.strip().endswith(f"with Triton {folder_version(triton_folder)}")


if __name__ == "__main__":
    import triton

    print(
        f"compiled {compile_all()} kernel configurations for sm_90 with Triton {triton.__version__}"
    )
