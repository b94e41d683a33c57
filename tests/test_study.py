"""study.py: the one-command toy study runs its whole path on a tiny setting and writes a valid
report; its splits are disjoint (speakers, utterances, phrasings); a short stage run is identical
for a seed. The full study is not run here (minutes); README gives its numbers."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import data
import study
import tasks
import toy

TINY = ["--scale", "0.01", "--world-size", "2", "1", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The study's command path on a tiny world (2 / 1 / 1 utterances per task combination) with
    every schedule cut to 1 % (2-9 steps a stage): it learns nothing, but runs every part."""
    root = tmp_path_factory.mktemp("study")
    argv = ["--out", str(root / "runs" / "toy"), "--toy-dir", str(root / "toy"), *TINY]
    report = study.main(argv)
    return root, argv, report


def test_tiny_study_writes_a_valid_report(tiny_study):
    root, argv, report = tiny_study
    out = root / "runs" / "toy"
    saved = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))
    assert set(saved["models"]) == {"stage1", "decoupled", "decoupled_fi", "joint"}
    n_test = len(list(data.read_raw_list(root / "toy" / "test" / "data.list")))
    for name, r in saved["models"].items():  # ifr_eval.py's report of every test line
        assert r["n"] == n_test and 0 <= r["ifr"] <= 100 and "metrics" in r, name
    assert {"toy world", "stage0", "stage0-whisper", "stage1", "stage2", "stage3", "joint"} <= set(saved["time_s"])
    assert saved["hardware"]["threads"] == 1 and saved["seeds"]["n"] == 1
    md = (out / "report.md").read_text(encoding="utf-8")
    for table in ("Table 2", "Table 3", "Table 6", "90.2", "51.5"):
        assert table in md
    assert (out / "stage3" / "final" / "config.json").exists()  # what infer.py loads by default
    # the ablation ran as many steps as stages 1-3 together
    steps = {n: sum(1 for _ in open(out / n / "log.jsonl")) for n in ("stage1", "stage2", "stage3", "joint")}
    assert steps["joint"] == steps["stage1"] + steps["stage2"] + steps["stage3"]
    # a rerun skips what is done: no training, no decoding, the same report, and the times the
    # parts took when they ran (kept in times.json)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/log.jsonl")} | {
        p: p.stat().st_mtime_ns for p in out.glob("eval/*.jsonl")
    }
    assert len(stamps) == 6 + 4  # six training logs (stage 0 has two), four decodes
    again = study.main(argv)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["models"] == report["models"]
    assert again["time_s"] == {**report["time_s"], "toy world": again["time_s"]["toy world"]}


def test_splits_disjoint_speakers_utterances_phrasings(tiny_study):
    root, _, _ = tiny_study
    paths = toy.toy_paths(root / "toy")
    index = json.loads(paths["index"].read_text(encoding="utf-8"))
    split_of = {s["id"]: s["split"] for s in index["speakers"]}
    samples = {
        "train": list(data.read_shard_list(paths["train"])),
        "dev": list(data.read_raw_list(paths["dev"])),
        "test": list(data.read_raw_list(paths["test"])),
    }
    keys = [s["key"] for ss in samples.values() for s in ss]
    assert len(keys) == len(set(keys))
    for split, ss in samples.items():
        for s in ss:
            extra = json.loads(s["extra"]) if isinstance(s["extra"], str) else s["extra"]
            assert split_of[extra["speaker"]] == split
    banks = {t: tasks.instruction_bank(t) for t in tasks.TASK_COMBOS}
    phrasings = {split: {p for b in banks.values() for p in b[split]} for split in ("train", "dev", "test")}
    assert not phrasings["train"] & phrasings["dev"] and not phrasings["train"] & phrasings["test"]
    assert not phrasings["dev"] & phrasings["test"]
    for split in ("dev", "test"):  # the lists ask with their own split's phrasings
        assert all(s["extra"]["instruction"] in phrasings[split] for s in samples[split])
    corpus = paths["corpus"].read_text(encoding="utf-8")
    assert not [p for p in phrasings["dev"] | phrasings["test"] if p in corpus]
    # what training is asked with: stage 3's speech instructions and stage 2's text intents
    speech = {p for b in banks.values() for p in b["speech"]}
    intents = {s["instruction"].split(":", 1)[1] for s in tasks.intent_samples("train")}
    assert speech | intents <= phrasings["train"]


def test_short_stage_run_identical_for_a_seed(tiny_study, tmp_path):
    root, _, _ = tiny_study
    world = toy.toy_paths(root / "toy")
    seen = []  # train.run's hook sees every step (study.py takes the second core with it)
    for run in ("a", "b"):  # 4 steps of stage 0 each, same seed
        study.train_part(0, tmp_path / run, world, seed=5, scale=0.007, threads=1, on_step=seen.append)
    assert seen == [1, 2, 3, 4] * 2
    a = load_file(tmp_path / "a" / "stage0" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "stage0" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [(tmp_path / r / "stage0" / "log.jsonl").read_text() for r in ("a", "b")]
    strip = lambda t: [{k: v for k, v in json.loads(x).items() if k != "step_time"} for x in t.splitlines()]  # noqa: E731
    assert strip(logs[0]) == strip(logs[1])


def test_part_trained_beside_matches_trained_alone(tiny_study, tmp_path):
    """The study trains the ablation in a process of its own beside stages 1-3 (--jobs 2): the same
    weights as training it in this process, from the same stage-0 models."""
    root, argv, report = tiny_study
    assert report["hardware"]["jobs"] == min(2, os.cpu_count() or 1) and report["wall_s"] > 0
    out = root / "runs" / "toy"
    for part in ("stage0", "stage0-whisper"):
        shutil.copytree(out / part, tmp_path / part)
    study.train_part("joint", tmp_path, toy.toy_paths(root / "toy"), seed=1234, scale=0.01, threads=1)
    a = load_file(out / "joint" / "final" / "model.safetensors")
    b = load_file(tmp_path / "joint" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_on_another_world_stops(tiny_study, tmp_path):
    """A run folder records its toy world; a rerun on another one (here --reading 0) or on runs
    that recorded none stops with a message naming the change, before any part is trained."""
    root, argv, _ = tiny_study
    out = root / "runs" / "toy"
    record = out / "world.json"
    assert json.loads(record.read_text(encoding="utf-8")) == toy.toy_params_at(root / "toy")
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/log.jsonl")}
    other = [a if a != str(root / "toy") else str(tmp_path / "toy0") for a in argv] + ["--reading", "0"]
    with pytest.raises(SystemExit, match=r"another toy world \(reading \d+ -> 0"):
        study.main(other)
    kept = record.read_text(encoding="utf-8")
    record.unlink()  # runs from before study.py recorded the world
    try:
        with pytest.raises(SystemExit, match="did not record"):
            study.main(argv)
    finally:
        record.write_text(kept, encoding="utf-8")
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/log.jsonl")} == stamps  # nothing trained
