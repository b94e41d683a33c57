"""The task vocabulary of I-OSUM-Pangu: intent tags, label sets, targets, instructions.

What the model is asked (a fixed tag instruction in stage 1, natural language in stages 2-3) and
what it must write (tags, then the ASR+X answer, e.g. `<asr><age>hello everyone<ADULT>`), in one
place, so that the data path that builds targets and the scorer that reads outputs cannot drift
(docs/release.md §8). The release's own names are the data's upper-case task names (`<TRANSCRIBE> <AGE>`).
"""

from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np

# ----------------------------------------------------------------------------- tasks and labels

# docs/release.md §8. Intent tags in the order they are written (`<asr>` first, `<chat>` alone).
TAGS = ("<asr>", "<align>", "<caption>", "<emotion>", "<style>", "<gender>", "<age>", "<chat>")

# Upper-case task names inside the data -> intent tags. `<ALIGN>` alone means SRWT, whose intent
# is `<asr><align>` (docs/release.md §8). Lower-case tags are accepted as they are.
TASK_NAMES = {
    "<TRANSCRIBE>": ("<asr>",),
    "<ALIGN>": ("<asr>", "<align>"),
    "<CAPTION>": ("<caption>",),
    "<EMOTION>": ("<emotion>",),
    "<STYLE>": ("<style>",),
    "<GENDER>": ("<gender>",),
    "<AGE>": ("<age>",),
    "<S2TCHAT>": ("<chat>",),
}
DEFAULT_TASK = "<TRANSCRIBE>"  # WeNet raw lists without a task


def _label_token(name: str) -> str:
    """'news/science' -> '<NEWS_SCIENCE>' (our spelling of docs/release.md §8's label names)."""
    return "<" + re.sub(r"[\s/\-]+", "_", name.strip().strip("<>")).upper() + ">"


