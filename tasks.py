"""The task vocabulary of I-OSUM-Pangu: intent tags, label sets, targets, instructions.

What the model is asked (a fixed tag instruction in stage 1, natural language in stages 2-3) and
what it must write (tags, then the ASR+X answer, e.g. `<asr><age>hello everyone<ADULT>`), in one
place, so that the data path that builds targets and the scorer that reads outputs cannot drift
(docs/release.md §8). The release's own names are the data's upper-case task names (`<TRANSCRIBE> <AGE>`).
"""

from __future__ import annotations

import functools
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
# A small compositional grammar: a sentence FRAME (politeness, en + zh) around one CLAUSE per
# intent tag; a clause is a template whose [SLOTS] are filled from the LEXICON, concept -> words.
# Frames and every concept's words are split three ways, train / dev / test. A phrasing of a
# split uses only that split's frames, so the three sets of phrasings are disjoint (a test checks
# the strings too); its words are the split's own and the train ones, so a dev or test phrasing
# is a new sentence whose words are partly synonyms the model never met in an instruction. What
# lets it understand those is what pretraining gives an LLM: the toy's stage-0 corpus (toy.py)
# uses every word of a concept in the same non-instruction contexts ("her mood changed when she
# heard the news" / "her emotion changed ..."), so synonyms get near representations, as they do
# in a real LLM.
# {lang: {concept: (train words, dev words, test words)}}
LEXICON = {
    "en": {
        "TELL": (["tell me", "identify", "name", "say", "point out"], ["determine", "find"], ["recognise", "work out"]),
        "SPEAKER": (["speaker", "person", "individual"], ["talker"], ["narrator"]),
        "AUDIO": (
            ["audio", "recording", "speech", "audio file", "sample"],
            ["clip", "voice note"],
            ["sound file", "tape"],
        ),
        "TRANSCRIBE": (
            ["transcribe", "write down", "write out", "take down"],
            ["type up", "note down"],
            ["type out", "jot down"],
        ),
        "GIVE": (["give", "list", "mark", "output"], ["provide", "show"], ["supply", "add"]),
        "TIMES": (
            ["start and end times", "timestamps", "time stamps", "start and end points"],
            ["boundaries"],
            ["timings", "time spans"],
        ),
        "WORD": (["word", "spoken word"], ["token"], ["term"]),
        "EVENT": (
            ["sound event", "vocal event", "non-speech sound", "background sound"],
            ["noise"],
            ["sound effect", "non-verbal sound"],
        ),
        "EMOTION": (["emotion", "feeling", "emotional state", "affect", "emotional tone"], ["mood"], ["sentiment"]),
        "STYLE": (
            ["speaking style", "style", "genre", "speaking mode", "speaking manner"],
            ["delivery"],
            ["manner of speaking", "register"],
        ),
        "GENDER": (["gender", "sex"], ["gender"], ["sex"]),
        "MAN": (["man", "male", "boy"], ["guy"], ["gentleman"]),
        "WOMAN": (["woman", "female", "gal"], ["lady"], ["girl"]),
        "AGE": (["age", "age group", "age bracket"], ["age range"], ["life stage"]),
        "SOUNDS": (["sounds", "is", "must be"], ["seems"], ["appears"]),
        "ANSWER": (["answer", "reply to", "respond to", "address"], ["solve"], ["give an answer to"]),
        "QUESTION": (["question", "query", "inquiry", "matter"], ["problem"], ["puzzle"]),
    },
    "zh": {
        "TELL": (["判断", "告诉我", "识别", "辨别"], ["分析"], ["说说", "猜一猜"]),
        "SPEAKER": (["说话人", "讲话的人", "讲话者"], ["发言人"], ["讲述者"]),
        "AUDIO": (["音频", "录音", "语音", "音频文件"], ["声音片段"], ["音档"]),
        "TRANSCRIBE": (["转写", "听写", "记录", "写下"], ["誊写"], ["抄录"]),
        "GIVE": (["给出", "标注", "写出", "输出"], ["提供"], ["列出"]),
        "TIMES": (["起止时间", "时间戳", "开始和结束时间", "起始时间"], ["时间边界"], ["时间点"]),
        "WORD": (["词", "字", "字词"], ["单词"], ["词语"]),
        "EVENT": (["声音事件", "非语音声音", "声学事件", "背景声"], ["杂音"], ["特殊声音"]),
        "EMOTION": (["情绪", "情感", "心情", "情感状态"], ["情绪状态"], ["感受"]),
        "STYLE": (["说话风格", "讲述风格", "风格", "语气"], ["播讲方式"], ["表达方式"]),
        "GENDER": (["性别"], ["性别"], ["性别"]),
        "MAN": (["男", "男性", "男子"], ["男人"], ["男士"]),
        "WOMAN": (["女", "女性", "女子"], ["女人"], ["女士"]),
        "AGE": (["年龄", "年龄段", "年岁"], ["岁数"], ["年纪"]),
        "SOUNDS": (["听起来", "大概", "应该"], ["好像"], ["似乎"]),
        "ANSWER": (["回答", "解答", "回应"], ["回复"], ["答复"]),
        "QUESTION": (["问题", "提问", "请求"], ["疑问"], ["题目"]),
    },
}
SPLITS = ("train", "dev", "test")
# Clause templates per tag (shared by the splits: the grammar, not the words).
CLAUSES = {
    "en": {
        "<asr>": ["[TRANSCRIBE] the [AUDIO]", "[TRANSCRIBE] what the [SPEAKER] says"],
        "<align>": ["[GIVE] the [TIMES] of each [WORD]", "[GIVE] each [WORD] with its [TIMES]"],
        "<caption>": ["[TELL] the [EVENT] in the [AUDIO]", "[TELL] which [EVENT] the [SPEAKER] makes"],
        "<emotion>": ["[TELL] the [SPEAKER]'s [EMOTION]", "[TELL] the [EMOTION] in the [AUDIO]"],
        "<style>": ["[TELL] the [STYLE] of the [AUDIO]", "[TELL] the [SPEAKER]'s [STYLE]"],
        "<gender>": [
            "[TELL] the [SPEAKER]'s [GENDER]",
            "[TELL] whether the [SPEAKER] is a [MAN] or a [WOMAN]",
        ],
        "<age>": ["[TELL] the [SPEAKER]'s [AGE]", "[TELL] how old the [SPEAKER] [SOUNDS]"],
        "<chat>": ["[ANSWER] the [QUESTION] in the [AUDIO]", "[ANSWER] what the [SPEAKER] asks"],
    },
    "zh": {
        "<asr>": ["[TRANSCRIBE]这段[AUDIO]", "把[SPEAKER]说的话[TRANSCRIBE]下来"],
        "<align>": ["[GIVE]每个[WORD]的[TIMES]", "[GIVE]这段[AUDIO]里每个[WORD]的[TIMES]"],
        "<caption>": ["[TELL][AUDIO]里的[EVENT]", "[TELL][SPEAKER]发出的[EVENT]"],
        "<emotion>": ["[TELL][SPEAKER]的[EMOTION]", "[TELL]这段[AUDIO]中的[EMOTION]"],
        "<style>": ["[TELL]这段[AUDIO]的[STYLE]", "[TELL][SPEAKER]的[STYLE]"],
        "<gender>": ["[TELL][SPEAKER]的[GENDER]", "[TELL][SPEAKER]是[MAN]还是[WOMAN]"],
        "<age>": ["[TELL][SPEAKER]的[AGE]", "[TELL][SPEAKER][SOUNDS]多大年纪"],
        "<chat>": ["[ANSWER][AUDIO]中的[QUESTION]", "[ANSWER][SPEAKER]提出的[QUESTION]"],
    },
}
# Frames per split for one clause ({a}; {A} = capitalised) and for two.
FRAMES = {
    "en": {
        1: (
            [
                "Please {a}.",
                "{A}.",
                "Could you {a}?",
                "I need you to {a}.",
                "Can you {a}?",
                "I want you to {a}.",
                "{A}, please.",
                "Go ahead and {a}.",
                "Your task is to {a}.",
                "Try to {a}.",
                "Here is a recording; {a}.",
                "After hearing it, {a}.",
            ],
            ["Would you {a}?", "Kindly {a}.", "Once you have heard it, {a}."],
            ["Can you help me {a}?", "Listen to this clip and {a}.", "I'd like you to {a}."],
        ),
        2: (
            [
                "Please {a} and {b}.",
                "{A}, then {b}.",
                "Could you {a} and also {b}?",
                "{A} and {b}.",
                "Please {a}, then {b}.",
                "I need you to {a} and {b}.",
                "{A}, and also {b}.",
                "Here is a recording; {a} and {b}.",
                "After hearing it, {a}, then {b}.",
            ],
            ["Would you {a} and {b}?", "Kindly {a}, and then {b}.", "Once you have heard it, {a} and {b}."],
            ["First {a}; after that, {b}.", "Listen carefully, {a} and {b}.", "Can you help me {a} and {b}?"],
        ),
    },
    "zh": {
        1: (
            [
                "请{a}。",
                "{a}。",
                "帮我{a}。",
                "麻烦你{a}。",
                "你可以{a}吗？",
                "请你{a}。",
                "我想让你{a}。",
                "这里有一段录音，请{a}。",
                "播放录音后{a}。",
            ],
            ["能不能{a}？", "劳驾{a}。", "录音放完以后{a}。"],
            ["你能{a}吗？", "听完这段音频后{a}。"],
        ),
        2: (
            [
                "请{a}，并且{b}。",
                "先{a}，再{b}。",
                "帮我{a}，同时{b}。",
                "请{a}，还要{b}。",
                "{a}，以及{b}。",
                "这里有一段录音，请{a}，并且{b}。",
                "播放录音后{a}，再{b}。",
                "可以帮我{a}，同时{b}吗？",
            ],
            ["能不能{a}，然后{b}？", "劳驾{a}，并{b}。", "录音放完以后{a}，并{b}。"],
            ["听完后首先{a}，然后{b}。", "麻烦{a}，另外{b}。"],
        ),
    },
}
# What a frame does besides asking, by its words: speaks of the recording ("audio"), orders
# the two tasks ("order"), asks a question ("question"); none of these: a plain "request". A
# held-out phrasing is new words in kinds the training data teaches: train and dev frames hold
# every kind the test frames hold, per language and clause count (tests/test_tasks.py).
FRAME_KIND_WORDS = {
    "audio": ("hear", "listen", "recording", "clip", "听", "录音", "音频"),
    "order": ("then", "first", "after that", "next", "先", "再", "然后"),
}


