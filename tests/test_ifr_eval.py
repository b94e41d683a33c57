"""ifr_eval.py and tasks.parse_output: the IFR rule on hand-written outputs, every target make_target
builds read back as followed, metrics on small cases computed by hand, and the command line.
Every expected number and verdict here is written by hand from the rule in ifr_eval's docstring."""

import json
import sys

import pytest

import ifr_eval
import tasks

# ----------------------------------------------------------------------------- reading an output


@pytest.mark.parametrize(
    "output,tags,labels,text",
    [
        ("<asr><emotion>i am fine<HAPPY>", ("<asr>", "<emotion>"), ("<HAPPY>",), "i am fine"),
        (" <asr> <emotion> i am fine <HAPPY> ", ("<asr>", "<emotion>"), ("<HAPPY>",), "i am fine"),
        ("<asr><asr>hi", ("<asr>", "<asr>"), (), "hi"),  # repeats kept: the rule judges them
        ("<emotion><HAPPY><FOO>", ("<emotion>",), ("<HAPPY>", "<FOO>"), ""),  # unknown ones too
        ("i am <SAD> fine<HAPPY>", (), ("<HAPPY>",), "i am <SAD> fine"),  # only the trailing run
        ("<asr><align>hi<0.1,0.5> yo<0.6,1.0>", ("<asr>", "<align>"), (), "hi<0.1,0.5> yo<0.6,1.0>"),
        ("<chat>Paris.", ("<chat>",), (), "Paris."),
        ("", (), (), ""),
    ],
)
def test_parse_output(output, tags, labels, text):
    out = tasks.parse_output(output)
    assert (out["tags"], out["labels"], out["text"]) == (tags, labels, text)


def test_stamps_and_label_assignment():
    assert tasks.split_stamps("hi<0.1,0.5> yo<0.6,1.0>") == [("hi", 0.1, 0.5), ("yo", 0.6, 1.0)]
    assert tasks.split_stamps("你<0.0,0.3>好<0.3,0.5>") == [("你", 0.0, 0.3), ("好", 0.3, 0.5)]
    assert tasks.split_stamps("hi yo<0.6,1.0>") is None  # 'hi' has no stamp
    assert tasks.split_stamps("") is None
    both = ("<caption>", "<emotion>")
    assert tasks.read_labels(both, ("<OTHER>", "<OTHER>")) == {"<caption>": "<OTHER>", "<emotion>": "<OTHER>"}
    assert tasks.read_labels(both, ("<HAPPY>", "<OTHER>")) == {"<caption>": "<OTHER>", "<emotion>": "<HAPPY>"}
    assert tasks.read_labels(both, ("<OTHER>",)) is None  # one <OTHER> covers one task only
    assert tasks.read_labels(both, ("<HAPPY>", "<SAD>")) is None  # two emotions, no caption


# ----------------------------------------------------------------------------- the rule

