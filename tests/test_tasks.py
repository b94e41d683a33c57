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


def test_train_and_heldout_phrasings_disjoint_for_every_task():
    for tags in tasks.TASK_COMBOS:
        bank = tasks.instruction_bank(tags)
        assert bank["train"] and bank["heldout"], tags
        assert not set(bank["train"]) & set(bank["heldout"]), tags
        for split in ("train", "heldout"):  # both languages on both sides
            assert any(s.isascii() for s in bank[split]) and not all(s.isascii() for s in bank[split])
    train = {s["instruction"] for s in tasks.intent_samples("train")}
    test = {s["instruction"] for s in tasks.intent_samples("test")}
    assert train and test and not train & test
    assert {s["target"] for s in tasks.intent_samples("test")} == {"".join(t) for t in tasks.TASK_COMBOS}