# docs/release.md §8 label sets, spelled as single tokens (our choice of spelling: upper case, `_` for
# spaces and slashes). Keys are the intent tags that take a label.
LABELS = {
    "<caption>": ("laugh", "cough", "cry", "screaming", "sigh", "throat clearing", "sneeze", "other"),
    "<emotion>": ("neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "other"),
    "<style>": (
        "news/science",
        "horror story",
        "fairy tale",
        "customer service",
        "poetry/prose",
        "audiobook",
        "daily conversation",
        "other",
    ),
    "<gender>": ("male", "female"),
    "<age>": ("child", "adult", "old"),
}
LABELS = {tag: tuple(map(_label_token, names)) for tag, names in LABELS.items()}
# Where a label lives when the text does not carry it (shard members, then `extra` keys).
LABEL_FIELDS = {
    "<caption>": ("caption", "event", "vocal_event"),
    "<emotion>": ("emotion",),
    "<style>": ("style",),
    "<gender>": ("gender",),
    "<age>": ("age",),
}
# Label normalisation. `<YOUTH>` -> `<ADULT>` is the release's (its age task has 3 classes);
# the other aliases are spelling variants seen in public corpora, mapped by us.
LABEL_ALIASES = {
    "<YOUTH>": "<ADULT>",
    "<MIDDLE_AGE>": "<ADULT>",
    "<MIDDLE>": "<ADULT>",
    "<TEENAGER>": "<ADULT>",
    "<KID>": "<CHILD>",
    "<ELDER>": "<OLD>",
    "<ELDERLY>": "<OLD>",
    "<OLD_AGE>": "<OLD>",
    "<MAN>": "<MALE>",
    "<WOMAN>": "<FEMALE>",
    "<HAPPINESS>": "<HAPPY>",
    "<SADNESS>": "<SAD>",
    "<ANGER>": "<ANGRY>",
    "<SURPRISED>": "<SURPRISE>",
    "<FEARFUL>": "<FEAR>",
    "<DISGUSTED>": "<DISGUST>",
    "<LAUGHTER>": "<LAUGH>",
    "<LAUGHING>": "<LAUGH>",
    "<CRYING>": "<CRY>",
    "<SCREAM>": "<SCREAMING>",
    "<COUGHING>": "<COUGH>",
    "<SNEEZING>": "<SNEEZE>",
}
# Classes with an `<OTHER>` label absorb unknown labels; gender and age have none: a bad sample.
_HAS_OTHER = {tag for tag, labels in LABELS.items() if "<OTHER>" in labels}


class BadSample(ValueError):
    """One sample we skip; `reason` is the counter's key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def parse_task(task: str | None) -> tuple[str, ...]:
    """'<TRANSCRIBE> <AGE>' -> ('<asr>', '<age>'). Raises BadSample('unknown_task')."""
    names = re.findall(r"<[^<>]+>", task or DEFAULT_TASK)
    if not names or re.sub(r"<[^<>]+>|\s", "", task or DEFAULT_TASK):
        raise BadSample("unknown_task", f"cannot parse task {task!r}")
    tags = set()
    for name in names:
        if name in TASK_NAMES:
            tags.update(TASK_NAMES[name])
        elif name in TAGS:
            tags.add(name)
        else:  # e.g. <TEXT2TOKEN>, <THINK>: speech-to-speech tasks this project does not model
            raise BadSample("unknown_task", f"task {task!r}: {name} is not one of {list(TASK_NAMES)}")
    if "<align>" in tags:
        tags.add("<asr>")
    if "<chat>" in tags and len(tags) > 1:
        raise BadSample("unknown_task", f"task {task!r}: <S2TCHAT> does not combine")
    return tuple(t for t in TAGS if t in tags)


def normalise_label_or_none(tag: str, label: str) -> str | None:
    """'<youth>' / 'Happy' / 'news/science' -> the canonical token of `tag`'s set, or None."""
    token = LABEL_ALIASES.get(_label_token(label), _label_token(label))
    return token if token in LABELS[tag] else None


def normalise_label(tag: str, label: str) -> str:
    """A label for `tag` -> its canonical token; unknown -> `<OTHER>` where the set has one,
    else BadSample('bad_label') (gender and age have no 'other')."""
    token = normalise_label_or_none(tag, label)
    if token is None and tag not in _HAS_OTHER:
        raise BadSample("bad_label", f"{label!r} is not a {tag} label {LABELS[tag]}")
    return token or "<OTHER>"


_TRAILING_LABELS = re.compile(r"((?:\s*<[A-Za-z][A-Za-z_ /\-]*>)+)\s*$")


def normalise_transcript(text: str) -> str:
    """ASR text: English lower-cased, runs of whitespace -> one space, stripped."""
    return re.sub(r"\s+", " ", text).strip().lower()


def make_target(tags: tuple[str, ...], txt: str, fields: dict) -> str:
    """Tags + answer in the ASR+X form of docs/release.md §8, e.g. '<asr><age>hello everyone<ADULT>'.

    Rules (ours, following the release where it is known):
    - the transcript (tasks with `<asr>`) is lower-cased and its whitespace collapsed;
      `<align>` text keeps its `<start,end>` stamps; `<chat>` answers are kept as written;
    - each label tag gets one label, in tag order after the transcript: taken from the
      labels that end the text (`i am fine<HAPPY>`), else from the sample's fields
      (shard members `.emotion`/`.gender`, then `extra`); a text without angle brackets is
      itself the label of a pure classification task (`happy` -> `<HAPPY>`);
    - labels are normalised by `normalise_label` (`<YOUTH>` -> `<ADULT>`, ...).
    """
    label_tags = [t for t in tags if t in LABELS]
    text = txt.strip()
    found = []
    m = _TRAILING_LABELS.search(text) if label_tags else None
    if m:
        found = re.findall(r"<[^<>]+>", m.group(1))
        text = text[: m.start()].strip()
    if label_tags and "<asr>" not in tags and not found and text and "<" not in text:
        found, text = [text], ""  # 'happy' for <EMOTION>
    if "<asr>" in tags:
        body = normalise_transcript(text)
        if not body:
            raise BadSample("empty_text", "empty transcript")
    elif "<chat>" in tags:
        body = text
        if not body:
            raise BadSample("empty_text", "empty answer")
    else:
        body = ""
    labels = []
    for i, tag in enumerate(label_tags):
        if len(found) == len(label_tags):
            raw = found[i]
        else:
            raw = next((f for f in found if normalise_label_or_none(tag, f)), None)
            if raw is None:
                raw = next((fields[k] for k in LABEL_FIELDS[tag] if _usable(fields.get(k))), None)
        if raw is None:
            raise BadSample("empty_text", f"no {tag} label in the text or the fields")
        labels.append(normalise_label(tag, str(raw)))
    return "".join(tags) + body + "".join(labels)


def _usable(value) -> bool:
    return isinstance(value, str) and value.strip().lower() not in ("", "none", "null", "unknown")


# ----------------------------------------------------------------------------- instruction bank

# Natural-language instructions (stages 2-3), ours: the release's phrasings are not published.
# Each is a sentence frame around one clause per intent tag; frames and clauses are split into
# train and held-out sets, and a held-out instruction uses only held-out frames and clauses, so
# no held-out instruction can be a train one (a test checks the strings as well).
# {tag: (train clauses, held-out clauses)} per language.
CLAUSES = {
    "en": {
        "<asr>": (
            [
                "transcribe the audio",
                "write down what is said",
                "convert the speech into text",
                "tell me what the speaker says",
                "give me a transcript of the recording",
                "write out the words you hear",
            ],
            ["turn this recording into written text", "type out the spoken words"],
        ),
        "<align>": (
            [
                "give the start and end time of every word",
                "add a timestamp to each word",
                "mark when each word begins and ends",
            ],
            ["tell me the timing of each word"],
        ),
        "<caption>": (
            [
                "name the sound event in the audio",
                "tell me which non-speech sound you hear",
                "identify the vocal event",
            ],
            ["say what sound the speaker makes besides talking"],
        ),
        "<emotion>": (
            ["tell me the speaker's emotion", "identify the emotion in the voice", "say how the speaker feels"],
            ["judge the mood of the speaker"],
        ),
        "<style>": (
            ["tell me the speaking style", "identify the style of the speech", "say what kind of speech this is"],
            ["classify the delivery style of the recording"],
        ),
        "<gender>": (
            [
                "tell me the speaker's gender",
                "say whether the speaker is male or female",
                "identify the gender of the voice",
            ],
            ["guess if a man or a woman is talking"],
        ),
        "<age>": (
            [
                "estimate the speaker's age group",
                "tell me how old the speaker sounds",
                "say whether the speaker is a child, an adult or elderly",
            ],
            ["judge the age of the voice"],
        ),
        "<chat>": (
            [
                "answer the question in the audio",
                "listen to the question and reply",
                "respond to what the speaker asks",
            ],
            ["give a short answer to the spoken question"],
        ),
    },
    "zh": {
        "<asr>": (
            ["转写这段音频", "把这段语音转成文字", "写出说话人说的内容", "听写这段录音", "识别这段语音的文字内容"],
            ["记录下音频里说的话", "把听到的话原样写下来"],
        ),
        "<align>": (
            ["给出每个词的起止时间", "标注每个词的时间戳", "写出每个词开始和结束的时间"],
            ["标出每个字说出的时刻"],
        ),
        "<caption>": (
            ["识别音频中的声音事件", "告诉我除了说话还有什么声音", "判断音频里出现的非语音声音"],
            ["听听有没有笑声咳嗽之类的声音并说出来"],
        ),
        "<emotion>": (
            ["判断说话人的情绪", "告诉我说话人的心情", "识别语音中的情感"],
            ["分析一下这个人说话时的情绪状态"],
        ),
        "<style>": (
            ["判断这段话的说话风格", "识别语音的讲述风格", "告诉我这是哪种类型的讲话"],
            ["分析一下这段录音的播讲风格"],
        ),
        "<gender>": (["判断说话人的性别", "告诉我说话人是男是女", "识别说话人的性别"], ["猜一猜说话的是男性还是女性"]),
        "<age>": (
            ["判断说话人的年龄段", "估计说话人的年龄", "告诉我说话人是儿童、成年人还是老人"],
            ["分析说话人大概多大年纪"],
        ),
        "<chat>": (["回答音频中的问题", "听一下问题并回答", "针对说话人的问题作答"], ["对录音里的提问给出简短的回答"]),
    },
}
# (train frames, held-out frames) for one clause ({a}; {A} = capitalised) and for two.
FRAMES = {
    "en": {
        1: (
            ["Please {a}.", "{A}.", "Could you {a}?", "I need you to {a}."],
            ["Can you help me {a}?", "Listen to this clip and {a}."],
        ),
        2: (
            ["Please {a} and {b}.", "{A}, then {b}.", "Could you {a} and also {b}?"],
            ["First {a}; after that, {b}.", "Listen carefully, {a} and {b}."],
        ),
    },
    "zh": {
        1: (["请{a}。", "{a}。", "帮我{a}。", "麻烦你{a}。"], ["你能{a}吗？", "听完这段音频后{a}。"]),
        2: (
            ["请{a}，并且{b}。", "先{a}，再{b}。", "帮我{a}，同时{b}。"],
            ["听完后首先{a}，然后{b}。", "麻烦{a}，另外{b}。"],
        ),
    },
}
# Stage 2 text-only intent samples: "<ask to classify the intent>:<the user's query>" (docs/release.md §7).
INTENT_ASK = {"en": "Classify the intent of this request", "zh": "请判断这条用户指令的意图"}

# The task combinations of docs/release.md §8 the bank covers (and the toy world holds).
TASK_COMBOS = (
    ("<asr>",),
    ("<asr>", "<align>"),
    ("<caption>",),
    ("<emotion>",),
    ("<style>",),
    ("<gender>",),
    ("<age>",),
    ("<chat>",),
    ("<asr>", "<caption>"),
    ("<asr>", "<emotion>"),
    ("<asr>", "<style>"),
    ("<asr>", "<gender>"),
    ("<asr>", "<age>"),
)


def _phrasings(tags: tuple[str, ...], lang: str, heldout: bool) -> list[str]:
    which = 1 if heldout else 0
    clauses = [CLAUSES[lang][t][which] for t in tags]
    out = []
    for frame in FRAMES[lang][len(tags)][which]:
        for parts in itertools.product(*clauses):
            names = dict(zip("ab", parts))
            names.update({k.upper(): v[0].upper() + v[1:] for k, v in names.items()})
            out.append(frame.format(**names))
    return out


def instruction_bank(tags: tuple[str, ...]) -> dict[str, list[str]]:
    """{'train': [...], 'heldout': [...]} natural-language instructions (en + zh) for a tag set."""
    if len(tags) > 2 or any(t not in CLAUSES["en"] for t in tags):
        raise KeyError(f"no instructions for {''.join(tags)}")
    return {
        split: [s for lang in ("en", "zh") for s in _phrasings(tags, lang, split == "heldout")]
        for split in ("train", "heldout")
    }


def fixed_instruction(tags: tuple[str, ...]) -> str:
    """Stage 1: the instruction is the tag string itself (docs/release.md §9)."""
    return "".join(tags)


def intent_samples(split: str = "train") -> list[dict]:
    """Stage-2 text-only samples: instruction '<ask>:<query>', target = the tag string."""
    out = []
    for tags in TASK_COMBOS:
        for lang in ("en", "zh"):
            for query in _phrasings(tags, lang, heldout=split == "test"):
                key = f"intent-{hashlib.blake2b(query.encode(), digest_size=6).hexdigest()}"
                out.append(
                    {
                        "key": key,
                        "kind": "text",
                        "tags": tags,
                        "lang": lang,
                        "instruction": f"{INTENT_ASK[lang]}:{query}",
                        "target": "".join(tags),
                        "src": f"intent bank ({split})",
                    }
                )
    return out


# ----------------------------------------------------------------------------- prompts of one sample

FIELD_KEYS = ("emotion", "gender", "age", "style", "caption", "event", "vocal_event")


def build_prompt(sample: dict, stage: int, split: str, rng: np.random.Generator) -> dict:
    """A read sample -> {tags, instruction, target} for one stage (docs/release.md §9).

    Stage 1: the instruction is the fixed tag string. Stages 2-3: a natural-language
    instruction; train draws from the train phrasings, dev uses them deterministically, test
    uses the held-out phrasings; an `instruction` in `extra` (the toy test lists carry one)
    wins outside training. Raises BadSample for unknown tasks, empty text, bad labels."""
    if sample.get("kind") == "text":
        return {k: sample[k] for k in ("tags", "instruction", "target")}
    tags = parse_task(sample.get("task"))
    extra = sample.get("extra") or {}
    fields = {
        **{k: v for k, v in extra.items() if isinstance(v, str)},
        **{k: sample[k] for k in FIELD_KEYS if _usable(sample.get(k))},
    }
    target = make_target(tags, str(sample.get("txt", "")), fields)
    if stage == 1:
        instruction = fixed_instruction(tags)
    elif split != "train" and isinstance(extra.get("instruction"), str):
        instruction = extra["instruction"]
    else:
        try:
            bank = instruction_bank(tags)["heldout" if split == "test" else "train"]
        except KeyError as e:
            raise BadSample("unknown_task", f"no instruction for {''.join(tags)}") from e
        instruction = bank[int(rng.integers(len(bank)))]
    return {"tags": tags, "instruction": instruction, "target": target}


# ----------------------------------------------------------------------------- reading a model's output

# The inverse of make_target, used by the scorer (ifr_eval.py), so that what training writes and
# what evaluation reads cannot drift. An output is: a leading run of intent tags (spaces between
# them ignored), then the body; the body ends with a run of label tokens (upper case, one token
# each, e.g. `<HAPPY>`); what is left is the text: a transcript, `word<start,end>` units for
# `<align>` (seconds, as toy.py writes them: `hello<0.1,0.5> world<0.6,1.0>`), or a chat answer.
TOKEN = re.compile(r"<[^<>]+>")  # any angle-bracket token, as parse_task reads them
_NUMBER = r"\s*(\d+(?:\.\d+)?)\s*"
STAMP = re.compile(rf"<{_NUMBER},{_NUMBER}>")  # `<0.1,0.5>`: start, end in seconds
STAMP_LIKE = re.compile(r"<[\d.,\s+\-]*\d[\d.,\s+\-]*>")  # numbers only: a stamp or a malformed one
_UNIT = rf"([^<>\s]+){STAMP.pattern}"  # word<start,end>
_UNITS = re.compile(rf"(?:\s*{_UNIT})+\s*")
_LEADING_TAG = re.compile(r"\s*(" + "|".join(map(re.escape, TAGS)) + ")")
_TRAILING_LABEL_RUN = re.compile(r"(?:\s*<[A-Z][A-Z0-9_]*>)+\s*$")


def parse_output(output: str) -> dict:
    """'<asr><emotion>i am fine<HAPPY>' -> {'tags': ('<asr>', '<emotion>'),
    'body': 'i am fine<HAPPY>', 'labels': ('<HAPPY>',), 'text': 'i am fine'}.

    `tags` are as written (order and repeats kept); `labels` are the body's trailing run of
    label-shaped tokens (`<UPPER_CASE>`), known or not: judging them is the scorer's job."""
    tags, pos = [], 0
    while m := _LEADING_TAG.match(output, pos):
        tags.append(m.group(1))
        pos = m.end()
    body = output[pos:].strip()
    m = _TRAILING_LABEL_RUN.search(body)
    labels = tuple(TOKEN.findall(m.group(0))) if m else ()
    text = body[: m.start()].strip() if m else body
    return {"tags": tuple(tags), "body": body, "labels": labels, "text": text}


def read_labels(tags: tuple[str, ...], labels: tuple[str, ...]) -> dict[str, str] | None:
    """Assign written labels to the label tasks among `tags` by set membership: {tag: label}, or
    None unless each task gets exactly one label of its own set and every label is used.

    `<OTHER>` is in several sets (caption, emotion, style): it stands for any one of them, so two
    such tasks need `<OTHER><OTHER>`; a single `<OTHER>` covers only one."""
    label_tags = [t for t in tags if t in LABELS]
    if len(labels) != len(label_tags):
        return None
    for order in itertools.permutations(labels):  # at most 2 label tasks in docs/release.md §8: tiny
        if all(label in LABELS[t] for t, label in zip(label_tags, order)):
            return dict(zip(label_tags, order))
    return None


def split_stamps(text: str) -> list[tuple[str, float, float]] | None:
    """'hello<0.1,0.5> world<0.6,1.0>' -> [('hello', 0.1, 0.5), ('world', 0.6, 1.0)]; None unless
    the whole text is one or more `word<start,end>` units (Chinese units need no spaces)."""
    if not _UNITS.fullmatch(text):
        return None
    return find_stamps(text)


def find_stamps(text: str) -> list[tuple[str, float, float]]:
    """Every `word<start,end>` unit in `text`, whatever lies between them (for scoring)."""
    return [(w, float(s), float(e)) for w, s, e in re.findall(_UNIT, text)]