RULE_CASES = [  # (output, gold task, finished, error) -> failures ([] = followed)
    ("<asr><emotion>i am fine<HAPPY>", "<TRANSCRIBE> <EMOTION>", True, None, []),
    (" <asr> <emotion> I am fine. <HAPPY>", "<TRANSCRIBE> <EMOTION>", True, None, []),
    ("<emotion><asr>i am fine<HAPPY>", "<TRANSCRIBE> <EMOTION>", True, None, []),  # a set: order free
    ("<asr><gender>i am fine<HAPPY>", "<TRANSCRIBE> <EMOTION>", True, None, ["intent"]),  # wrong tag
    ("<asr>i am fine<HAPPY>", "<TRANSCRIBE> <EMOTION>", True, None, ["intent"]),  # missing tag
    ("<asr><asr><emotion>i am fine<HAPPY>", "<TRANSCRIBE> <EMOTION>", True, None, ["intent"]),  # repeated
    ("i am fine<HAPPY>", "<TRANSCRIBE> <EMOTION>", True, None, ["intent"]),  # no tags at all
    ("<asr><emotion>i am fine<MALE>", "<TRANSCRIBE> <EMOTION>", True, None, ["labels"]),  # another task's label
    ("<asr><emotion>i am fine<HAPPY><SAD>", "<TRANSCRIBE> <EMOTION>", True, None, ["labels"]),  # two labels
    ("<asr><emotion>i am fine", "<TRANSCRIBE> <EMOTION>", True, None, ["labels"]),  # no label
    ("<asr><emotion>i am <SAD> fine<HAPPY>", "<TRANSCRIBE> <EMOTION>", True, None, ["labels"]),  # stray label
    ("<asr>hi<HAPPY>", "<TRANSCRIBE>", True, None, ["labels"]),  # a label nobody asked for
    ("<emotion>i am fine<HAPPY>", "<EMOTION>", True, None, ["content"]),  # text where only a label was asked
    ("<emotion><HAPPY>", "<EMOTION>", True, None, []),
    ("<asr>...", "<TRANSCRIBE>", True, None, ["content"]),  # punctuation is no transcript
    ("<asr>", "<TRANSCRIBE>", True, None, ["content"]),
    ("<asr><align>hi<0.1,0.5> yo<0.6,1.0>", "<ALIGN>", True, None, []),
    ("<asr><align>hi<0.1,0.5> yo<0.6>", "<ALIGN>", True, None, ["timestamps"]),  # malformed stamp
    ("<asr><align>hi<0.6,1.0> yo<0.1,0.5>", "<ALIGN>", True, None, ["timestamps"]),  # starts decrease
    ("<asr><align>hi<0.5,0.1>", "<ALIGN>", True, None, ["timestamps"]),  # start > end
    ("<asr><align>hi yo", "<ALIGN>", True, None, ["timestamps"]),  # no stamps
    ("<asr>hi<0.1,0.5>", "<TRANSCRIBE>", True, None, ["timestamps"]),  # stamps nobody asked for
    ("<asr>hi there", "<TRANSCRIBE>", False, None, ["unfinished"]),
    ("", "<TRANSCRIBE>", True, None, ["empty"]),
    ("  ", "<TRANSCRIBE>", True, None, ["empty"]),
    (None, "<TRANSCRIBE>", True, "CUDA out of memory", ["error"]),
    ("<caption><emotion><OTHER><OTHER>", "<CAPTION> <EMOTION>", True, None, []),
    ("<caption><emotion><OTHER>", "<CAPTION> <EMOTION>", True, None, ["labels"]),
    ("<caption><emotion><LAUGH><OTHER>", "<CAPTION> <EMOTION>", True, None, []),
    ("<emotion><FOO>", "<EMOTION>", True, None, ["labels"]),  # unknown token
    ("<asr>hello <FOO> world", "<TRANSCRIBE>", True, None, ["labels"]),
    ("<asr><emotion>hi<YOUTH>", "<TRANSCRIBE> <EMOTION>", True, None, ["labels"]),  # aliases are not written
    ("<chat>Paris.", "<S2TCHAT>", True, None, []),
    ("<chat>", "<S2TCHAT>", True, None, ["chat"]),
    ("<chat>Paris<HAPPY>", "<S2TCHAT>", True, None, ["labels"]),
    ("<gender>hi", "<TRANSCRIBE> <EMOTION>", True, None, ["intent", "labels"]),  # every broken rule
]


@pytest.mark.parametrize("output,task,finished,error,failures", RULE_CASES)
def test_rule_on_hand_written_outputs(output, task, finished, error, failures):
    v = ifr_eval.judge(output, task, finished=finished, error=error)
    assert v["failures"] == failures
    assert v["followed"] is (failures == [])
    assert v["executed"] is (failures in ([], ["intent"]))


