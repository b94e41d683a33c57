"""data.py: the release's sample formats, data mixes, stage prompts, batching, splits, resume and bad
data, on the release's format samples and a small toy world. Oracles: soundfile / tarfile / librosa
read the same files directly."""

import io
import json
import logging
import math
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import tasks
import toy as toy_world

FAKE = "common_utils/fake_data"  # inside samples/osum_fake_data, where the lists' paths start


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A small toy world (12 train utterances per task combo), built once for this module."""
    root = tmp_path_factory.mktemp("toy") / "toy"
    return toy_world.ensure_toy_world(root, seed=7, n_train=12, n_dev=2, n_test=4, n_shards=4)


def _batches(loader):
    return [b for b in loader]


# ----------------------------------------------------------------------------- sample formats


def test_raw_list_reads_fields_and_resamples_24k(samples_dir, monkeypatch):
    monkeypatch.chdir(samples_dir)
    counter = data.BadDataCounter()
    samples = list(data.read_raw_list(f"{FAKE}/raw/data.list", counter))
    assert len(samples) == 10 and counter.bad == 0
    lines = [json.loads(x) for x in Path(f"{FAKE}/raw/data.list").read_text().splitlines() if x]
    for s, line in zip(samples, lines):
        assert s["key"] == line["key"] and s["txt"] == line["txt"]
        assert s["task"] == "<S2TCHAT> <TEXT2TOKEN> <THINK>"
        assert s["extra"] == line["extra"] and s["extra"]["age"] == "<ADULT>"
        assert s["tar_path_key"] == line["tar_path_key"]  # unknown fields pass through
        assert Path(s["wav"]).is_file()
    # The wav is 24 kHz; we hand out 16 kHz. Oracle: librosa's resampler on the same file.
    librosa = pytest.importorskip("librosa")
    audio = data.decode_audio(samples[0]).numpy()
    x, sr = sf.read(samples[0]["wav"], dtype="float32")
    assert sr == 24000
    ref = librosa.resample(x, orig_sr=sr, target_sr=16000)
    assert audio.shape == ref.shape == (math.ceil(len(x) * 16000 / 24000),)
    assert np.abs(audio - ref).max() < 0.02 and np.corrcoef(audio, ref)[0, 1] > 0.9999
    # ... and the header-only frame count equals the frames of the decoded audio.
    assert data.audio_frames(samples[0]) == len(audio) // 160
    # Their task is speech-to-speech (not modelled): parsed, then refused by the task mapping.
    with pytest.raises(tasks.BadSample) as e:
        tasks.build_prompt(samples[0], 1, "train", data._rng(0))
    assert e.value.reason == "unknown_task"


def test_sample_shard_list_reports_its_broken_path(samples_dir, monkeypatch, caplog):
    monkeypatch.chdir(samples_dir)
    counter = data.BadDataCounter()
    with caplog.at_level(logging.WARNING, logger="data"):
        samples = list(data.read_shard_list(f"{FAKE}/shard/shards_list.txt", counter))
    assert samples == [] and counter.counts == {"missing_file": 1}
    assert f"{FAKE}/shard/shards_list.txt:1" in counter.examples[0]
    assert "shards/shards_000000000.tar does not exist" in counter.examples[0]
    assert "shards_list.txt:1" in caplog.text


def test_shard_members_grouped_by_key(samples_dir, tmp_path):
    tar_path = samples_dir / FAKE / "shard" / "shards_000000000.tar"
    (tmp_path / "shards_list.txt").write_text(f"{tar_path}\n")
    samples = list(data.read_shard_list(tmp_path / "shards_list.txt"))
    with tarfile.open(tar_path) as tar:  # oracle: the members, read by tarfile directly
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({n.rsplit(".", 1)[0] for n in members})
    assert sorted(s["key"] for s in samples) == keys and len(keys) == 10
    for s in samples:
        k = s["key"]
        assert s["audio"] == members[f"{k}.wav"] and s["audio_format"] == "wav"
        for ext in ("txt", "task", "lang", "speaker", "emotion", "gender", "duration"):
            assert s[ext].strip() == members[f"{k}.{ext}"].decode().strip()
        assert s["extra"] == json.loads(members[f"{k}.extra"])
        ref, sr = sf.read(io.BytesIO(members[f"{k}.wav"]), dtype="float32")
        assert sr == 16000
        # the same soundfile decode of the same bytes (mono, 16 kHz: no down-mix arithmetic, no
        # resampling): bit-equal; the default float32 tolerance is slack
        torch.testing.assert_close(data.decode_audio(s), torch.from_numpy(ref))


def test_combine_pairs_labels_from_list_audio_from_tar(samples_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(samples_dir)
    pairs = data.combine_pairs(f"{FAKE}/combine/combines_list.txt", f"{FAKE}/combine/combines_tar_root.txt")
    assert pairs == [f"{FAKE}/combine/shards_000000000.list|{FAKE}/shard/shards_000000000.tar"]
    (tmp_path / "combine.txt").write_text("\n".join(pairs) + "\n")
    counter = data.BadDataCounter()
    samples = list(data.read_combine_list(tmp_path / "combine.txt", counter))
    assert len(samples) == 10 and counter.bad == 0
    labels = [json.loads(x) for x in open(f"{FAKE}/combine/shards_000000000.list") if x.strip()]
    with tarfile.open(f"{FAKE}/shard/shards_000000000.tar") as tar:
        audio = {m.name[:-4]: tar.extractfile(m).read() for m in tar if m.name.endswith(".wav")}
    by_key = {s["key"]: s for s in samples}
    for line in labels:
        s = by_key[line["key"]]
        assert s["task"] == line["tas_tag"] == "<TRANSCRIBE>"  # the tar says <S2TCHAT> ...
        assert s["txt"] == line["txt"] and s["extra"]["q_txt"] == line["extra"]["q_txt"]
        assert s["audio"] == audio[line["key"]]
    target = tasks.build_prompt(samples[0], 1, "train", data._rng(0))
    assert target["target"] == "<asr>" + labels[0]["txt"].lower()


def test_data_mix_json_and_yaml(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "asr.list").write_text('{"key": "a", "wav": "a.wav", "txt": "x"}\n')
    (tmp_path / "lists" / "emo list.txt").write_text('{"key": "b", "wav": "b.wav", "txt": "x"}\n')
    (tmp_path / "shards_list.txt").write_text("a.tar\n")
    want = [
        ("asr", tmp_path / "lists/asr.list", 2.0, "raw"),
        ("emotion", tmp_path / "lists/emo list.txt", 0.5, "raw"),
        ("shards", tmp_path / "shards_list.txt", 1.0, "shard"),
    ]
    mix = {
        "asr": {"path": "lists/asr.list", "weight": 2},
        "emotion": {"path": "lists/emo list.txt", "weight": 0.5, "type": "raw"},
        "shards": {"path": "./shards_list.txt", "weight": 1.0, "type": "shard"},
    }
    (tmp_path / "mix.json").write_text(json.dumps(mix))
    sources = data.read_data_mix(tmp_path / "mix.json")  # paths beside the mix file
    assert [(s.name, s.path, s.weight, s.kind) for s in sources] == want
    pytest.importorskip("yaml")
    (tmp_path / "mix.yaml").write_text(
        "asr: {path: lists/asr.list, weight: 2}\nemotion:\n  path: lists/emo list.txt\n  weight: 0.5\n"
        "shards: {path: ./shards_list.txt, type: shard}  # a comment\n"
    )
    sources = data.read_data_mix(tmp_path / "mix.yaml")
    assert [(s.name, s.path, s.weight, s.kind) for s in sources] == want
    (tmp_path / "bad.json").write_text(json.dumps({"asr": {"weight": 1}}))
    with pytest.raises(ValueError, match="'asr' needs a 'path'"):
        data.read_data_mix(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- tasks, targets


def test_stage_prompts(toy):
    sample = next(iter(data.read_raw_list(toy["test"])))
    rng = data._rng(0)
    tags = tasks.parse_task(sample["task"])
    p1 = tasks.build_prompt(sample, 1, "test", rng)
    assert p1["instruction"] == "".join(tags)  # stage 1: the fixed tag
    p3 = tasks.build_prompt(sample, 3, "test", rng)
    assert p3["instruction"] == sample["extra"]["instruction"]
    assert p3["instruction"] in tasks.instruction_bank(tags)["test"]
    # stage 3 train: the speech phrasings, and the fixed tag instruction in about FIXED_SHARE of draws
    speech = set(tasks.instruction_bank(tags)["speech"])
    draws = [tasks.build_prompt(sample, 3, "train", rng) for _ in range(400)]
    fixed = [d["instruction"] == p1["instruction"] for d in draws]
    assert all(f or d["instruction"] in speech for f, d in zip(fixed, draws))
    assert abs(sum(fixed) / len(draws) - tasks.FIXED_SHARE) < 0.05  # binomial sd 0.015 at 400 draws
    assert not any(tasks.build_prompt(sample, 2, "train", rng)["instruction"] == p1["instruction"] for _ in range(50))
    assert p1["target"] == p3["target"] == draws[0]["target"]
    assert p1["target"].startswith("".join(tags))


# ----------------------------------------------------------------------------- batching


def test_batches_respect_frame_budget_and_format(toy):
    from tokenizer import PanguTokenizer

    tok = PanguTokenizer(toy["tokenizer"])
    budget = 1500
    loader = data.make_loader(toy["train"], toy["tokenizer"], stage=3, max_frames_in_batch=budget)
    batches = _batches(loader)
    kinds = {b["kind"] for b in batches}
    assert kinds == {"speech", "text"}
    n_speech = 0
    for b in batches:
        B = len(b["keys"])
        ins, tgt = b["instruction"], b["target"]
        assert ins.shape[0] == tgt.shape[0] == B and ins.dtype == tgt.dtype == torch.long
        for i in range(B):
            t = tgt[i][tgt[i] != -100].tolist()
            assert t[-1] == tok.eos_id and t[:-1] == tok.encode(b["target_text"][i], bos=False)
            n = int((ins[i] != -1).sum())
            assert ins[i, :n].tolist() == tok.encode(b["instruction_text"][i], bos=False)
            assert (ins[i, n:] == -1).all() and tok.bos_id not in ins[i, :n].tolist()
        if b["kind"] == "speech":
            n_speech += B
            mel, lengths = b["mel"], b["mel_lengths"]
            assert mel.shape[:2] == (B, 80) and mel.shape[2] == int(lengths.max())
            assert B == 1 or B * mel.shape[2] <= budget
            for i, L in enumerate(lengths.tolist()):
                assert (mel[i, :, L:] == 0).all()
        else:
            assert "mel" not in b
    assert n_speech == 13 * 12  # every train utterance once


def test_sort_keeps_text_batches_among_speech():
    """Speech comes out sorted by length, text in the order it came (sorted, a text batch would
    hold only one-tag or only two-tag intents), and a buffer's text batches are spread between its
    speech batches (sorting both kinds together would put every text batch first)."""
    rng = random.Random(0)
    records = [dict(kind="speech", n_frames=rng.randrange(100, 3000)) for _ in range(96)]
    records += [dict(kind="text", target_ids=[0] * rng.randrange(3, 60)) for _ in range(64)]
    rng.shuffle(records)
    out = list(data.sort_buffer(records, size=len(records)))
    assert sorted(map(id, out)) == sorted(map(id, records))
    lengths = [data._length(r) for r in out if r["kind"] == "speech"]
    assert lengths == sorted(lengths)
    assert [id(r) for r in out if r["kind"] == "text"] == [id(r) for r in records if r["kind"] == "text"]
    kinds = [b[0]["kind"] for b in data.dynamic_batches(out, 4000, text_batch_size=16)]
    assert kinds.count("text") == 4
    first, last = kinds.index("text"), len(kinds) - 1 - kinds[::-1].index("text")
    assert kinds[:first].count("speech") > 0 and kinds[last:].count("speech") > 0


def test_specaugment_and_specsub_as_released():
    rng = random.Random(0)
    for _ in range(20):
        mel = torch.rand(80, 300) + 1  # no zeros of its own
        y = data.spec_aug(mel, rng)
        zero_t = (y == 0).all(0)
        zero_f = (y == 0).all(1)
        runs = lambda m: sum(1 for i in range(len(m)) if m[i] and (i == 0 or not m[i - 1]))  # noqa: E731
        assert runs(zero_t) <= 2 and zero_t.sum() <= 100  # 2 time masks <= 50 frames
        assert runs(zero_f) <= 2 and zero_f.sum() <= 20  # 2 freq masks <= 10 bins
        assert torch.equal(y[y != 0], mel[y != 0])
        z = data.spec_sub(mel, rng)
        changed = [t for t in range(300) if not torch.equal(z[:, t], mel[:, t])]
        assert len(changed) <= 90  # 3 spans <= 30 frames
        for t in range(300):  # every frame is itself or an earlier frame of the input
            assert (mel[:, : t + 1] == z[:, t : t + 1]).all(0).any()


# ----------------------------------------------------------------------------- splits, resume


def _all_keys(toy):
    shards = [s["key"] for s in data.read_shard_list(toy["train"])]
    raw = [s["key"] for s in data.read_raw_list(toy["dev"])]
    return shards, raw


def test_rank_and_worker_splits_are_disjoint_and_complete(toy):
    shards, raw = _all_keys(toy)
    for src, want in ((toy["train"], shards), (toy["dev"], raw)):
        seen = []
        for rank in range(2):
            loader = data.make_loader(
                src,
                toy["tokenizer"],
                seed=3,
                num_workers=2,
                rank=rank,
                world_size=2,
                max_frames_in_batch=2000,
            )
            seen += [k for b in loader for k in b["keys"]]
        assert sorted(seen) == sorted(want) and len(set(seen)) == len(seen)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_with_the_same_samples(toy, num_workers):
    make = lambda: data.make_loader(  # noqa: E731
        toy["train_mix"],
        toy["tokenizer"],
        stage=3,
        seed=5,
        num_workers=num_workers,
        max_frames_in_batch=1500,
    )
    full = _batches(make())
    first = make()
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state["batches_consumed"] == 3
    assert state["samples_consumed"] == sum(len(b["keys"]) for b in head)
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip
    rest = _batches(resumed)
    assert [b["keys"] for b in head + rest] == [b["keys"] for b in full]
    for a, b in zip(full[3:], rest):  # same instructions and the same SpecAugment masks
        assert a["instruction_text"] == b["instruction_text"]
        if a["kind"] == "speech":
            assert torch.equal(a["mel"], b["mel"])
    assert resumed.epoch == 1 and resumed.state_dict()["batches_consumed"] == 0
    epoch2 = [k for b in resumed for k in b["keys"]]  # a new epoch: the same set, new order
    assert sorted(epoch2) == sorted(k for b in full for k in b["keys"])
    assert epoch2 != [k for b in full for k in b["keys"]]


def test_cache_changes_nothing_but_the_time(toy, tmp_path):
    """cache=True (the toy's) gives the batches a loader without it gives, epoch after epoch: the
    same keys, instructions and SpecAugment-ed mels; a list line with bad data is read (and its
    bad data counted and reported) every epoch, and a clean line counts its samples as seen
    every epoch, as when read anew."""
    make = lambda cache: data.make_loader(  # noqa: E731
        toy["train_mix"], toy["tokenizer"], stage=3, seed=5, max_frames_in_batch=1500, cache=cache
    )
    plain, cached = make(False), make(True)
    for _ in range(2):
        a, b = _batches(plain), _batches(cached)
        assert [x["keys"] for x in a] == [x["keys"] for x in b]
        for x, y in zip(a, b):
            assert x["instruction_text"] == y["instruction_text"]
            if x["kind"] == "speech":
                assert torch.equal(x["mel"], y["mel"])
    assert cached.dataset._lines and cached.dataset._mels  # it did keep them
    sources = _bad_world(tmp_path)
    for cache in (False, True):
        ds = data.make_loader(sources, toy["tokenizer"], split="dev", max_bad_fraction=1.0, cache=cache).dataset
        counters = [data.BadDataCounter(max_fraction=1.0) for _ in range(2)]
        keys = [[s["key"] for s in ds._read(ds.items(0), c)] for c in counters]
        assert keys[0] == keys[1] == ["good1", "missing", "corrupt", "unknown", "empty", "good2"]
        assert counters[0].counts == counters[1].counts == {"bad_json": 1, "missing_file": 1}
        assert counters[0].seen == counters[1].seen == 8
    assert len(ds._lines) == 6  # the broken JSON line and the missing shard are not kept


# ----------------------------------------------------------------------------- bad data


def _write_tone(path: Path, seconds=0.5, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, subtype="PCM_16")


def _bad_world(tmp_path: Path) -> list[Path]:
    _write_tone(tmp_path / "good1.wav")
    _write_tone(tmp_path / "good2.wav", sr=24000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    line = lambda key, wav, txt="hello", task="<TRANSCRIBE>": json.dumps(  # noqa: E731
        {"key": key, "wav": wav, "txt": txt, "task": task}
    )
    lines = [
        line("good1", "good1.wav"),
        line("missing", "nowhere.wav"),
        line("corrupt", "corrupt.wav"),
        '{"key": "broken json", "wav": ',
        line("unknown", "good1.wav", task="<TEXT2TOKEN>"),
        line("empty", "good1.wav", txt="  "),
        line("good2", "good2.wav"),
    ]
    (tmp_path / "data.list").write_text("\n".join(lines) + "\n")
    (tmp_path / "shards_list.txt").write_text("missing_dir/shards_000.tar\n")
    return [tmp_path / "data.list", tmp_path / "shards_list.txt"]


def test_each_bad_data_case_is_skipped_and_counted(tmp_path, toy, caplog):
    sources = _bad_world(tmp_path)
    loader = data.make_loader(sources, toy["tokenizer"], split="dev", max_bad_fraction=1.0, max_frames_in_batch=10**6)
    with caplog.at_level(logging.WARNING, logger="data"):
        keys = [k for b in loader for k in b["keys"]]
    assert sorted(keys) == ["good1", "good2"]
    assert loader.bad_data == {
        "missing_audio": 1,
        "corrupt_audio": 1,
        "bad_json": 1,
        "unknown_task": 1,
        "empty_text": 1,
        "missing_file": 1,
    }
    for n in (2, 3, 4, 5, 6):
        assert f"data.list:{n}" in caplog.text
    assert "shards_list.txt:1" in caplog.text


def test_too_much_bad_data_stops_with_a_clear_error(tmp_path, toy):
    sources = _bad_world(tmp_path)
    loader = data.make_loader(sources, toy["tokenizer"], split="dev", max_bad_count=3)
    with pytest.raises(data.BadDataError, match=r"(?s)max_count=3.*data\.list:2"):
        _batches(loader)
    # A fraction limit applies at the end of a pass even when few samples were seen.
    loader = data.make_loader(sources, toy["tokenizer"], split="dev", max_bad_fraction=0.5)
    with pytest.raises(data.BadDataError, match="max_fraction=0.5"):
        _batches(loader)


# ----------------------------------------------------------------------------- toy world
