"""Loading weights: HF directories (safetensors and .bin), hub ids, random sizes, and errors."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt2serve.model.attention import build_attention_metadata
from gpt2serve.model.config import NAMED_CONFIGS, named_config
from gpt2serve.model.weights import ModelLoadError, load_model, random_model, save_hf_checkpoint


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    save_hf_checkpoint(random_model(named_config("tiny"), "cpu", torch.float32, seed=3), path)
    return path


def full_logits(model, token_ids: list[int]) -> torch.Tensor:  # [len, vocab]
    metadata, positions = build_attention_metadata(
        [[1, 2, 3]], [len(token_ids)], [len(token_ids)], 16
    )
    kv_cache = model.allocate_kv_cache(4, 16)
    with torch.no_grad():
        return model(torch.tensor(token_ids), positions, kv_cache, metadata)


def test_random_model_is_seeded_and_sized() -> None:
    a = random_model(named_config("tiny"), "cpu", torch.float32, seed=1)
    b = load_model("random:tiny", seed=1)
    c = load_model("random:tiny", seed=2)
    for (name, pa), pb, pc in zip(
        a.named_parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if name.endswith("wte.weight"):
            assert not torch.equal(pa, pc)
    assert sum(p.numel() for p in a.parameters()) == named_config("tiny").num_parameters


def test_named_sizes_match_gpt2_family() -> None:
    assert NAMED_CONFIGS["gpt2"].num_parameters == 124_439_808
    assert NAMED_CONFIGS["gpt2-xl"].n_head == 25
    assert NAMED_CONFIGS["gpt2-medium"].n_layer == 24


def test_unknown_random_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown model size 'gpt5'.*tiny, gpt2"):
        load_model("random:gpt5")


def test_our_checkpoint_loads_in_transformers_with_same_logits(saved_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(saved_dir).eval()
    ours = load_model(str(saved_dir))
    tokens = [464, 2068, 7586, 21831, 18045, 625, 262]
    with torch.no_grad():
        expected = hf(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(full_logits(ours, tokens), expected, atol=1e-4, rtol=0)


def test_bin_checkpoint_without_prefix_and_with_buffers(saved_dir: Path, tmp_path: Path) -> None:
    tensors = load_file(str(saved_dir / "model.safetensors"))
    stripped = {name.removeprefix("transformer."): t for name, t in tensors.items()}
    stripped["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
    stripped["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    stripped["lm_head.weight"] = tensors["transformer.wte.weight"]
    torch.save(stripped, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((saved_dir / "config.json").read_text())
    tokens = [1, 2, 3, 4, 5]
    torch.testing.assert_close(
        full_logits(load_model(str(tmp_path)), tokens),
        full_logits(load_model(str(saved_dir)), tokens),
        atol=0,
        rtol=0,
    )


def test_loads_in_half_precision(saved_dir: Path) -> None:
    model = load_model(str(saved_dir), dtype=torch.bfloat16)
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert full_logits(model, [1, 2, 3]).dtype == torch.float32


@pytest.fixture
def hf_copy(tmp_path: Path, hf_saved_model_dir: Path) -> Path:
    """A private copy of the `save_pretrained` directory, for a test to damage."""
    return Path(shutil.copytree(hf_saved_model_dir, tmp_path / "model"))


def denied_for(name: str, failing: Path):
    """`os.<name>` that raises PermissionError (EACCES) for `failing` only."""
    real = getattr(os, name)

    def call(path, *args, **kwargs):
        if Path(path) == failing:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    return call


def test_missing_weights_file(tmp_path: Path, saved_dir: Path) -> None:
    (tmp_path / "config.json").write_text((saved_dir / "config.json").read_text())
    with pytest.raises(
        ModelLoadError, match="weights not found in .*: looked for .*safetensors and pytorch_model"
    ):
        load_model(str(tmp_path))


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json not found"):
        load_model(str(tmp_path))


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(ModelLoadError, match=re.escape(f"model directory '{missing}' not found")):
        load_model(str(missing))
    with pytest.raises(ModelLoadError, match="model directory .*no/such/model/dir.* not found"):
        load_model("./no/such/model/dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_and_directory_are_permission_denied(hf_copy: Path) -> None:
    weights = hf_copy / "model.safetensors"
    weights.chmod(0)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(str(hf_copy))
    message = str(excinfo.value)
    assert message.startswith(f"permission denied: cannot read {weights}")
    assert f"uid {os.geteuid()}" in message and "No such file" not in message
    hf_copy.chmod(0o300)  # enterable, not listable: a glob would silently find no weights
    try:
        with pytest.raises(ModelLoadError, match=re.escape(f"cannot list {hf_copy}")):
            load_model(str(hf_copy))
    finally:
        hf_copy.chmod(0o700)


@pytest.mark.parametrize("denied_by", ["open", "loader"])
def test_unreadable_weights_file_even_as_root(
    denied_by: str, hf_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`open`: the file cannot be opened, and safetensors calls that "No such file"."""
    weights = hf_copy / "model.safetensors"
    if denied_by == "open":
        monkeypatch.setattr(os, "open", denied_for("open", weights))

    def load_file(filename: str, device: str = "cpu") -> None:
        if denied_by == "open":
            raise FileNotFoundError(f"No such file or directory: {filename}")
        raise PermissionError(13, "Permission denied", filename)

    monkeypatch.setattr("safetensors.torch.load_file", load_file)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(str(hf_copy))
    message = str(excinfo.value)
    assert message.startswith(f"permission denied: cannot read {weights}")
    assert f"uid {os.geteuid()}" in message and "No such file" not in message