def frame_kinds(frame: str) -> frozenset[str]:
    """The kinds of an instruction frame (FRAME_KIND_WORDS, a question mark)."""
    text = frame.lower()
    kinds = {k for k, words in FRAME_KIND_WORDS.items() if any(w in text for w in words)}
    if text.rstrip().endswith(("?", "？")):
        kinds.add("question")
    return frozenset(kinds or {"request"})


# Stage 2 text-only intent samples: "<ask to classify the intent>:<the user's query>" (docs/release.md §7).
INTENT_ASK = {"en": "Classify the intent of this request", "zh": "请判断这条用户指令的意图"}
# The speech instructions of stage 3 are a narrow part of the train phrasings (the first
# SPEECH_WORDS words of every concept, the first SPEECH_FRAMES frames), the text intents all of
# them, at most INTENT_PER_COMBO per task combination and language: as in the release, the text
# intent set (~80 k samples there) is far richer than the speech instructions.
SPEECH_WORDS, SPEECH_FRAMES = 1, 2
# (ours) A share of stage 3's train speech samples keeps stage 1's fixed tag instruction, so that
# the integrated model still answers it (the paper's FI column); the rest are natural language.
FIXED_SHARE = 0.1
INTENT_PER_COMBO = {"train": 320, "dev": 12, "test": 24}

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
SLOT = re.compile(r"\[([A-Z]+)\]")  # a clause template's slot, e.g. [TRANSCRIBE]


