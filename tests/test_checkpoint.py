"""checkpoint.py: the one reader, strict loader and atomic write, on small files written here."""

import json

import pytest
import torch
from safetensors.torch import save_file

from checkpoint import atomic_dir, atomic_write, count_params, load_strict, read_checkpoint, read_tensors


def test_read_files_dirs_and_torch(tmp_path):
    a, b = torch.randn(3, 2), torch.arange(4)
    save_file({"a": a, "b": b}, tmp_path / "one.safetensors")
    sd = read_tensors(tmp_path / "one.safetensors")
    assert sd.keys() == {"a", "b"} and torch.equal(sd["a"], a) and torch.equal(sd["b"], b)
    assert read_tensors(tmp_path / "one.safetensors", keys=["a"]).keys() == {"a"}
    assert read_tensors(tmp_path / "one.safetensors", skip={"a": "b"}).keys() == {"b"}  # any iterable of names

    shards = tmp_path / "sharded"
    shards.mkdir()
    save_file({"a": a}, shards / "model-1.safetensors")
    save_file({"b": b}, shards / "model-2.safetensors")
    assert read_tensors(shards).keys() == {"a", "b"}  # no index: every .safetensors file
    index = {"weight_map": {"a": "model-1.safetensors", "b": "model-3.safetensors"}}
    (shards / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="shard model-3.safetensors named in"):
        read_tensors(shards)
    (shards / "model.safetensors.index.json").unlink()
    save_file({"a": a}, shards / "model-3.safetensors")
    with pytest.raises(KeyError, match="key a is also in another file"):
        read_tensors(shards)

    torch.save({"w": a}, tmp_path / "plain.pt")
    assert torch.equal(read_tensors(tmp_path / "plain.pt")["w"], a)
    torch.save({"dims": {"n_audio_head": 4}, "model_state_dict": {"w": a}}, tmp_path / "openai.pt")
    sd, extra = read_checkpoint(tmp_path / "openai.pt")
    assert sd.keys() == {"w"} and extra == {"dims": {"n_audio_head": 4}}
    with pytest.raises(ValueError, match="not a plain state dict, it also holds dims"):
        read_tensors(tmp_path / "openai.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        read_tensors(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt: cannot read as a torch checkpoint"):
        read_tensors(tmp_path / "junk.pt")


def test_load_strict_names_keys_and_assigns():
    ref = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(10)])
    sd = ref.state_dict()
    with torch.device("meta"):
        model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(10)])
    load_strict(model, dict(sd), dtype=torch.bfloat16)
    assert model[0].weight.dtype == torch.bfloat16 and torch.equal(model[0].weight, sd["0.weight"].bfloat16())
    assert count_params(model) == 60
    model[1].weight.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 56

    with pytest.raises(ValueError, match=r"missing keys 0\.bias, 0\.weight, 1\.bias, .* \.\.\. \(20 in all\)"):
        load_strict(model, {}, "empty")
    wrong = dict(sd, **{"0.weight": torch.zeros(3, 2), "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"src does not fit Sequential: unexpected keys extra \(from old\.extra\)"):
        load_strict(model, wrong, "src", origin={"extra": "old.extra", "0.weight": "old.w"})
    with pytest.raises(ValueError, match=r"mis-shaped keys: 0\.weight \(from old\.w\): \(3, 2\) in the checkpoint"):
        load_strict(model, wrong, "src", origin={"extra": "old.extra", "0.weight": "old.w"})


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "ckpt"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("2")
    assert (out / "sub" / "b.txt").read_text() == "2"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # replaced whole, not merged
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind

    atomic_write(tmp_path / "latest", "step_1\n")
    atomic_write(tmp_path / "latest", b"step_2\n")
    assert (tmp_path / "latest").read_text() == "step_2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "latest"]