def test_judge_takes_tags_or_task_names_and_shows_its_reading():
    v = ifr_eval.judge("<asr><emotion>i am fine<HAPPY>", ("<asr>", "<emotion>"))
    assert v == ifr_eval.judge("<asr><emotion>i am fine<HAPPY>", "<TRANSCRIBE> <EMOTION>")
    assert (v["tags"], v["labels"], v["text"], v["gate"]) == (("<asr>", "<emotion>"), ("<HAPPY>",), "i am fine", None)
    assert v["rules"] == dict.fromkeys(ifr_eval.RULES, True)
    # An unfinished decode still shows what it broke apart from the gate.
    v = ifr_eval.judge("<asr><align>hi<0.1", "<ALIGN>", finished=False)
    assert v["failures"] == ["unfinished"] and v["rules"]["intent"] and not v["rules"]["timestamps"]


# ----------------------------------------------------------------------------- round trip


def _round_trip_cases():
    """(combo, txt, fields, label or None) for every combo of TASK_COMBOS and every label of its set."""
    cases = []
    for combo in tasks.TASK_COMBOS:
        label_tags = [t for t in combo if t in tasks.LABELS]
        if "<align>" in combo:
            cases.append((combo, "Hello<0.1,0.5> World<0.6,1.0>", {}, None))
        elif "<chat>" in combo:
            cases.append((combo, "The answer is Paris.", {}, None))
        elif not label_tags:
            cases.append((combo, " Hello   World ", {}, None))
        for tag in label_tags:
            field = tasks.LABEL_FIELDS[tag][0]
            text = "Hello World" if "<asr>" in combo else ""
            for label in tasks.LABELS[tag]:
                name = label.strip("<>").lower().replace("_", " ")  # '<NEWS_SCIENCE>' -> 'news science'
                cases.append((combo, text + label, {}, label))  # label in the text
                cases.append((combo, text, {field: name}, label))  # label in the fields
    return cases


def test_round_trip_every_target_is_followed():
    cases = _round_trip_cases()
    assert len(cases) == 3 + 2 * 2 * (8 + 8 + 8 + 2 + 3)  # asr, align, chat; 2 ways x (alone, with asr) x labels
    for combo, txt, fields, label in cases:
        target = tasks.make_target(combo, txt, fields)
        out = tasks.parse_output(target)
        assert out["tags"] == combo, target
        assert out["labels"] == ((label,) if label else ()), target
        assert tasks.read_labels(combo, out["labels"]) == ({combo[-1]: label} if label else {}), target
        v = ifr_eval.judge(target, combo)
        assert v["followed"] and v["failures"] == [], (target, v["failures"])


def test_round_trip_by_hand():
    # Targets spelled out by hand (docs/release.md §8), read back.
    out = tasks.parse_output("<asr><style>once upon a time<FAIRY_TALE>")
    assert out["text"] == "once upon a time" and out["labels"] == ("<FAIRY_TALE>",)
    assert ifr_eval.judge("<caption><THROAT_CLEARING>", "<CAPTION>")["followed"]
    assert ifr_eval.judge("<asr><style>news today<NEWS_SCIENCE>", "<TRANSCRIBE> <STYLE>")["followed"]


# ----------------------------------------------------------------------------- reports and metrics


def _rec(task, txt, output, finished=True, error=None, **more):
    return {
        "key": "k",
        "task": task,
        "txt": txt,
        "instruction": "",
        "output": output,
        "finished": finished,
        "error": error,
        **more,
    }


def test_ifr_tag_acc_exec_and_failures_by_hand():
    records = [
        _rec("<TRANSCRIBE>", "a b", "<asr>a b"),  # followed
        _rec("<TRANSCRIBE>", "a b", "a b"),  # no tags: exec only
        _rec("<TRANSCRIBE> <AGE>", "a b<OLD>", "<asr><age>a b", finished=False),  # tags right, unfinished
        _rec("<TRANSCRIBE> <AGE>", "a b<OLD>", None, error="boom"),
    ]
    r = ifr_eval.evaluate(records)
    assert (r["n"], r["ifr"], r["tag_acc"], r["ifr_exec"]) == (4, 25.0, 50.0, 50.0)
    assert r["by_combo"] == {
        "<asr>": {"n": 2, "ifr": 50.0, "tag_acc": 50.0, "ifr_exec": 100.0},
        "<asr><age>": {"n": 2, "ifr": 0.0, "tag_acc": 50.0, "ifr_exec": 0.0},
    }
    assert r["failures"] == {**dict.fromkeys(ifr_eval.FAILURES, 0), "intent": 1, "unfinished": 1, "error": 1}


