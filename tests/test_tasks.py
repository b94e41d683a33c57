"""tasks.py: task names -> tags, targets in the ASR+X form, label normalisation, the instruction
bank's splits. Expected targets are written by hand from docs/release.md §8."""

import pytest

import tasks

TARGETS = [  # (task, txt, fields) -> target, written from docs/release.md §8
    ("<TRANSCRIBE>", " Hello   World ", {}, "<asr>hello world"),
    (None, "HI", {}, "<asr>hi"),  # no task: WeNet's default <TRANSCRIBE>
    ("<TRANSCRIBE> <AGE>", "Hello everyone<YOUTH>", {}, "<asr><age>hello everyone<ADULT>"),
    ("<TRANSCRIBE> <AGE>", "Hello everyone", {"age": "<YOUTH>"}, "<asr><age>hello everyone<ADULT>"),
    ("<TRANSCRIBE> <EMOTION>", "我很好<SAD>", {}, "<asr><emotion>我很好<SAD>"),
    ("<TRANSCRIBE><GENDER>", "Ok", {"gender": "<female>"}, "<asr><gender>ok<FEMALE>"),
    ("<EMOTION>", "<HAPPY>", {}, "<emotion><HAPPY>"),
    ("<EMOTION>", "happy", {}, "<emotion><HAPPY>"),
    ("<EMOTION>", "<CONFUSED>", {}, "<emotion><OTHER>"),
    ("<GENDER>", "", {"gender": "<MALE>"}, "<gender><MALE>"),
    ("<AGE>", "<MIDDLE_AGE>", {}, "<age><ADULT>"),
    ("<STYLE>", "news/science", {}, "<style><NEWS_SCIENCE>"),
    ("<CAPTION>", "<Laughter>", {}, "<caption><LAUGH>"),
    ("<ALIGN>", "One<0.1,0.3> Two<0.4,0.6>", {}, "<asr><align>one<0.1,0.3> two<0.4,0.6>"),
    ("<S2TCHAT>", " Seven. ", {}, "<chat>Seven."),
    ("<asr><age>", "Hi<OLD>", {}, "<asr><age>hi<OLD>"),
]


@pytest.mark.parametrize("task,txt,fields,want", TARGETS)
def test_targets_in_asr_plus_x_form(task, txt, fields, want):
    assert tasks.make_target(tasks.parse_task(task), txt, fields) == want


@pytest.mark.parametrize(
    "task,txt,reason",
    [
        ("<S2TCHAT> <TEXT2TOKEN> <THINK>", "x", "unknown_task"),
        ("TRANSCRIBE", "x", "unknown_task"),
        ("<TRANSCRIBE>", "   ", "empty_text"),
        ("<AGE>", "<ALIEN>", "bad_label"),
        ("<GENDER>", "", "empty_text"),
    ],
)
def test_bad_tasks_and_labels_raise_with_reason(task, txt, reason):
    with pytest.raises(tasks.BadSample) as e:
        tasks.make_target(tasks.parse_task(task), txt, {})
    assert e.value.reason == reason


def test_train_dev_test_phrasings_disjoint_for_every_task():
    for tags in tasks.TASK_COMBOS:
        bank = tasks.instruction_bank(tags)
        for split in ("train", "dev", "test"):  # both languages in every split
            assert any(s.isascii() for s in bank[split]) and not all(s.isascii() for s in bank[split]), split
        for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
            assert not set(bank[a]) & set(bank[b]), (tags, a, b)
        assert bank["speech"] and set(bank["speech"]) < set(bank["train"])  # narrower than the text
    intents = {split: {s["instruction"] for s in tasks.intent_samples(split)} for split in ("train", "dev", "test")}
    assert all(intents.values())
    assert not intents["train"] & intents["dev"] and not intents["train"] & intents["test"]
    assert not intents["dev"] & intents["test"]
    assert len(intents["train"]) > 5 * sum(len(tasks.instruction_bank(t)["speech"]) for t in tasks.TASK_COMBOS)
    assert {s["target"] for s in tasks.intent_samples("test")} == {"".join(t) for t in tasks.TASK_COMBOS}