def _clauses(tag: str, lang: str, split: str, speech: bool = False) -> list[str]:
    """Every filling of the tag's clause templates with the split's words (dev and test: their own
    and the train words, so that a held-out phrasing mixes known words with unseen synonyms)."""
    i = SPLITS.index(split)
    words = {c: list(dict.fromkeys(w[0] + w[i])) for c, w in LEXICON[lang].items()}
    if speech:
        words = {c: w[:SPEECH_WORDS] for c, w in words.items()}
    out = []
    for template in CLAUSES[lang][tag]:
        slots = SLOT.findall(template)
        for fill in itertools.product(*(words[s] for s in slots)):
            pieces = SLOT.split(template)  # text, slot, text, slot, ..., text
            pieces[1::2] = fill
            out.append("".join(pieces))
    return out


@functools.cache
def _phrasings(tags: tuple[str, ...], lang: str, split: str, speech: bool = False) -> tuple[str, ...]:
    """Every phrasing of a tag set in one language and split (frame x clauses)."""
    frames = FRAMES[lang][len(tags)][SPLITS.index(split)]
    if speech:
        frames = frames[:SPEECH_FRAMES]
    # each clause with its capitalised form: {a} -> {0[0]}, {A} -> {0[1]}, {b} -> {1[0]}, {B} -> {1[1]}
    clauses = [[(c, c[0].upper() + c[1:]) for c in _clauses(t, lang, split, speech)] for t in tags]
    fields = {"a": "{0[0]}", "A": "{0[1]}", "b": "{1[0]}", "B": "{1[1]}"}
    out = []
    for frame in frames:
        template = frame.format(**fields)
        out += [template.format(*parts) for parts in itertools.product(*clauses)]
    return tuple(dict.fromkeys(out))


