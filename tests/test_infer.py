"""infer.py on a toy model: a batch writes exactly the lines one at a time writes, bad lines and bad
audio get their error line while the rest is decoded, and a killed run resumes to the same file."""

import json
import shutil

import pytest
import torch

import infer
import tasks
import toy
from model import IOSUMConfig, IOSUMPangu
from whisper_enc import load_audio

MAX_NEW = 6  # a random model rarely stops: a few tokens per line keep the test fast


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small toy world, a random toy model saved as train.py saves one, and a test list with a
    bad JSON line, a corrupt wav, a missing wav and an unknown task among the good lines."""
    root = tmp_path_factory.mktemp("infer")
    paths = toy.ensure_toy_world(root / "toy", seed=3, n_train=1, n_dev=1, n_test=1, n_shards=1)
    torch.manual_seed(0)
    model = IOSUMPangu(IOSUMConfig.from_name("toy"))
    model.set_prompts(paths["tokenizer"])
    ckpt = model.save_pretrained(root / "model")
    lines = paths["test"].read_text().splitlines()[:6]  # 6 of its 13 lines: enough for 3 batches of 2
    (paths["test"].parent / "wav" / "corrupt.wav").write_bytes(b"RIFF not really a wav file")
    bad = [
        "{not json",
        json.dumps(
            {
                "key": "corrupt",
                "wav": "wav/corrupt.wav",
                "txt": "x",
                "task": "<TRANSCRIBE>",
                "extra": {"instruction": "transcribe"},
            }
        ),
        json.dumps(
            {
                "key": "missing",
                "wav": "wav/nowhere.wav",
                "txt": "x",
                "task": "<TRANSCRIBE>",
                "extra": {"instruction": "transcribe"},
            }
        ),
        json.dumps({"key": "think", "wav": lines and json.loads(lines[0])["wav"], "txt": "x", "task": "<THINK>"}),
    ]
    mixed = paths["test"].parent / "mixed.list"
    mixed.write_text("\n".join(lines[:3] + bad + lines[3:]) + "\n")
    return {"ckpt": ckpt, "list": mixed, "n_good": len(lines), "n_bad": len(bad)}


def run(world, out, *extra):
    argv = ["--checkpoint", str(world["ckpt"]), "--data", str(world["list"]), "--out", str(out), "--device", "cpu"]
    return infer.main(argv + ["--max-new-tokens", str(MAX_NEW), *extra])


def test_batch_of_8_writes_exactly_the_lines_of_batch_1(world, tmp_path):
    # the same CPU path for both (packing is chosen by batch size in auto): only batching differs
    one = run(world, tmp_path / "b1.jsonl", "--batch-size", "1", "--cpu-pack", "off")
    eight = run(world, tmp_path / "b8.jsonl", "--batch-size", "8", "--cpu-pack", "off")
    assert (tmp_path / "b1.jsonl").read_text() == (tmp_path / "b8.jsonl").read_text()
    assert one["decoded"] == eight["decoded"] == world["n_good"]


def test_bad_lines_are_reported_and_the_rest_decoded(world, tmp_path):
    summary = run(world, tmp_path / "r.jsonl", "--batch-size", "4")
    recs = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(recs) == world["n_good"] + world["n_bad"] == summary["lines"]
    assert [r["index"] for r in recs] == list(range(len(recs)))  # input order
    assert summary["errors"] == world["n_bad"] and summary["decoded"] == world["n_good"]
    errors = {r["key"]: r["error"] for r in recs if r["error"]}
    assert len(errors) == world["n_bad"]
    line4 = str(world["list"]) + ":4"  # a line that is not JSON has no key: named by file:line
    assert errors[line4].startswith(line4) and "bad_json" in errors[line4]
    assert "corrupt.wav" in errors["corrupt"]
    assert "nowhere.wav" in errors["missing"]
    assert "unknown_task" in errors["think"]
    good = [r for r in recs if not r["error"]]
    assert all(r["target"] and r["instruction"] and isinstance(r["output"], str) for r in good)
    assert all(r["finished"] == (r["n_tokens"] < MAX_NEW) for r in good)
    assert all(r["finished"] is False for r in recs if r["error"])


def test_killed_run_resumes_to_the_same_file(world, tmp_path, monkeypatch):
    full = tmp_path / "full.jsonl"
    run(world, full, "--batch-size", "2")
    out = tmp_path / "resumed.jsonl"
    real, calls = IOSUMPangu.generate, {"n": 0}

    def dies_on_third_batch(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(self, *a, **k)

    monkeypatch.setattr(IOSUMPangu, "generate", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run(world, out, "--batch-size", "2")
    monkeypatch.undo()
    partial = out.read_text().splitlines(keepends=True)
    assert 0 < len(partial) < len(full.read_text().splitlines())  # error lines and two batches
    with open(out, "a") as f:  # and the process died in the middle of writing a line
        f.write('{"index": 99, "key": "half')
    summary = run(world, out, "--batch-size", "2", "--resume")
    assert out.read_text() == full.read_text()
    assert summary["resumed"] == len(partial) and summary["decoded"] == world["n_good"] - 4


def test_one_file_prints_the_answer(world, capsys):
    wav = next(world["list"].parent.glob("wav/toy_test_*.wav"))
    argv = ["--checkpoint", str(world["ckpt"]), "--wav", str(wav), "--instruction", "Please transcribe the audio."]
    result = infer.main(argv + ["--device", "cpu", "--max-new-tokens", str(MAX_NEW)])
    assert capsys.readouterr().out == result["output"] + "\n"


def test_missing_checkpoint_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here: the default checkpoint is the study's
    with pytest.raises(SystemExit, match="study.py"):
        infer.main(["--data", "x.list", "--out", "o.jsonl", "--device", "cpu"])


def test_released_checkpoint_decodes_with_the_release_layout(reference_dir, tmp_path):
    """`--checkpoint step_N.pt --llm DIR`: the release's state dict (the reference checkpoint of the
    original code) with the LLM folder's config.json and tokenizer, decoded by default with the
    release's generate() prompt. The reference has no tokenizer of its 512-piece vocabulary, so the
    LLM folder gets a 512-piece toy one (ids stay inside the vocabulary)."""
    llm = tmp_path / "llm"
    llm.mkdir()
    shutil.copyfile(reference_dir / "config.json", llm / "config.json")
    text = [s for t in tasks.CLAUSES["en"].values() for c in t for s in c] + list(toy.TOY_WORDS)
    toy.train_toy_tokenizer(text * 5, llm / "tokenizer.model", vocab_size=512)
    lst = tmp_path / "data.list"
    line = {"key": "ref", "wav": str(reference_dir / "input.wav"), "txt": "x", "task": "<TRANSCRIBE>"}
    lst.write_text(json.dumps({**line, "instruction": "transcribe the audio please"}) + "\n")
    argv = ["--checkpoint", str(reference_dir / "checkpoint.pt"), "--llm", str(llm), "--config", "reference-tiny"]
    infer.main(
        argv + ["--data", str(lst), "--out", str(tmp_path / "r.jsonl"), "--device", "cpu", "--max-new-tokens", "5"]
    )
    got = json.loads((tmp_path / "r.jsonl").read_text())
    model = IOSUMPangu.from_pretrained(reference_dir / "checkpoint.pt", llm_dir=llm, config="reference-tiny").eval()
    want, ids = model.generate(
        audio=[load_audio(reference_dir / "input.wav")],
        instruction=["transcribe the audio please"],
        layout="release",
        max_new_tokens=5,
    )
    assert got["output"] == want[0] and got["n_tokens"] == len(ids[0]) == 5 and got["finished"] is False
    # our conversion of it (python model.py convert) remembers whose weights they are: same layout
    converted = model.save_pretrained(tmp_path / "converted")
    infer.main(
        ["--checkpoint", str(converted), "--data", str(lst), "--out", str(tmp_path / "c.jsonl")]
        + ["--device", "cpu", "--max-new-tokens", "5"]
    )
    assert json.loads((tmp_path / "c.jsonl").read_text())["output"] == want[0]
