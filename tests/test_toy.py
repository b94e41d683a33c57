"""toy.py: the toy world is deterministic, its splits are disjoint, its tokenizer has Pangu's
layout, its labels are balanced and every task's cue is learnable on held-out speakers."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import tasks
import toy as toy_world
from model import PATTERN2, SYSTEM_SPEECH, pattern1
from pangu import PRESETS
from tokenizer import PanguTokenizer
from whisper_enc import log_mel_spectrogram


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A small toy world (12 train utterances per task combo), built once for this module."""
    root = tmp_path_factory.mktemp("toy") / "toy"
    return toy_world.ensure_toy_world(root, seed=7, n_train=12, n_dev=2, n_test=4, n_shards=4)


def test_toy_world_is_deterministic(tmp_path):
    """The same seed gives the same world, byte for byte; the held-out splits' sizes change the
    held-out splits only (they draw from streams of their own): the train side is the same."""
    kw = dict(n_train=1, n_dev=1, n_test=1, n_shards=2)
    a = toy_world.build_toy_world(tmp_path / "a", seed=11, **kw)
    b = toy_world.build_toy_world(tmp_path / "b", seed=11, **kw)
    c = toy_world.build_toy_world(tmp_path / "c", seed=12, **kw)
    d = toy_world.build_toy_world(tmp_path / "d", seed=11, **{**kw, "n_dev": 2, "n_test": 3})
    files = lambda root: {  # noqa: E731
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
    fa, fb, fc, fd = files(a["root"]), files(b["root"]), files(c["root"]), files(d["root"])
    assert fa.keys() == fb.keys() and len(fa) > 10
    for name in fa:
        assert fa[name] == fb[name], name
    assert fa["dev/data.list"] != fc["dev/data.list"]
    trained = [n for n in fa if n.split("/")[0] not in ("dev", "test", "toy_world.json")]
    assert {"corpus.txt", "tokenizer.model", "train/shards_000000.tar", "train/alignment.jsonl"} <= set(trained)
    for name in trained:
        assert fa[name] == fd[name], name
    lines = lambda f, split: len(f[f"{split}/data.list"].decode().splitlines())  # noqa: E731
    n_combos = len(tasks.TASK_COMBOS)
    assert (lines(fd, "dev"), lines(fd, "test")) == (2 * n_combos, 3 * n_combos)
    assert (lines(fa, "dev"), lines(fa, "test")) == (n_combos, n_combos)
    # ensure_toy_world is a no-op on a built world with the same parameters
    stamp = a["index"].stat().st_mtime_ns
    toy_world.ensure_toy_world(tmp_path / "a", seed=11, **kw)
    assert a["index"].stat().st_mtime_ns == stamp


def test_stage0_corpus_holds_no_instruction_of_any_split(toy):
    corpus = toy["corpus"].read_text(encoding="utf-8")
    corpus_lines = corpus.splitlines()
    banks = [tasks.instruction_bank(t) for t in tasks.TASK_COMBOS]
    held_out = [s for b in banks for split in ("dev", "test") for s in b[split]]
    # a held-out phrasing in a line means its frame's words around the clauses are all in that line:
    # only such lines are searched (scanning the whole corpus for 1.4 M phrasings took minutes)
    frames = [f for by_count in tasks.FRAMES.values() for fs in by_count.values() for f in fs[1] + fs[2]]
    words = [[w for w in re.split(r"\{[aAbB]\}", f) if w] for f in frames]
    lines = [line for line in corpus_lines if any(all(w in line for w in ws) for ws in words)]
    assert lines  # the dev and test frames are there, around everyday requests (OTHER_REQUESTS)
    candidates = "\n".join(lines)
    assert held_out and not [s for s in held_out if s in candidates]
    assert not set(corpus_lines) & {s for b in banks for s in b["train"]}  # nor a train one (TOY_VERSION 9)
    assert tasks.INTENT_ASK["en"] not in corpus  # no intent -> tag pair: stage 2 teaches those
    # ... but the words of every split are there, in clause lines told as something that happened
    clause_lines = [
        line
        for line in corpus_lines
        for f in toy_world.NARRATIVE["en"] + toy_world.NARRATIVE["zh"]
        if line.startswith(f.split("{}")[0]) and line.endswith(f.split("{}")[1])
    ]
    assert len(clause_lines) >= 2 * toy_world.CLAUSE_LINES
    for lang, lexicon in tasks.LEXICON.items():
        for concept, splits in lexicon.items():
            for w in {w for split in splits for w in split}:
                assert any(w in line for line in clause_lines), (lang, concept, w)


def test_toy_speakers_and_utterances_disjoint_across_splits(toy):
    index = json.loads(toy["index"].read_text(encoding="utf-8"))
    by_split = {s: {spk["id"] for spk in index["speakers"] if spk["split"] == s} for s in ("train", "dev", "test")}
    assert all(by_split.values()) and sum(map(len, by_split.values())) == len(index["speakers"])
    seen = {
        "train": list(data.read_shard_list(toy["train"])),
        "dev": list(data.read_raw_list(toy["dev"])),
        "test": list(data.read_raw_list(toy["test"])),
    }
    keys = [s["key"] for ss in seen.values() for s in ss]
    assert len(keys) == len(set(keys))
    for split, samples in seen.items():
        speakers = {
            json.loads(s["extra"])["speaker"] if isinstance(s["extra"], str) else s["extra"]["speaker"] for s in samples
        }
        assert speakers <= by_split[split], split
        if split != "train":  # each utterance asked with a phrasing of its own split
            for s in samples:
                assert s["extra"]["instruction"] in tasks.instruction_bank(tasks.parse_task(s["task"]))[split]


def test_toy_tokenizer_has_the_pangu_layout(toy):
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(toy["tokenizer"]))
    assert sp.get_piece_size() == PRESETS["toy"]["vocab_size"]
    assert all(len(sp.encode(w)) == 1 for w in toy_world.TOY_WORDS)  # '▁seven': a word is one token
    assert [sp.id_to_piece(i) for i in range(5)] == [
        "<unk>",
        "<s>",
        "</s>",
        "<|User|>:",
        "<|Bot|>:",
    ]
    assert [sp.id_to_piece(i) for i in range(5, 39)] == [f"[unused{i}]" for i in range(34)]
    assert sp.piece_to_id("[unused10]") == 15
    for token in [*tasks.TAGS, *(lab for labs in tasks.LABELS.values() for lab in labs)]:
        assert len(sp.encode(token)) in (1, 2) and sp.piece_to_id(token) > 38  # '▁' + token
    pieces = [sp.id_to_piece(i) for i in sp.encode("龘")]  # not in the toy text: UTF-8 bytes
    assert pieces[-3:] == ["<0xE9>", "<0xBE>", "<0x98>"] and sp.decode(sp.encode("龘")) == "龘"
    assert sp.decode(sp.encode("a  b")) == "a  b"  # extra whitespace kept
    # tokenizer_config.json names the added pieces as the release's does: PanguTokenizer reads it
    table = json.loads((toy["tokenizer"].parent / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    pieces = ["<unk>", "<s>", "</s>", "<|User|>:", "<|Bot|>:", *(f"[unused{i}]" for i in range(34))]
    pieces += [*tasks.TAGS, *(lab for labs in tasks.LABELS.values() for lab in labs), *toy_world.TOY_PROMPT_PIECES]
    pieces += [toy_world.SPAN_OPEN, toy_world.SPAN_CLOSE, toy_world.SILENCE, *toy_world.CLOCK]  # stage 0's frames
    assert {int(i): v["content"] for i, v in table.items()} == {sp.piece_to_id(p): p for p in pieces}
    tok = PanguTokenizer(toy["tokenizer"])
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (1, 15, 0, PRESETS["toy"]["vocab_size"])
    assert tok.encode("<asr><age>", bos=False) == [sp.piece_to_id("<asr>"), sp.piece_to_id("<age>")]


def test_toy_labels_balanced_and_cues_present(toy):
    librosa = pytest.importorskip("librosa")
    samples = list(data.read_shard_list(toy["train"]))
    assert len(samples) == 13 * 12
    per_task: dict = {}
    for s in samples:
        tags = tasks.parse_task(s["task"])
        target = tasks.make_target(tags, s["txt"], s["extra"])
        for label in __import__("re").findall(r"<[A-Z_]+>", target):
            per_task.setdefault("".join(tags), []).append(label)
    assert set(per_task) == {"".join(t) for t in tasks.TASK_COMBOS if set(t) & set(tasks.LABELS)}
    for task, labels in per_task.items():
        counts = {lab: labels.count(lab) for lab in set(labels)}
        assert len(counts) >= 2 and min(counts.values()) >= 0.5 * max(counts.values()), task
    # The gender cue: pitch (oracle: librosa's YIN) separates <MALE> from <FEMALE>.
    f0 = {"<MALE>": [], "<FEMALE>": []}
    for s in samples[:40]:
        y = data.decode_audio(s).numpy()
        voiced = y[np.abs(y) > 0.01]
        f0[s["extra"]["gender"]].append(np.median(librosa.yin(voiced, fmin=60, fmax=400, sr=16000)))
    assert max(f0["<MALE>"]) < 170 < min(f0["<FEMALE>"])
    # The age cue: word durations (from the generator's own word times) order child < adult < old.
    dur = {a: [] for a in ("<CHILD>", "<ADULT>", "<OLD>")}
    for s in samples:
        dur[s["extra"]["age"]] += [e - b for b, e in s["extra"]["times"]]
    assert max(dur["<CHILD>"]) < min(dur["<ADULT>"]) and max(dur["<ADULT>"]) < min(dur["<OLD>"])


def _pooled(mel: torch.Tensor) -> np.ndarray:
    """Utterance statistics a linear probe can read: band means / spreads / deltas over voiced
    frames, and the pause rhythm (frames per pause inside the speech)."""
    energy = mel.mean(0)
    voiced = (energy > energy.max() - 0.5).numpy()
    inner = voiced[np.argmax(voiced) : len(voiced) - np.argmax(voiced[::-1])]
    runs = np.split(inner, np.flatnonzero(np.diff(inner.astype(int))) + 1)
    pauses = [len(r) for r in runs if not r[0]] or [0]
    mv = mel[:, torch.from_numpy(voiced)]
    rhythm = [voiced.mean(), mel.shape[1] / 100, np.mean(pauses), np.std(pauses), max(pauses)]
    rhythm += [min(pauses), len(pauses)]
    delta = (mel[:, 1:] - mel[:, :-1]).abs().mean(1)
    return np.concatenate([mv.mean(1), mv.std(1), delta, rhythm])


@pytest.fixture
def one_thread():
    """Many tiny ops: one thread is several times faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_toy_tasks_learnable_by_probes_on_heldout_speakers(toy, one_thread):
    """Each label is readable from log-mel statistics by a linear probe trained on the train
    shards and scored on the test list (its speakers are held out); words by nearest centroid."""
    train = list(data.read_shard_list(toy["train"]))
    test = list(data.read_raw_list(toy["test"]))
    mels = {id(s): log_mel_spectrogram(data.decode_audio(s)) for s in train + test}
    X = [np.stack([_pooled(mels[id(s)]) for s in ss]) for ss in (train, test)]
    mu, sd = X[0].mean(0), X[0].std(0) + 1e-6
    A, B = (torch.tensor((x - mu) / sd, dtype=torch.float32) for x in X)
    for key in ("emotion", "style", "gender", "age", "event"):
        labels = sorted({s["extra"][key] for s in train})
        y = torch.tensor([labels.index(s["extra"][key]) for s in train])
        probe = torch.nn.Linear(A.shape[1], len(labels))
        opt = torch.optim.Adam(probe.parameters(), lr=0.03, weight_decay=1e-2)
        for _ in range(200):
            loss = torch.nn.functional.cross_entropy(probe(A), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        pred = [labels[i] for i in probe(B).argmax(1).tolist()]
        acc = np.mean([p == s["extra"][key] for p, s in zip(pred, test)])
        assert acc >= 0.8, (key, acc)
    # Words: the mean spectrum of each half of a word (its two syllables), nearest centroid.
    feats = {"train": ([], []), "test": ([], [])}
    for split, ss in (("train", train), ("test", test)):
        for s in ss:
            m = mels[id(s)].numpy()
            for word, (a, b) in zip(s["extra"]["words"], s["extra"]["times"]):
                i, j = int(a * 100), int(b * 100)
                halves = [m[:, i : (i + j) // 2].mean(1), m[:, (i + j) // 2 : j].mean(1)]
                feats[split][0].append(np.concatenate(halves))
                feats[split][1].append(word)
    (Xw, yw), (Xt, yt) = feats["train"], feats["test"]
    Xw, Xt = np.stack(Xw), np.stack(Xt)
    words = sorted(set(yw))
    centroids = np.stack([Xw[[w == v for w in yw]].mean(0) for v in words])
    pred = [words[k] for k in ((Xt[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    assert np.mean([p == w for p, w in zip(pred, yt)]) >= 0.85  # 20 words: chance 0.05


def test_toy_paths_from_a_cli_string():
    # train.py passes --toy-dir as given on the command line
    assert toy_world.toy_paths("toy_data")["tokenizer"] == toy_world.toy_paths(Path("toy_data"))["tokenizer"]


def test_stage0_speech_spans_have_the_shape_of_the_adapter_output(toy):
    """Each train utterance's stage-0 span has one frame per vector the toy adapter writes for its
    audio (through the real encoder and adapter), its words in order, and no test utterance."""
    from adapter import Adapter
    from model import IOSUMConfig
    from whisper_enc import WhisperEncoder

    cfg = IOSUMConfig.from_name("toy")
    encoder, adapter = WhisperEncoder(cfg.whisper).eval(), Adapter(cfg.adapter).eval()
    heard = toy_world.read_alignment(toy["train"].parent / "alignment.jsonl")
    assert not (toy["test"].parent / "alignment.jsonl").exists()
    loader = data.make_loader(toy["train"], split="dev", tokenizer_file=toy["tokenizer"], stage=1)
    corpus = toy["corpus"].read_text(encoding="utf-8")
    checked = 0
    with torch.no_grad():
        for batch in loader:
            feats, lengths = encoder(batch["mel"], batch["mel_lengths"])
            _, lengths = adapter(feats, lengths)
            for key, n in zip(batch["keys"], lengths.tolist()):
                span = toy_world.heard_span(heard[key])
                frames = span.split(toy_world.FRAME_SEP)
                assert len(frames) == n == toy_world.span_frames(heard[key]["samples"]), key
                words = [p for f in frames for p in f.split(toy_world.PIECE_SEP) if p in toy_world.TOY_WORDS]
                collapsed = [w for i, w in enumerate(words) if i == 0 or w != words[i - 1]]
                merged = [w for i, w in enumerate(heard[key]["words"]) if i == 0 or w != heard[key]["words"][i - 1]]
                assert collapsed == merged, key  # every word holds the centre of a frame
                assert toy_world.SPAN_OPEN + span + toy_world.SPAN_CLOSE in corpus, key
                checked += 1
    assert checked == len(heard)


def test_stage0_spans_keep_the_speaker_apart_from_the_words(toy):
    """No word frame of a stage-0 span holds a speaker attribute; every span holds each of its
    speaker's four on a silence frame (TOY_VERSION 11: on word frames, the frozen LLM read both
    from the same vectors and the labels cost the words; docs/study/limits.md)."""
    heard = toy_world.read_alignment(toy["train"].parent / "alignment.jsonl")
    attributes = {label for labels in toy_world.TOY_LABELS.values() for label in labels}
    for key, h in heard.items():
        frames = [f.split(toy_world.PIECE_SEP) for f in toy_world.heard_span(h).split(toy_world.FRAME_SEP)]
        kinds = [what for what, _ in toy_world.frame_contents(h)]
        assert "word" in kinds and len(kinds) == len(frames), key
        for what, pieces in zip(kinds, frames):
            if what == "word":
                assert not attributes & set(pieces) and len(pieces) == 2, (key, pieces)
        silent = [set(p) for what, p in zip(kinds, frames) if what == "silence"]
        speaker = {h[a] for a in toy_world.ATTRIBUTES}
        assert silent and all(speaker <= p and toy_world.SILENCE in p for p in silent), key


def test_stage0_frames_are_summed_inputs_and_never_targets(toy):
    tok = PanguTokenizer(toy["tokenizer"])
    lines = [line.replace("\\n", "\n") for line in toy["corpus"].read_text(encoding="utf-8").splitlines()]
    chat = next(line for line in lines if toy_world.SPAN_OPEN in line)
    positions = toy_world.line_positions(chat, tok)
    frames = [p for p in positions if len(p) > 1]
    assert len(frames) == toy_world._SPAN.search(chat).group(1).count(toy_world.FRAME_SEP) + 1
    text = toy_world._SPAN.sub(toy_world.SPAN_OPEN + toy_world.SPAN_CLOSE, chat)
    assert [p[0] for p in positions if len(p) == 1] == tok.encode(text, bos=True)  # the rest is the text
    make = toy_world.corpus_blocks([chat] * 40, tok, block=64, batch=2, seed=0, rank=0, world=1)
    batch = next(make(0, 0))
    ids, targets, real = batch["ids"], batch["targets"], batch["doc"] >= 0
    is_frame = (ids >= 0).sum(-1) > 1
    assert is_frame.any() and (targets[is_frame] == toy_world.IGNORE_ID).all()
    assert (targets[~is_frame & real] == ids[~is_frame & real][:, 0]).all()
    assert (targets[~real] == toy_world.IGNORE_ID).all() and (ids[~real] == -1).all()


def test_stage0_lines_are_packed_whole_and_read_alone(toy):
    """Stage 0 packs whole lines into a block, and each line attends to itself only, from
    position 0: its logits in a packed block are the logits of the line given alone (float32
    rounding apart: a masked-out key adds exactly 0, so only the summation order differs)."""
    import train
    from pangu import Pangu, PanguConfig

    tok = PanguTokenizer(toy["tokenizer"])
    lines = [line.replace("\\n", "\n") for line in toy["corpus"].read_text(encoding="utf-8").splitlines()][:60]
    make = toy_world.corpus_blocks(lines, tok, block=128, batch=2, seed=0, rank=0, world=1)
    batch = next(make(0, 0))
    doc, pos = batch["doc"], batch["pos"]
    assert (doc[:, 0] == 0).all() and (pos[doc >= 0] >= 0).all()
    starts = (pos == 0) & (doc >= 0)
    assert starts.sum(1).min() >= 2  # several lines in a block
    torch.manual_seed(0)
    model = Pangu(PanguConfig.from_name("toy", n_layers=2)).eval()
    captured = {}
    real_forward = model.forward
    model.forward = lambda **kw: captured.setdefault("logits", real_forward(**kw))
    with torch.no_grad():
        loss, n = train.pretrain_step(model, batch)
        packed = captured["logits"]
        for b in range(2):
            for j in doc[b].unique().tolist():
                if j < 0:
                    continue
                at = (doc[b, :-1] == j).nonzero().squeeze(1)
                alone = real_forward(inputs_embeds=toy_world.embed_positions(model, batch["ids"][b : b + 1, at]))
                # float32, logits of order 1: a masked key adds exactly 0, so the two differ only
                # by summation order in matmuls of <= 257 terms (~1e-6 relative); 1e-4 holds on any CPU
                torch.testing.assert_close(packed[b, at], alone[0], rtol=1e-4, atol=1e-4)
    targets = batch["targets"][:, 1:]
    assert n == int((targets != toy_world.IGNORE_ID).sum()) and torch.isfinite(loss)


def test_toy_whisper_targets_follow_the_alignment(toy):
    heard = toy_world.read_alignment(toy["train"].parent / "alignment.jsonl")
    key = next(k for k, h in heard.items() if h["event"])
    h = heard[key]
    t = toy_world.frame_targets(heard, [key], toy_world.span_frames(h["samples"], per=2) + 3)
    sound = t["sound"][0]
    names = [toy_world.SOUNDS[i] for i in sound.tolist() if i >= 0]
    assert names[0] == "<SILENCE>" and h["event"] in names and (sound[-3:] == toy_world.IGNORE_ID).all()
    for k, name in enumerate(names):  # a frame holds what lies at its centre (20 ms frames)
        centre = (k + 0.5) * 0.02
        inside = [w for w, (a, b) in zip(h["words"], h["times"]) if a <= centre < b]
        assert name == (inside[0] if inside else name if name in (h["event"], "<SILENCE>") else None)
        on_word = name in toy_world.TOY_WORDS
        assert (t["gender"][0, k] >= 0) == on_word
    # in a batch cut short, with each key's rows kept across batches (WithFrameTargets): as alone
    other, rows = next(k for k in heard if k != key), {}
    for _ in range(2):
        pair = toy_world.frame_targets(heard, [key, other], 10, rows)
        assert all(torch.equal(pair[name][0], t[name][0, :10]) for name in t)
    assert set(rows) == {key, other}
    with pytest.raises(KeyError, match="not in the alignment"):
        toy_world.frame_targets(heard, ["nope"], 4)


def test_toy_whisper_without_an_alignment_says_which_file(tmp_path):
    with pytest.raises(SystemExit, match="alignment.jsonl is missing"):
        toy_world.read_alignment(tmp_path / "alignment.jsonl")


def test_toy_layout_is_where_the_audio_sounds():
    """An utterance's layout, drawn before its audio (and all a stage-0 reading line uses), is
    where the rendered audio sounds: energy at each word's and the event's middle, silence in the
    middle of each pause of at least 40 ms, and the length the layout says."""
    rng = np.random.default_rng(3)
    sr = toy_world.SAMPLE_RATE

    def rms(audio, t):  # 10 ms around t
        i = int(t * sr)
        return float(np.sqrt(np.mean(audio[i - 80 : i + 80] ** 2)))

    checked = 0
    for age in toy_world.TOY_LABELS["<age>"]:
        for style in toy_world.TOY_LABELS["<style>"]:
            for event in (None, *toy_world.TOY_LABELS["<caption>"]):
                words = [toy_world.TOY_WORDS[int(j)] for j in rng.integers(0, 20, 4)]
                layout = toy_world._toy_layout(rng, words, age, style, event)
                audio = toy_world._toy_speech(rng, words, layout, 150.0, age, "<SAD>", event)
                assert len(audio) == layout["samples"]
                times = layout["times"]
                assert all(rms(audio, (a + b) / 2) > 3e-3 for a, b in times), (age, style, event)
                pauses = [(b, a) for (_, b), (a, _) in zip(times, times[1:]) if a - b >= 0.04]
                assert all(rms(audio, (a + b) / 2) < 1e-3 for a, b in pauses), (age, style, event)
                if event:
                    a, b = layout["event_span"]
                    assert b <= len(audio) / sr and b - a == pytest.approx(toy_world.EVENT_SAMPLES[event] / sr)
                    assert max(rms(audio, a + k * (b - a) / 8) for k in range(1, 8)) > 3e-3, event
                checked += 1
    assert checked == 3 * 4 * 5


def test_stage0_corpus_has_the_reading_lines(tmp_path):
    """With `reading` = R, stage 0 reads, beside the chat lines of the train utterances, R reading
    lines for each: a text-only utterance's span, in the chat layout with no instruction, and its
    words as the whole answer (no tag, no label, no event). Every span has the train split's
    frame shape (a clock piece, then a word, or an event, or `[silence]` with the speaker's four
    attributes); R = 0 adds none."""
    kw = dict(seed=5, n_train=2, n_dev=1, n_test=1, n_shards=2)
    spans, reading_lines = {}, {}
    p1, p2 = pattern1(SYSTEM_SPEECH), "<s>" + PATTERN2
    for reading in (0, 3):
        world = toy_world.build_toy_world(tmp_path / str(reading), reading=reading, **kw)
        lines = [line.replace("\\n", "\n") for line in world["corpus"].read_text(encoding="utf-8").splitlines()]
        spans[reading] = {m.group(1) for line in lines for m in [toy_world._SPAN.search(line)] if m}
        for span in spans[reading]:
            for k, frame in enumerate(span.split(toy_world.FRAME_SEP)):
                pieces = frame.split(toy_world.PIECE_SEP)
                assert pieces[0] == toy_world.CLOCK[min(k, len(toy_world.CLOCK) - 1)]
                assert len(pieces) in (2, 6), frame
        reading_lines[reading] = [line for line in lines if line.startswith(p1 + toy_world.SPAN_OPEN)]
    n_audio = len(toy_world.read_alignment(tmp_path / "0" / "train" / "alignment.jsonl"))
    assert len(spans[0]) == n_audio and not reading_lines[0]
    assert len(reading_lines[3]) == 3 * n_audio
    for line in reading_lines[3]:
        span, answer = line[len(p1) :].split(p2)
        frames = [
            f.split(toy_world.PIECE_SEP) for f in toy_world._SPAN.search(span).group(1).split(toy_world.FRAME_SEP)
        ]
        words = [f[1] for f in frames if f[1] in toy_world.TOY_WORDS]
        runs = lambda ws: [w for i, w in enumerate(ws) if i == 0 or w != ws[i - 1]]  # noqa: E731
        assert runs(answer.split()) == runs(words) and "<" not in answer