def instruction_bank(tags: tuple[str, ...]) -> dict[str, list[str]]:
    """{'train', 'speech', 'dev', 'test'}: natural-language instructions (en + zh) for a tag set;
    'speech' is the part of 'train' that stage 3's speech samples are asked with."""
    if len(tags) > 2 or any(t not in CLAUSES["en"] for t in tags):
        raise KeyError(f"no instructions for {''.join(tags)}")
    bank = {split: [s for lang in ("en", "zh") for s in _phrasings(tags, lang, split)] for split in SPLITS}
    bank["speech"] = [s for lang in ("en", "zh") for s in _phrasings(tags, lang, "train", speech=True)]
    return bank


def fixed_instruction(tags: tuple[str, ...]) -> str:
    """Stage 1: the instruction is the tag string itself (docs/release.md §9)."""
    return "".join(tags)


def intent_samples(split: str = "train") -> list[dict]:
    """Stage-2 text-only samples of a split: instruction '<ask>:<query>', target = the tag string;
    per task combination and language at most INTENT_PER_COMBO[split] phrasings, drawn evenly."""
    out = []
    for tags in TASK_COMBOS:
        for lang in ("en", "zh"):
            queries = _phrasings(tags, lang, split)
            n = INTENT_PER_COMBO[split]
            if len(queries) > n:  # an even spread: every frame and template keeps its share
                queries = [queries[int(i)] for i in np.linspace(0, len(queries) - 1, n).round()]
            for query in queries:
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
    instruction drawn from the split's phrasings (train: its speech part, see SPEECH_WORDS;
    stage 3 train: the fixed tag string with probability FIXED_SHARE);
    an `instruction` in `extra` (the toy dev and test lists carry one) wins outside training.
    Raises BadSample for unknown tasks, empty text, bad labels."""
    if sample.get("kind") == "text":
        return {k: sample[k] for k in ("tags", "instruction", "target")}
    tags = parse_task(sample.get("task"))
    extra = sample.get("extra") or {}
    fields = {
        **{k: v for k, v in extra.items() if isinstance(v, str)},
        **{k: sample[k] for k in FIELD_KEYS if _usable(sample.get(k))},
    }
    target = make_target(tags, str(sample.get("txt", "")), fields)
    if stage == 1 or (stage == 3 and split == "train" and rng.random() < FIXED_SHARE):
        instruction = fixed_instruction(tags)
    elif split != "train" and isinstance(extra.get("instruction"), str):
        instruction = extra["instruction"]
    else:
        try:
            bank = instruction_bank(tags)["speech" if split == "train" else split]
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