def test_pooled_wer_by_hand():
    records = [_rec("<TRANSCRIBE>", "a b c d", "<asr>a x c d"), _rec("<TRANSCRIBE>", "e f", "<asr>e")]
    asr = ifr_eval.evaluate(records)["metrics"]["asr"]
    assert asr["en"] == {"lines": 2, "words": 6, "errors": 2, "wer": 33.33}  # 1 sub + 1 del / 6 words


def test_wer_normalisation_and_failed_lines_by_hand():
    records = [
        # case, punctuation, tags and labels go: no error
        _rec("<TRANSCRIBE> <EMOTION>", "I'm fine, thanks!<HAPPY>", "<asr><emotion>im FINE thanks.<SAD>"),
        # timestamps go: 'one two' vs 'one too' = 1 sub
        _rec("<ALIGN>", "One<0.1,0.3> Two<0.4,0.6>", "<asr><align>one<0.1,0.3> too<0.4,0.6>"),
        # an errored line is an empty hypothesis: 2 deletions
        _rec("<TRANSCRIBE>", "e f", None, error="boom"),
        # the gold transcript comes from `target` when infer.py wrote it
        _rec("<TRANSCRIBE>", "ignored", "<asr>g h", target="<asr>g h"),
    ]
    asr = ifr_eval.evaluate(records)["metrics"]["asr"]
    assert asr["en"] == {"lines": 4, "words": 9, "errors": 3, "wer": 33.33}  # 3 / (3 + 2 + 2 + 2)


def test_chinese_cer_per_character_by_hand():
    records = [
        _rec("<TRANSCRIBE>", "今天，天气好。", "<asr>今天天汽好啊"),  # 1 sub + 1 ins over 5 chars
        _rec("<TRANSCRIBE>", "你好", "<asr>你 好"),  # spaces do not count
        _rec("<TRANSCRIBE>", "a b", "<asr>a b"),  # an English line is pooled apart
        _rec("<TRANSCRIBE>", "ok", "<asr>不", lang="zh"),  # `lang` wins: 1 sub over 1 unit
    ]
    asr = ifr_eval.evaluate(records)["metrics"]["asr"]
    assert asr["zh"] == {"lines": 3, "chars": 8, "errors": 3, "cer": 37.5}
    assert asr["en"] == {"lines": 1, "words": 2, "errors": 0, "wer": 0.0}


def test_timestamp_error_by_hand():
    records = [
        # hello: |0.1-0.2| + |0.5-0.5| = 0.1; there != world; again: 0.1 + 0.2 = 0.3
        _rec(
            "<ALIGN>",
            "hello<0.1,0.5> world<0.6,1.0> again<1.1,1.5>",
            "<asr><align>hello<0.2,0.5> there<0.6,0.9> again<1.0,1.7>",
        ),
        _rec("<ALIGN>", "x<0.0,0.2> y<0.3,0.4>", None, error="boom"),  # 2 words, none aligned
    ]
    align = ifr_eval.evaluate(records)["metrics"]["align"]
    assert align["lines"] == 2 and align["words"] == 5 and align["matched"] == 2
    assert align["aligned"] == 40.0
    assert align["mean_error_s"] == pytest.approx(0.2)  # (0.1 + 0.3) / 2