def test_unreadable_config_and_directory_even_as_root(
    hf_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(os, "listdir", denied_for("listdir", hf_copy))
        with pytest.raises(
            ModelLoadError, match=re.escape(f"permission denied: cannot list {hf_copy}")
        ):
            load_model(str(hf_copy))
    config = hf_copy / "config.json"
    real_read_text = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self == config:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(
        ModelLoadError, match=re.escape(f"permission denied: cannot read {config} (")
    ):
        load_model(str(hf_copy))


def test_dangling_weights_link_is_not_found(hf_copy: Path) -> None:
    """As in an HF cache whose blob was deleted: the name is listed, the file is not there."""
    weights = hf_copy / "model.safetensors"
    weights.unlink()
    weights.symlink_to(hf_copy / "blobs" / "gone")
    with pytest.raises(ModelLoadError, match=re.escape(f"weights file not found: {weights}")):
        load_model(str(hf_copy))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_names_file_and_reason(damage: str, hf_copy: Path) -> None:
    weights = hf_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 10)
    prefix = re.escape(f"could not read weights from {weights}: ")
    with pytest.raises(ModelLoadError, match=prefix + "Error while deserializing header"):
        load_model(str(hf_copy))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_bin_is_one_line_naming_the_file(
    damage: str, tmp_path: Path, saved_dir: Path
) -> None:
    (tmp_path / "config.json").write_text((saved_dir / "config.json").read_text())
    bin_file = tmp_path / "pytorch_model.bin"
    torch.save(load_file(str(saved_dir / "model.safetensors")), bin_file)
    data = bin_file.read_bytes()
    bin_file.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"garbage" * 10)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(str(tmp_path))
    message = str(excinfo.value)
    assert message.startswith(f"could not read weights from {bin_file}: ")
    assert "\n" not in message and len(message) < 400
    assert "Weights only load failed" not in message  # torch's advice, not the reason


def test_wrong_shape_names_tensor_file_and_both_shapes(hf_copy: Path) -> None:
    weights = hf_copy / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(64, 100)  # Conv1D: [in, 4 * in]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    expected = (
        f"wrong shape for tensor 'transformer.h.1.mlp.c_fc.weight' in {weights}: "
        "found (64, 100), expected (64, 256)"
    )
    with pytest.raises(ModelLoadError, match=re.escape(expected)):
        load_model(str(hf_copy))


def test_missing_tensor_is_named(tmp_path: Path, saved_dir: Path) -> None:
    tensors = load_file(str(saved_dir / "model.safetensors"))
    del tensors["transformer.ln_f.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((saved_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="missing tensors: transformer.ln_f.bias"):
        load_model(str(tmp_path))


def test_unsupported_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="model_type 'llama' is not supported"):
        load_model(str(tmp_path))


def test_offline_hub_id_without_cache_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as excinfo:
        load_model("openai-community/gpt2")
    message = str(excinfo.value)
    assert "neither a local directory nor downloadable" in message
    assert "not in the local HF cache" in message and "\n" not in message


def test_unreachable_hub_says_what_the_hub_said(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    def no_network(*args: object, **kwargs: object) -> None:
        error = LocalEntryNotFoundError("An error happened while trying to locate the files.")
        raise error from ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_network)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model("someone/gpt2-finetune")
    message = str(excinfo.value)
    assert message.startswith("'someone/gpt2-finetune' is neither a local directory nor down")
    assert "Name or service not known" in message and "\n" not in message


def test_offline_hub_id_loads_from_hf_cache(
    tmp_path: Path, saved_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The layout huggingface_hub writes: refs/main names the snapshot holding the files.
    repo_cache = tmp_path / "models--someone--tiny-gpt2"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_cache / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(revision)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((saved_dir / name).read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    model = load_model("someone/tiny-gpt2")
    tokens = [5, 6, 7]
    torch.testing.assert_close(
        full_logits(model, tokens), full_logits(load_model(str(saved_dir)), tokens)
    )


def test_random_weights_drawn_elsewhere_keep_the_init_scheme() -> None:
    """`init_device` changes where numbers are drawn, not GPT-2's initialisation."""
    config = named_config("tiny")
    cpu = random_model(config, "cpu", torch.float32, seed=3)
    again = random_model(config, "cpu", torch.float32, seed=3, init_device="cpu")
    for a, b in zip(cpu.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    params = dict(cpu.named_parameters())
    assert params["transformer.h.0.ln_1.weight"].eq(1).all()
    assert params["transformer.h.0.attn.c_attn.bias"].eq(0).all()
    assert abs(params["transformer.wte.weight"].std().item() - 0.02) < 2e-3


@pytest.mark.gpu
def test_random_weights_drawn_on_the_gpu() -> None:
    config = named_config("tiny")
    model = random_model(config, "cuda", torch.float16, seed=3, init_device="cuda")
    params = dict(model.named_parameters())
    assert params["transformer.wte.weight"].device.type == "cuda"
    assert params["transformer.wte.weight"].dtype == torch.float16
    assert params["transformer.h.0.ln_1.weight"].eq(1).all()
    assert abs(params["transformer.wte.weight"].float().std().item() - 0.02) < 2e-3
    again = random_model(config, "cuda", torch.float16, seed=3, init_device="cuda")
    assert torch.equal(params["transformer.wte.weight"], again.transformer.wte.weight)