def test_every_held_out_frame_kind_is_taught_by_train_and_seen_on_dev():
    """A held-out phrasing is new words in a kind of frame the training data has: every kind of a
    test frame is among the train frames' and the dev frames' (per language and clause count)."""
    assert tasks.frame_kinds("Listen to this clip and {a}.") == {"audio"}
    assert tasks.frame_kinds("听完后首先{a}，然后{b}。") == {"audio", "order"}
    assert tasks.frame_kinds("Could you {a} and also {b}?") == {"question"}
    assert tasks.frame_kinds("{A}, please.") == {"request"}
    for lang, by_count in tasks.FRAMES.items():
        for n, (train, dev, test) in by_count.items():
            kinds = [set().union(*map(tasks.frame_kinds, frames)) for frames in (train, dev, test)]
            assert kinds[2] <= kinds[0] and kinds[2] <= kinds[1], (lang, n, kinds)
            assert kinds[1] <= kinds[0], (lang, n, kinds)


def test_dev_and_test_words_are_new_to_instructions():
    """Every concept has words that no train phrasing uses (the synonyms stage 0 teaches)."""
    for lang, lexicon in tasks.LEXICON.items():
        new = [w for c, (train, dev, test) in lexicon.items() for w in dev + test if w not in train]
        assert len(new) >= len(lexicon), lang


def _bench(name: str):
    """A bench/ script as a module (bench/ is not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phrasings_bench_finds_each_instructions_frame():
    """bench/phrasings.py reads the frame back from an instruction: for every split, language,
    tag count and frame, the frame filled with clauses of its split is found as that frame."""
    bench = _bench("phrasings")
    checked = 0
    for split in tasks.SPLITS:
        for lang, by_count in tasks.FRAMES.items():
            for n, frames in by_count.items():
                combo = next(t for t in tasks.TASK_COMBOS if len(t) == n)
                clauses = [tasks._clauses(t, lang, split) for t in combo]
                for frame in frames[tasks.SPLITS.index(split)]:
                    for k in range(2):  # two fillings: the first and the last clauses
                        a, b = clauses[0][-k], clauses[-1][-k]
                        text = frame.format(a=a, A=a[0].upper() + a[1:], b=b, B=b[0].upper() + b[1:])
                        assert bench.find_frame(text, n, split) == frame, (split, text)
                        checked += 1
    assert checked == 2 * sum(len(f) for c in tasks.FRAMES.values() for fs in c.values() for f in fs)
    assert bench.find_frame("Transcribe the audio, please.", 1, "test") == "?"  # a train frame
    assert bench.error_kind(("<asr>", "<style>"), ("<style>",)) == "+<asr>"
    assert bench.error_kind(("<asr>",), ("<asr>", "<emotion>")) == "-<emotion>"
    assert bench.error_kind(("<age>",), ("<gender>",)) == "other"


def test_fi_nl_bench_scores_the_lines_with_their_tags_right(tmp_path, monkeypatch, capsys):
    """bench/fi_nl.py's last row keeps the NL lines whose tags are right: a line that lost its
    <asr> (and with it the transcript) counts in the NL row, not in the tags-right one."""
    import json
    import sys

    bench = _bench("fi_nl")
    line = {"task": "<TRANSCRIBE>", "lang": "en", "txt": "two one", "finished": True, "error": None}
    fi = [{**line, "key": k, "output": "<asr>two one"} for k in "ab"]
    nl = [{**line, "key": "a", "output": "<asr>two one"}, {**line, "key": "b", "output": "<age><ADULT>"}]
    for name, records in (("decoupled_fi", fi), ("decoupled", nl)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [bench.tags_right(r) for r in nl] == [True, False]
    monkeypatch.setattr(sys, "argv", ["fi_nl.py", str(tmp_path)])
    bench.main()
    rows = {r.split("|")[1].strip(): r.split("|")[2:4] for r in capsys.readouterr().out.splitlines()[2:]}
    assert {k: [c.strip() for c in v] for k, v in rows.items()} == {
        "FI": ["2", "0.0"],
        "NL": ["2", "50.0"],
        "NL, tags right": ["1", "0.0"],
    }