def test_label_accuracy_missing_and_errored_are_wrong():
    records = [
        _rec("<EMOTION>", "<HAPPY>", "<emotion><HAPPY>"),  # right
        _rec("<EMOTION>", "<HAPPY>", "<emotion><SAD>"),  # wrong
        _rec("<EMOTION>", "<HAPPY>", "<emotion>"),  # missing
        _rec("<EMOTION>", "<HAPPY>", "<emotion><HAPPY>", error="boom"),  # errored
        _rec("<EMOTION>", "<HAPPY>", "<emotion><HAPPY><SAD>"),  # two emotions: ambiguous, wrong
        _rec("<EMOTION>", "<HAPPY>", "<emotion><HAPPY><MALE>"),  # not followed, but its emotion is right
        # the gold label from the record's own field
        _rec("<TRANSCRIBE> <EMOTION>", "hi", "<asr><emotion>hi<ANGRY>", emotion="angry"),
        _rec("<TRANSCRIBE> <GENDER>", "hi", "<asr><gender>hi<FEMALE>", target="<asr><gender>hi<FEMALE>"),
    ]
    m = ifr_eval.evaluate(records)["metrics"]
    assert m["labels"] == {
        "<emotion>": {"n": 7, "correct": 3, "acc": 42.86},
        "<gender>": {"n": 1, "correct": 1, "acc": 100.0},
    }


def test_chat_exact_match_and_unscored_lines():
    records = [
        _rec("<S2TCHAT>", "Paris.", "<chat>paris"),
        _rec("<S2TCHAT>", "Paris.", "<chat>It is Paris."),
        _rec("<EMOTION>", "", "<emotion><HAPPY>"),  # no gold label anywhere: judged, not scored
    ]
    r = ifr_eval.evaluate(records)
    assert r["metrics"]["chat"] == {"n": 2, "correct": 1, "acc": 50.0}
    assert r["metrics"]["unscored"] == 1 and r["ifr"] == 100.0


def test_bad_lines_are_counted_not_fatal(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps(_rec("<TRANSCRIBE>", "a b", "<asr>a b"))
    path.write_text(f"{good}\n{{not json\n\n[1, 2]\n{json.dumps({'key': 'no task'})}\n{good}\n", encoding="utf-8")
    records = ifr_eval.load_results(path)
    assert len(records) == 5  # the blank line is no line
    r = ifr_eval.evaluate(records)
    assert (r["n"], r["bad_lines"], r["failures"]["unreadable"], r["ifr"]) == (5, 2, 3, 40.0)


def test_missing_jiwer_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "jiwer", None)
    with pytest.raises(ImportError, match="pip install jiwer"):
        ifr_eval.evaluate([])


# ----------------------------------------------------------------------------- command line


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_cli_writes_the_report(tmp_path, capsys):
    results = _write(
        tmp_path / "results.jsonl",
        [_rec("<TRANSCRIBE>", "a b", "<asr>a b"), _rec("<EMOTION>", "<SAD>", "<emotion><HAPPY>")],
    )
    ifr_eval.main([str(results), "--json", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) >= {"n", "ifr", "tag_acc", "ifr_exec", "by_combo", "failures", "metrics"}
    assert (report["n"], report["ifr"], report["by_combo"]["<emotion>"]["n"]) == (2, 100.0, 1)
    assert report["metrics"]["labels"]["<emotion>"]["acc"] == 0.0
    assert "| SER (acc %) | 0.00 |" in capsys.readouterr().out


def test_cli_two_named_runs_side_by_side(tmp_path, capsys):
    fi = _write(tmp_path / "fi.jsonl", [_rec("<TRANSCRIBE>", "a b c d", "<asr>a b c d")])
    nl = _write(tmp_path / "nl.jsonl", [_rec("<TRANSCRIBE>", "a b c d", "a b c")])  # no tags, 1 deletion
    ifr_eval.main([f"FI={fi}", f"NL={nl}", "--json", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["models"]) == ["FI", "NL"]
    assert (report["models"]["FI"]["ifr"], report["models"]["NL"]["ifr"], report["models"]["NL"]["ifr_exec"]) == (
        100.0,
        0.0,
        100.0,
    )
    out = capsys.readouterr().out
    assert "| task | FI | NL |" in out
    assert "| ASR (WER %, en) | 0.00 | 25.00 |" in out
    assert "| FI | 1 | 100.00 |" in out and "| NL | 1 | 0.00 |" in out  # Table 2
    assert "| tag acc % | 100.00 | 0.00 |" in out  # Table 6
