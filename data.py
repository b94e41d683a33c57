"""Data for I-OSUM-Pangu: the release's WeNet formats, task tags, instructions, batching, toy world.

Mirrors the data side of the release (WeNet `wenet/dataset/{dataset,processor}.py` as OSUM uses
it): raw / shard / combine lists and a weighted data mix, task names -> intent tags + ASR+X
targets with the release's label normalisation, SpecAugment + SpecSub, shuffle and sort buffers,
dynamic batching by padded frames, a resumable DataLoader split over DDP ranks and workers
(SPEC §7-§10). `ensure_toy_world()` writes a small synthetic corpus a tiny model can learn on a
CPU; `python data.py` builds it and prints a summary.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pangu import PanguTokenizer
from whisper_enc import HOP_LENGTH, SAMPLE_RATE, AudioError, load_audio, log_mel_spectrogram

log = logging.getLogger("data")

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
AUDIO_EXTS = ("wav", "flac", "mp3", "ogg", "opus", "m4a", "wma")  # WeNet's AUDIO_FORMAT_SETS

# ----------------------------------------------------------------------------- tasks and labels

# SPEC §8. Intent tags in the order they are written (`<asr>` first, `<chat>` alone).
TAGS = ("<asr>", "<align>", "<caption>", "<emotion>", "<style>", "<gender>", "<age>", "<chat>")

# Upper-case task names inside the data -> intent tags. `<ALIGN>` alone means SRWT, whose intent
# is `<asr><align>` (SPEC §8). Lower-case tags are accepted as they are.
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
    """'news/science' -> '<NEWS_SCIENCE>' (our spelling of SPEC §8's label names)."""
    return "<" + re.sub(r"[\s/\-]+", "_", name.strip().strip("<>")).upper() + ">"


# SPEC §8 label sets, spelled as single tokens (our choice of spelling: upper case, `_` for
# spaces and slashes). Keys are the intent tags that take a label.
# fmt: off
LABELS = {
    "<caption>": ("laugh", "cough", "cry", "screaming", "sigh", "throat clearing", "sneeze",
                  "other"),
    "<emotion>": ("neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "other"),
    "<style>": ("news/science", "horror story", "fairy tale", "customer service", "poetry/prose",
                "audiobook", "daily conversation", "other"),
    "<gender>": ("male", "female"),
    "<age>": ("child", "adult", "old"),
}
# fmt: on
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
    "<YOUTH>": "<ADULT>", "<MIDDLE_AGE>": "<ADULT>", "<MIDDLE>": "<ADULT>",
    "<TEENAGER>": "<ADULT>", "<KID>": "<CHILD>", "<ELDER>": "<OLD>", "<ELDERLY>": "<OLD>",
    "<OLD_AGE>": "<OLD>", "<MAN>": "<MALE>", "<WOMAN>": "<FEMALE>",
    "<HAPPINESS>": "<HAPPY>", "<SADNESS>": "<SAD>", "<ANGER>": "<ANGRY>",
    "<SURPRISED>": "<SURPRISE>", "<FEARFUL>": "<FEAR>", "<DISGUSTED>": "<DISGUST>",
    "<LAUGHTER>": "<LAUGH>", "<LAUGHING>": "<LAUGH>", "<CRYING>": "<CRY>",
    "<SCREAM>": "<SCREAMING>", "<COUGHING>": "<COUGH>", "<SNEEZING>": "<SNEEZE>",
}  # fmt: skip
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
            raise BadSample(
                "unknown_task", f"task {task!r}: {name} is not one of {list(TASK_NAMES)}"
            )
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
    """Tags + answer in the ASR+X form of SPEC §8, e.g. '<asr><age>hello everyone<ADULT>'.

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


# ----------------------------------------------------------------------------- bad data


class BadDataError(RuntimeError):
    """Too much bad data: stop with the counts and the first offenders."""


class BadDataCounter:
    """Counts skipped samples per reason, logs the first few with file:line, enforces a limit.

    `check()` raises BadDataError when more than `max_count` samples were bad, or when more than
    `max_fraction` of the samples seen were bad (once `min_seen` samples were seen; `final()`
    applies the fraction at the end of a pass whatever was seen).
    """

    def __init__(
        self,
        max_fraction: float = 0.2,
        max_count: int | None = None,
        min_seen: int = 100,
        log_first: int = 5,
    ):
        self.max_fraction, self.max_count = max_fraction, max_count
        self.min_seen, self.log_first = min_seen, log_first
        self.seen = 0
        self.counts: Counter = Counter()
        self.examples: list[str] = []

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    def ok(self) -> None:
        self.seen += 1

    def add(self, reason: str, where: str, message: str, seen: bool = True) -> None:
        """Count a skipped sample; `seen=False` when it was already counted as read."""
        self.seen += seen
        self.counts[reason] += 1
        line = f"{where}: {reason}: {message}"
        if len(self.examples) < 20:
            self.examples.append(line)
        if self.counts[reason] <= self.log_first:
            log.warning("bad data skipped: %s", line)
        self.check()

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        first = "".join(f"\n  {e}" for e in self.examples[:10])
        return f"{self.bad} bad of {self.seen} seen ({counts}); first:{first}"

    def _fail(self, why: str) -> None:
        raise BadDataError(f"too much bad data ({why}): {self.summary()}")

    def check(self) -> None:
        if self.max_count is not None and self.bad > self.max_count:
            self._fail(f"more than max_count={self.max_count}")
        if self.seen >= self.min_seen and self.bad > self.max_fraction * self.seen:
            self._fail(f"more than max_fraction={self.max_fraction}")

    def final(self) -> None:
        self.check()
        if self.seen and self.bad > self.max_fraction * self.seen:
            self._fail(f"more than max_fraction={self.max_fraction} at the end of the pass")


# ----------------------------------------------------------------------------- readers


def resolve_path(path: str, list_dir: Path | None) -> Path:
    """A path from a list: absolute as is; relative: against the cwd first (WeNet's rule, which
    the release's lists rely on), then against the list file's folder (our addition, so that
    lists can name files beside themselves). Returns the first that exists, else the cwd one."""
    p = Path(path.strip())
    if p.is_absolute() or p.exists() or list_dir is None:
        return p
    beside = list_dir / p
    return beside if beside.exists() else p


def _parse_extra(extra, where: str) -> dict:
    """`extra` is a JSON object or a JSON string holding one (SPEC §10)."""
    if extra is None or extra == "":
        return {}
    if isinstance(extra, (bytes, bytearray)):
        extra = extra.decode("utf-8")
    if isinstance(extra, str):
        extra = json.loads(extra)
    if not isinstance(extra, dict):
        raise BadSample("bad_json", f"{where}: extra is {type(extra).__name__}, not an object")
    return extra


def _list_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, stripped line) of a list file, blank lines left out."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line.strip()


def _raw_sample(line: str, where: str, list_dir: Path | None) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadSample("bad_json", f"not JSON ({e})") from e
    if not isinstance(obj, dict) or "key" not in obj or "wav" not in obj:
        raise BadSample("bad_json", "a raw line needs 'key' and 'wav'")
    sample = {k: v for k, v in obj.items() if k not in ("wav", "extra", "tas_tag")}
    if "tas_tag" in obj and "task" not in obj:  # the release's misspelling (combine lists)
        sample["task"] = obj["tas_tag"]
    sample.setdefault("task", DEFAULT_TASK)
    sample["txt"] = str(obj.get("txt", ""))
    try:
        sample["extra"] = _parse_extra(obj.get("extra"), where)
    except json.JSONDecodeError as e:
        raise BadSample("bad_json", f"extra is not JSON ({e})") from e
    sample["wav"] = str(resolve_path(str(obj["wav"]), list_dir))
    sample["src"] = where
    return sample


def read_raw_list(path: str | Path, counter: BadDataCounter | None = None) -> Iterator[dict]:
    """WeNet raw `data.list`: one JSON object per line (key, wav, txt, task, lang, extra).

    Yields {key, wav (resolved path), txt, task, lang?, extra (dict), src ('file:line'), ...}.
    Bad lines are skipped and counted (audio is checked later, when it is decoded)."""
    counter = counter if counter is not None else BadDataCounter(max_fraction=1.0)
    path = Path(path)
    for n, line in _list_lines(path):
        where = f"{path}:{n}"
        try:
            sample = _raw_sample(line, where, path.parent)
        except BadSample as e:
            counter.add(e.reason, where, str(e))
            continue
        counter.ok()
        yield sample


def _tar_groups(tar_path: Path) -> Iterator[dict]:
    """Stream a shard: members grouped by key (consecutive `KEY.ext` members), never unpacked.

    Yields {key, <ext>: bytes, ...}; the grouping rule is WeNet's (prefix before the last '.')."""
    with open(tar_path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        group: dict = {}
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            key, _, ext = name.rpartition(".")
            if group and key != group["key"]:
                yield group
                group = {}
            group["key"] = key
            group[ext] = tar.extractfile(member).read()
        if group:
            yield group


def _shard_sample(group: dict, where: str) -> dict:
    """Bytes of one key's members -> a sample; audio stays encoded (decoded after batching)."""
    fmt = next((e for e in AUDIO_EXTS if e in group), None)
    if fmt is None:
        raise BadSample("missing_audio", f"key {group['key']}: no audio member")
    sample = {"key": group["key"], "audio": group[fmt], "audio_format": fmt, "src": where}
    for ext, value in group.items():
        if ext in ("key", fmt) or ext in AUDIO_EXTS:
            continue
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadSample("bad_json", f"key {group['key']}: .{ext} is not UTF-8") from e
        if ext == "extra":
            try:
                sample["extra"] = _parse_extra(text, where)
            except json.JSONDecodeError as e:
                raise BadSample("bad_json", f"key {group['key']}: .extra not JSON ({e})") from e
        else:
            sample[ext] = text.strip() if ext != "txt" else text
    sample.setdefault("task", DEFAULT_TASK)
    sample.setdefault("txt", "")
    sample.setdefault("extra", {})
    return sample


def _read_tar(tar_path: Path, where: str, counter: BadDataCounter) -> Iterator[dict]:
    if not tar_path.is_file():
        counter.add("missing_file", where, f"tar {tar_path} does not exist")
        return
    try:
        for group in _tar_groups(tar_path):
            try:
                sample = _shard_sample(group, f"{tar_path}:{group['key']}")
            except BadSample as e:
                counter.add(e.reason, f"{tar_path}:{group['key']}", str(e))
                continue
            counter.ok()
            yield sample
    except (tarfile.TarError, OSError, EOFError) as e:
        counter.add("corrupt_tar", where, f"tar {tar_path}: {e}")


def read_shard_list(path: str | Path, counter: BadDataCounter | None = None) -> Iterator[dict]:
    """WeNet `shards_list.txt`: one tar per line. Tars are streamed (tarfile 'r|*'), members
    grouped by key; whatever members a key has become fields (`txt`, `task`, `lang`, `speaker`,
    `emotion`, `gender`, `duration`, `extra` (JSON -> dict), ...). Audio stays as bytes in
    `audio` with its `audio_format`. Missing or broken tars are skipped, counted and logged."""
    counter = counter if counter is not None else BadDataCounter(max_fraction=1.0)
    path = Path(path)
    for n, line in _list_lines(path):
        yield from _read_tar(resolve_path(line, path.parent), f"{path}:{n}", counter)


def combine_pairs(combines_list: str | Path, tar_root: str | Path) -> list[str]:
    """The release's combine layout -> `list_path|tar_path` lines: each label list
    (`combines_list.txt`, one per line) pairs with the tar of the same stem under the root
    folder named in `combines_tar_root.txt` (or given directly as a folder)."""
    tar_root = Path(tar_root)
    if tar_root.is_file():
        tar_root = Path(tar_root.read_text(encoding="utf-8").strip())
    return [
        f"{line}|{tar_root / (Path(line).stem + '.tar')}" for _, line in _list_lines(combines_list)
    ]


def _read_combine(list_path: Path, tar_path: Path, where: str, counter: BadDataCounter):
    if not list_path.is_file():
        counter.add("missing_file", where, f"label list {list_path} does not exist")
        return
    labels = {}
    for n, line in _list_lines(list_path):
        try:
            sample = _raw_sample(line, f"{list_path}:{n}", None)
        except BadSample as e:
            counter.add(e.reason, f"{list_path}:{n}", str(e))
            continue
        sample.pop("wav")
        labels[sample["key"]] = sample
    for audio in _read_tar(tar_path, where, counter):
        label = labels.pop(audio["key"], None)
        if label is None:
            continue  # audio without a label line: the list decides what is used
        yield {**label, "audio": audio["audio"], "audio_format": audio["audio_format"]}
    for key, label in labels.items():
        counter.add("missing_audio", label["src"], f"key {key} is not in {tar_path}")


def read_combine_list(path: str | Path, counter: BadDataCounter | None = None) -> Iterator[dict]:
    """Combine format: lines `list_path|tar_path`; labels from the JSON-lines list (`tas_tag`
    read as `task`), audio from the tar. Keys in the list without audio are counted as bad."""
    counter = counter if counter is not None else BadDataCounter(max_fraction=1.0)
    path = Path(path)
    for n, line in _list_lines(path):
        where = f"{path}:{n}"
        if line.count("|") != 1:
            counter.add("bad_json", where, "a combine line is 'list_path|tar_path'")
            continue
        list_path, tar_path = (resolve_path(p, path.parent) for p in line.split("|"))
        yield from _read_combine(list_path, tar_path, where, counter)


# ----------------------------------------------------------------------------- data mix (YAML)


def _scalar(text: str):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _strip_comment(line: str) -> str:
    quote = None
    for i, c in enumerate(line):
        if c in "'\"":
            quote = None if quote == c else (quote or c)
        elif c == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line.rstrip()


def _flow_mapping(text: str, where: str) -> dict:
    inner = text.strip()[1:-1].strip()
    out = {}
    for part in filter(None, (p.strip() for p in inner.split(","))):
        if ":" not in part:
            raise ValueError(f"{where}: expected 'key: value' in {text!r}")
        k, v = part.split(":", 1)
        out[_scalar(k)] = _scalar(v)
    return out


def parse_simple_yaml(text: str, name: str = "<yaml>") -> dict:
    """The YAML subset a data mix needs (PyYAML is not a runtime dependency): nested block
    mappings by indentation, `key: value` scalars (str / int / float / bool / null, quoted or
    not), flow mappings `{path: x, weight: 1}`, `#` comments. JSON is accepted too. Anything
    else (lists, anchors, multi-line strings) raises naming the line."""
    if text.lstrip().startswith("{"):
        return json.loads(text)
    root: dict = {}
    stack = [(-1, root)]  # (indent, mapping)
    for n, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        if not line.strip():
            continue
        where = f"{name}:{n}"
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if body.startswith(("- ", "&", "*", "|", ">")) or ":" not in body:
            raise ValueError(f"{where}: not in the supported YAML subset: {raw!r}")
        key, value = body.split(":", 1)
        key, value = _scalar(key), value.strip()
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        if value == "":
            parent[key] = {}
            stack.append((indent, parent[key]))
        elif value.startswith("{") and value.endswith("}"):
            parent[key] = _flow_mapping(value, where)
        elif value[0] in "[&*|>":
            raise ValueError(f"{where}: not in the supported YAML subset: {raw!r}")
        else:
            parent[key] = _scalar(value)
    return root


@dataclass
class Source:
    name: str
    path: Path
    weight: float = 1.0
    kind: str = "raw"  # raw | shard | combine


def guess_kind(path: Path) -> str:
    """raw (JSON lines), combine (`a|b` lines) or shard (anything else, e.g. tar paths)."""
    for _, line in _list_lines(path):
        if line.startswith("{"):
            return "raw"
        return "combine" if "|" in line else "shard"
    return "raw"


def read_data_mix(path: str | Path) -> list[Source]:
    """A data YAML `name: {path, weight[, type]}` (or the same as JSON) -> sources. Paths resolve
    like list entries (cwd, then the YAML's folder); `type` is guessed from the list if absent."""
    path = Path(path)
    conf = parse_simple_yaml(path.read_text(encoding="utf-8"), str(path))
    sources = []
    for name, entry in conf.items():
        if not isinstance(entry, dict) or "path" not in entry:
            raise ValueError(f"{path}: source {name!r} needs a 'path'")
        p = resolve_path(str(entry["path"]), path.parent)
        if not p.is_file():
            raise FileNotFoundError(f"{path}: source {name!r}: list {p} does not exist")
        kind = entry.get("type") or guess_kind(p)
        if kind not in ("raw", "shard", "combine"):
            raise ValueError(f"{path}: source {name!r}: type {kind!r} is not raw/shard/combine")
        sources.append(Source(str(name), p, float(entry.get("weight", 1.0)), kind))
    return sources


def as_sources(data) -> list[Source]:
    """A list path (kind guessed), a data YAML/JSON, a Source or a list of these -> sources."""
    if isinstance(data, Source):
        return [data]
    if isinstance(data, (list, tuple)):
        return [s for d in data for s in as_sources(d)]
    path = Path(data)
    if path.suffix in (".yaml", ".yml", ".json"):
        return read_data_mix(path)
    if not path.is_file():
        raise FileNotFoundError(f"data list {path} does not exist")
    return [Source(path.stem, path, 1.0, guess_kind(path))]


# ----------------------------------------------------------------------------- instruction bank

# Natural-language instructions (stages 2-3), ours: the release's phrasings are not published.
# Each is a sentence frame around one clause per intent tag; frames and clauses are split into
# train and held-out sets, and a held-out instruction uses only held-out frames and clauses, so
# no held-out instruction can be a train one (a test checks the strings as well).
# {tag: (train clauses, held-out clauses)} per language.
CLAUSES = {
    "en": {
        "<asr>": (["transcribe the audio", "write down what is said",
                   "convert the speech into text", "tell me what the speaker says",
                   "give me a transcript of the recording", "write out the words you hear"],
                  ["turn this recording into written text", "type out the spoken words"]),
        "<align>": (["give the start and end time of every word", "add a timestamp to each word",
                     "mark when each word begins and ends"],
                    ["tell me the timing of each word"]),
        "<caption>": (["name the sound event in the audio",
                       "tell me which non-speech sound you hear",
                       "identify the vocal event"],
                      ["say what sound the speaker makes besides talking"]),
        "<emotion>": (["tell me the speaker's emotion", "identify the emotion in the voice",
                       "say how the speaker feels"],
                      ["judge the mood of the speaker"]),
        "<style>": (["tell me the speaking style", "identify the style of the speech",
                     "say what kind of speech this is"],
                    ["classify the delivery style of the recording"]),
        "<gender>": (["tell me the speaker's gender", "say whether the speaker is male or female",
                      "identify the gender of the voice"],
                     ["guess if a man or a woman is talking"]),
        "<age>": (["estimate the speaker's age group", "tell me how old the speaker sounds",
                   "say whether the speaker is a child, an adult or elderly"],
                  ["judge the age of the voice"]),
        "<chat>": (["answer the question in the audio", "listen to the question and reply",
                    "respond to what the speaker asks"],
                   ["give a short answer to the spoken question"]),
    },
    "zh": {
        "<asr>": (["转写这段音频", "把这段语音转成文字", "写出说话人说的内容", "听写这段录音",
                   "识别这段语音的文字内容"],
                  ["记录下音频里说的话", "把听到的话原样写下来"]),
        "<align>": (["给出每个词的起止时间", "标注每个词的时间戳", "写出每个词开始和结束的时间"],
                    ["标出每个字说出的时刻"]),
        "<caption>": (["识别音频中的声音事件", "告诉我除了说话还有什么声音",
                       "判断音频里出现的非语音声音"],
                      ["听听有没有笑声咳嗽之类的声音并说出来"]),
        "<emotion>": (["判断说话人的情绪", "告诉我说话人的心情", "识别语音中的情感"],
                      ["分析一下这个人说话时的情绪状态"]),
        "<style>": (["判断这段话的说话风格", "识别语音的讲述风格", "告诉我这是哪种类型的讲话"],
                    ["分析一下这段录音的播讲风格"]),
        "<gender>": (["判断说话人的性别", "告诉我说话人是男是女", "识别说话人的性别"],
                     ["猜一猜说话的是男性还是女性"]),
        "<age>": (["判断说话人的年龄段", "估计说话人的年龄", "告诉我说话人是儿童、成年人还是老人"],
                  ["分析说话人大概多大年纪"]),
        "<chat>": (["回答音频中的问题", "听一下问题并回答", "针对说话人的问题作答"],
                   ["对录音里的提问给出简短的回答"]),
    },
}  # fmt: skip
# (train frames, held-out frames) for one clause ({a}; {A} = capitalised) and for two.
FRAMES = {
    "en": {
        1: (["Please {a}.", "{A}.", "Could you {a}?", "I need you to {a}."],
            ["Can you help me {a}?", "Listen to this clip and {a}."]),
        2: (["Please {a} and {b}.", "{A}, then {b}.", "Could you {a} and also {b}?"],
            ["First {a}; after that, {b}.", "Listen carefully, {a} and {b}."]),
    },
    "zh": {
        1: (["请{a}。", "{a}。", "帮我{a}。", "麻烦你{a}。"],
            ["你能{a}吗？", "听完这段音频后{a}。"]),
        2: (["请{a}，并且{b}。", "先{a}，再{b}。", "帮我{a}，同时{b}。"],
            ["听完后首先{a}，然后{b}。", "麻烦{a}，另外{b}。"]),
    },
}  # fmt: skip
# Stage 2 text-only intent samples: "<ask to classify the intent>:<the user's query>" (SPEC §7).
INTENT_ASK = {"en": "Classify the intent of this request", "zh": "请判断这条用户指令的意图"}

# The task combinations of SPEC §8 the bank covers (and the toy world holds).
TASK_COMBOS = (
    ("<asr>",), ("<asr>", "<align>"), ("<caption>",), ("<emotion>",), ("<style>",),
    ("<gender>",), ("<age>",), ("<chat>",), ("<asr>", "<caption>"), ("<asr>", "<emotion>"),
    ("<asr>", "<style>"), ("<asr>", "<gender>"), ("<asr>", "<age>"),
)  # fmt: skip


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
    """Stage 1: the instruction is the tag string itself (SPEC §9)."""
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


# ----------------------------------------------------------------------------- sample building

FIELD_KEYS = ("emotion", "gender", "age", "style", "caption", "event", "vocal_event")


def _rng(*parts) -> np.random.Generator:
    """A generator seeded by a stable hash of `parts` (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def build_prompt(sample: dict, stage: int, split: str, rng: np.random.Generator) -> dict:
    """A read sample -> {tags, instruction, target} for one stage (SPEC §9).

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


def audio_frames(sample: dict) -> int:
    """Mel frames of a sample's audio from its header alone (no decoding): N16k // 160, with
    N16k = ceil(N * 16000 / sr) as `resample` makes it. Raises BadSample for missing/corrupt."""
    if "audio" in sample:
        src = io.BytesIO(sample["audio"])
    else:
        src = sample["wav"]
        if not Path(src).is_file():
            raise BadSample("missing_audio", f"wav {src} does not exist")
    try:
        info = sf.info(src)
    except Exception as e:  # libsndfile's words name the problem
        raise BadSample("corrupt_audio", f"cannot read the audio header ({e})") from e
    if info.frames <= 0:
        raise BadSample("corrupt_audio", "the audio holds no samples")
    return math.ceil(info.frames * SAMPLE_RATE / info.samplerate) // HOP_LENGTH


def decode_audio(sample: dict) -> torch.Tensor:
    """(N,) float32 16 kHz mono; raises AudioError naming the file (or tar:key)."""
    if "audio" in sample:
        bio = io.BytesIO(sample["audio"])
        bio.name = f"{sample['src']} ({sample['key']}.{sample['audio_format']})"
        return load_audio(bio, max_seconds=None)
    return load_audio(sample["wav"], max_seconds=None)


# ----------------------------------------------------------------------------- augmentation


def spec_aug(
    mel: torch.Tensor,
    rng: random.Random,
    num_t_mask: int = 2,
    num_f_mask: int = 2,
    max_t: int = 50,
    max_f: int = 10,
) -> torch.Tensor:
    """WeNet `processor.spec_aug` (no time warp, as released): each time mask zeroes
    frames [s, s+len) with s ~ U{0..T-1}, len ~ U{1..max_t}; each frequency mask likewise on
    bins. mel (n_mels, T) -> a masked copy."""
    y = mel.clone()
    F_, T = y.shape
    for _ in range(num_t_mask):
        start = rng.randint(0, T - 1)
        y[:, start : min(T, start + rng.randint(1, max_t))] = 0
    for _ in range(num_f_mask):
        start = rng.randint(0, F_ - 1)
        y[start : min(F_, start + rng.randint(1, max_f)), :] = 0
    return y


def spec_sub(
    mel: torch.Tensor, rng: random.Random, num_t_sub: int = 3, max_t: int = 30
) -> torch.Tensor:
    """WeNet `processor.spec_sub`: each of `num_t_sub` spans [s, s+len) (s ~ U{0..T-1},
    len ~ U{1..max_t}) is replaced by the frames `pos` earlier, pos ~ U{0..s}, read from the
    input. mel (n_mels, T) -> a copy."""
    y = mel.clone()
    T = y.shape[1]
    for _ in range(num_t_sub):
        start = rng.randint(0, T - 1)
        end = min(T, start + rng.randint(1, max_t))
        pos = rng.randint(0, start)
        y[:, start:end] = mel[:, start - pos : end - pos]
    return y


# ----------------------------------------------------------------------------- buffers, batching


def shuffle_buffer(records: Iterable, size: int, rng: random.Random) -> Iterator:
    """WeNet `shuffle`: fill a buffer of `size`, shuffle, emit all; the rest at the end."""
    buf = []
    for r in records:
        buf.append(r)
        if len(buf) >= size:
            rng.shuffle(buf)
            yield from buf
            buf = []
    rng.shuffle(buf)
    yield from buf


def _length(r: dict) -> int:
    return r["n_frames"] if r["kind"] == "speech" else len(r["target_ids"])


def sort_buffer(records: Iterable, size: int) -> Iterator:
    """WeNet `sort`: buffers of `size` emitted in order of length (frames; tokens for text).

    Speech and text are sorted apart, then spread over the buffer by rank (the i-th of n
    records of a kind at (i + 1/2) / n), so that text batches come between speech batches
    rather than all first (text lengths in tokens are smaller than speech lengths in frames).
    """

    def spread(buf):
        placed = []
        for kind in sorted({r["kind"] for r in buf}):
            rs = sorted((r for r in buf if r["kind"] == kind), key=_length)
            placed += [((i + 0.5) / len(rs), r) for i, r in enumerate(rs)]
        return [r for _, r in sorted(placed, key=lambda p: p[0])]

    buf = []
    for r in records:
        buf.append(r)
        if len(buf) >= size:
            yield from spread(buf)
            buf = []
    yield from spread(buf)


def dynamic_batches(
    records: Iterable, max_frames_in_batch: int, max_batch_size: int = 0, text_batch_size: int = 32
) -> Iterator[list]:
    """WeNet `dynamic_batch`: speech records go into a batch while (longest * count) padded
    frames stay within `max_frames_in_batch` (a single longer utterance forms its own batch;
    WeNet would emit an empty batch first). Text records are batched apart by count, so every
    batch is all speech or all text."""
    speech, longest, text = [], 0, []
    for r in records:
        if r["kind"] == "text":
            text.append(r)
            if len(text) >= text_batch_size:
                yield text
                text = []
            continue
        new_longest = max(longest, r["n_frames"])
        full = max_batch_size and len(speech) >= max_batch_size
        if speech and (new_longest * (len(speech) + 1) > max_frames_in_batch or full):
            yield speech
            speech, new_longest = [], r["n_frames"]
        speech.append(r)
        longest = new_longest
    if speech:
        yield speech
    if text:
        yield text


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate(records: list[dict], mels: list[torch.Tensor] | None = None) -> dict:
    """Records (+ their mels (n_mels, T) for speech) -> the batch format of the contract:
    keys, tasks, kind, [mel (B, n_mels, T) zero-padded, mel_lengths (B,)], instruction (B, Li)
    padded with -1, target (B, Lt) padded with -100, + instruction_text / target_text."""
    batch = {
        "keys": [r["key"] for r in records],
        "tasks": ["".join(r["tags"]) for r in records],
        "kind": records[0]["kind"],
        "instruction": _pad([r["instruction_ids"] for r in records], -1),
        "target": _pad([r["target_ids"] for r in records], -100),
        "instruction_text": [r["instruction"] for r in records],
        "target_text": [r["target"] for r in records],
    }
    if mels is not None:
        lengths = torch.tensor([m.shape[1] for m in mels], dtype=torch.long)
        mel = torch.zeros(len(mels), mels[0].shape[0], int(lengths.max()))  # (B, n_mels, T)
        for i, m in enumerate(mels):
            mel[i, :, : m.shape[1]] = m
        batch["mel"], batch["mel_lengths"] = mel, lengths
    return batch


# ----------------------------------------------------------------------------- dataset, loader


@dataclass
class DataConf:
    """Runtime knobs of the pipeline; defaults are the release's where it has them (SPEC §9)."""

    stage: int = 1  # 1 fixed tags, 2 text-only intents, 3 natural language + intents
    split: str = "train"  # train | dev | test: instruction set, shuffling, augmentation
    n_mels: int = 80
    min_frames: int = 20  # 0.2 s
    max_frames: int = 4000  # 40 s
    max_tokens: int = 900  # target ids incl. eos
    max_frames_in_batch: int = 12000  # padded frames (B * longest)
    max_batch_size: int = 0  # 0: no cap beyond the frame budget
    text_batch_size: int = 32
    shuffle: bool | None = None  # None: only for train
    shuffle_size: int = 1000
    sort: bool = True
    sort_size: int = 500
    augment: bool | None = None  # SpecAugment + SpecSub; None: only for train
    num_t_mask: int = 2
    max_t: int = 50
    num_f_mask: int = 2
    max_f: int = 10
    num_t_sub: int = 3
    max_t_sub: int = 30
    text_weight: float = 1.0  # stage 3: copies of the stage-2 intent set per epoch
    max_bad_fraction: float = 0.2
    max_bad_count: int | None = None

    def __post_init__(self):
        if self.stage not in (1, 2, 3) or self.split not in ("train", "dev", "test"):
            raise ValueError(
                f"stage {self.stage} / split {self.split!r}: want 1-3 / train|dev|test"
            )
        if self.shuffle is None:
            self.shuffle = self.split == "train"
        if self.augment is None:
            self.augment = self.split == "train"


def _weighted(items: list, weight: float, rng: np.random.Generator) -> list:
    """weight w -> floor(w) copies of every item + a random frac(w) share of them (per epoch)."""
    whole, frac = int(weight), weight - int(weight)
    out = [(*it, rep) for rep in range(whole) for it in items]
    if frac > 0:
        pick = rng.permutation(len(items))[: round(frac * len(items))]
        out += [(*items[i], whole) for i in sorted(pick)]
    return out


class SpeechTextDataset(IterableDataset):
    """The whole pipeline as one iterable of batches (WeNet order): list items -> split over
    ranks and workers -> read -> prompt + tokens -> filter -> shuffle buffer -> sort buffer ->
    dynamic batches -> decode, log-mel, SpecAugment, SpecSub -> collate.

    Deterministic given `seed`: the item order depends on (seed, epoch), each worker's buffers
    on (seed, epoch, rank, worker), each sample's instruction and masks on (seed, epoch, key).
    Audio is decoded only after batching, so resuming skips consumed batches cheaply.
    Item = one line of a raw list, one tar of a shard list, one `list|tar` pair, one intent
    sample; item j goes to rank j % world_size, then to worker (j // world_size) % num_workers.
    """

    def __init__(
        self,
        data,
        tokenizer_file: str | Path,
        conf: DataConf | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.conf = conf or DataConf()
        self.sources = as_sources(data) if data is not None and self.conf.stage != 2 else []
        if self.conf.stage != 2 and not self.sources:
            raise ValueError(f"stage {self.conf.stage} needs speech data")
        self.tokenizer_file = str(tokenizer_file)
        self.seed = seed
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.world_size = world_size or (dist.get_world_size() if initialised else 1)
        self.epoch = 0
        self.skip: list[int] | None = None  # batches already consumed, per logical worker
        self.rotate = 0  # physical worker p runs logical worker (p + rotate) % W
        self._intents = intent_samples("test" if self.conf.split == "test" else "train")

    def items(self, epoch: int) -> list[tuple]:
        """The epoch's work list, identical on every rank and worker."""
        out = []
        for src in self.sources:
            lines = [(src.kind, str(src.path), n, line) for n, line in _list_lines(src.path)]
            out += _weighted(lines, src.weight, _rng(self.seed, epoch, "weight", src.name))
        if self.conf.stage in (2, 3):
            weight = 1.0 if self.conf.stage == 2 else self.conf.text_weight
            idx = [("text", "intents", i, "") for i in range(len(self._intents))]
            out += _weighted(idx, weight, _rng(self.seed, epoch, "weight", "intents"))
        if self.conf.shuffle:
            out = [out[i] for i in _rng(self.seed, epoch, "items").permutation(len(out))]
        return out

    def _read(self, items: list[tuple], counter: BadDataCounter) -> Iterator[dict]:
        for kind, path, n, line, rep in items:
            where, folder = f"{path}:{n}", Path(path).parent
            if kind == "text":
                samples = [dict(self._intents[n])]
                counter.ok()
            elif kind == "raw":
                try:
                    samples = [_raw_sample(line, where, folder)]
                    counter.ok()
                except BadSample as e:
                    counter.add(e.reason, where, str(e))
                    continue
            elif kind == "shard":
                samples = _read_tar(resolve_path(line, folder), where, counter)
            elif line.count("|") != 1:
                counter.add("bad_json", where, "a combine line is 'list_path|tar_path'")
                continue
            else:
                lst, tar = (resolve_path(p, folder) for p in line.split("|"))
                samples = _read_combine(lst, tar, where, counter)
            for s in samples:
                s["rep"] = rep
                yield s

    def _records(self, samples: Iterable[dict], tok, counter: BadDataCounter, filtered: Counter):
        conf = self.conf
        for s in samples:
            where = s.get("src", "?")
            try:
                rng = _rng(self.seed, self.epoch, s["key"], s["rep"])
                r = build_prompt(s, conf.stage, conf.split, rng)
                r.update(key=s["key"], src=where, kind=s.get("kind", "speech"))
                r["instruction_ids"] = tok.encode(r["instruction"], bos=False)
                r["target_ids"] = tok.encode(r["target"], bos=False) + [tok.eos_id]
                if r["kind"] == "speech":
                    r["n_frames"] = audio_frames(s)
                    r.update({k: s[k] for k in ("wav", "audio", "audio_format") if k in s})
                    r["aug_seed"] = int(rng.integers(2**63))
            except BadSample as e:
                counter.add(e.reason, where, f"key {s.get('key')}: {e}", seen=False)
                continue
            if r["kind"] == "speech" and not conf.min_frames <= r["n_frames"] <= conf.max_frames:
                filtered["frames"] += 1
                continue
            if len(r["target_ids"]) > conf.max_tokens:
                filtered["tokens"] += 1
                continue
            yield r

    def _batch(self, records: list[dict], counter: BadDataCounter) -> dict | None:
        if records[0]["kind"] == "text":
            return collate(records)
        kept, mels = [], []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small FFTs: threads only cost (and fight the trainer's)
        try:
            for r in records:
                self._features(r, counter, kept, mels)
        finally:
            torch.set_num_threads(threads)
        return collate(kept, mels) if kept else None

    def _features(self, r: dict, counter: BadDataCounter, kept: list, mels: list) -> None:
        """Decode, log-mel, augment one record (appended to kept/mels), or count it as bad."""
        conf = self.conf
        try:
            audio = decode_audio(r)
        except AudioError as e:
            counter.add("corrupt_audio", r["src"], str(e), seen=False)
            return
        mel = log_mel_spectrogram(audio, n_mels=conf.n_mels)  # (n_mels, T)
        if conf.augment:
            rng = random.Random(r["aug_seed"])
            mel = spec_aug(mel, rng, conf.num_t_mask, conf.num_f_mask, conf.max_t, conf.max_f)
            mel = spec_sub(mel, rng, conf.num_t_sub, conf.max_t_sub)
        kept.append(r)
        mels.append(mel)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        n_workers = info.num_workers if info else 1
        worker = ((info.id if info else 0) + self.rotate) % n_workers
        skip = self.skip[worker] if self.skip else 0
        conf = self.conf
        counter = BadDataCounter(conf.max_bad_fraction, conf.max_bad_count)
        filtered: Counter = Counter()
        tok = PanguTokenizer(self.tokenizer_file)
        items = self.items(self.epoch)
        W, R = self.world_size, self.rank
        mine = [it for j, it in enumerate(items) if j % W == R and (j // W) % n_workers == worker]
        if not mine:
            log.warning(f"rank {R} worker {worker}: no work ({len(items)} items for {W} ranks x "
                        f"{n_workers} workers); give fewer workers or more shards")  # fmt: skip
        records = self._records(self._read(mine, counter), tok, counter, filtered)
        if conf.shuffle:
            rng = random.Random(f"{self.seed}/{self.epoch}/{R}/{worker}")
            records = shuffle_buffer(records, conf.shuffle_size, rng)
        if conf.sort:
            records = sort_buffer(records, conf.sort_size)
        batches = dynamic_batches(
            records, conf.max_frames_in_batch, conf.max_batch_size, conf.text_batch_size
        )
        for index, records in enumerate(batches):
            if index < skip:
                continue
            batch = self._batch(records, counter)
            if batch is not None:
                batch.update(
                    worker=worker,
                    index=index,
                    bad_data=dict(counter.counts),
                    filtered=dict(filtered),
                )
                yield batch
        counter.final()


class Loader:
    """A DataLoader over `SpeechTextDataset` that records where it is.

    `state_dict()` = {epoch, batches_consumed, samples_consumed, worker_next, num_workers}; a new
    Loader given it with `load_state_dict` continues the epoch with the same samples: each
    logical worker skips the batches it had delivered (before decoding any audio), and workers
    are rotated so that the round-robin order goes on where it stopped (exact while no worker has
    run dry; after that the per-worker sequences are still the same). Iterating to the end of
    an epoch moves to the next one. `bad_data` sums the skipped-sample counts of all workers.
    Ranks can get different numbers of batches (a tar is one item, batches are dynamic): a DDP
    loop must stop every rank when the first runs dry (WeNet uses `join`).
    """

    def __init__(self, dataset: SpeechTextDataset, num_workers: int = 0, prefetch_factor: int = 4):
        self.dataset, self.num_workers, self.prefetch_factor = dataset, num_workers, prefetch_factor
        self.epoch, self.batches, self.samples = 0, 0, 0
        self.worker_next = [0] * max(1, num_workers)
        self._bad: dict[int, dict] = {}

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batches_consumed": self.batches,
            "samples_consumed": self.samples,
            "worker_next": list(self.worker_next),
            "num_workers": self.num_workers,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_workers"] != self.num_workers:
            raise ValueError(
                f"state was recorded with num_workers={state['num_workers']}, "
                f"this loader has {self.num_workers}"
            )
        self.epoch, self.batches = state["epoch"], state["batches_consumed"]
        self.samples, self.worker_next = state["samples_consumed"], list(state["worker_next"])

    @property
    def bad_data(self) -> dict:
        total: Counter = Counter()
        for counts in self._bad.values():
            total.update(counts)
        return dict(total)

    def __iter__(self) -> Iterator[dict]:
        ds, W = self.dataset, max(1, self.num_workers)
        ds.epoch, ds.skip, ds.rotate = self.epoch, list(self.worker_next), self.batches % W
        extra = {"prefetch_factor": self.prefetch_factor} if self.num_workers else {}
        for batch in DataLoader(ds, batch_size=None, num_workers=self.num_workers, **extra):
            worker, index = batch.pop("worker"), batch.pop("index")
            self._bad[worker] = batch.pop("bad_data")
            batch.pop("filtered")
            self.worker_next[worker] = index + 1
            self.batches += 1
            self.samples += len(batch["keys"])
            yield batch
        if self.batches == 0 and not any(self.worker_next):
            raise RuntimeError(
                f"epoch {self.epoch} gave no batch (rank {ds.rank}): every sample was filtered "
                f"or bad ({self.bad_data}); see the warnings above"
            )
        self.epoch, self.batches, self.samples = self.epoch + 1, 0, 0
        self.worker_next = [0] * W
        ds.epoch = self.epoch


def make_loader(
    data=None,
    tokenizer_file=None,
    stage: int = 1,
    split: str = "train",
    seed: int = 0,
    num_workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    **conf,
) -> Loader:
    """One call for train.py: `data` is a list / data YAML / sources (None: the toy world's list
    for `split`), `conf` overrides DataConf fields (e.g. max_frames_in_batch=4000)."""
    if tokenizer_file is None or (data is None and stage != 2):
        toy = ensure_toy_world()
        data = data if data is not None else toy[split]
        tokenizer_file = tokenizer_file or toy["tokenizer"]
    ds = SpeechTextDataset(
        data,
        tokenizer_file,
        DataConf(stage=stage, split=split, **conf),
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return Loader(ds, num_workers=num_workers)


# ----------------------------------------------------------------------------- toy world

# A synthetic "language" a tiny model can learn on a CPU in minutes. Each word is two vowel-like
# syllables (harmonics of the speaker's pitch shaped by two formant peaks, like vowels, so the
# word does not depend on the pitch); every label has an acoustic cue of its own:
#   gender  <- pitch register (male 100-125 Hz, female 200-240 Hz)
#   age     <- speaking rate + voice quality (child fast; old slow with tremor and breath noise)
#   emotion <- pitch contour and energy within words (flat / rising / falling+quiet / peaked+loud)
#   style   <- pause rhythm between words (short / long / short-long alternation / medium)
#   event   <- a non-speech sound after the speech (noise bursts shaped per event)
#   chat    <- spoken arithmetic "what is three plus four" -> "seven"
# Label subsets (of SPEC §8's): events laugh/cough/sneeze/sigh, emotions neutral/happy/sad/angry,
# styles news-science/fairy-tale/poetry-prose/daily-conversation; gender and age complete.
# fmt: off
TOY_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
             "plus", "minus", "what", "is", "hello", "good", "cat", "dog", "red", "blue")
# fmt: on
TOY_VOWELS = ((280, 2250), (480, 1750), (780, 1250), (520, 880), (300, 640), (380, 1450))  # F1, F2
TOY_WORD_VOWELS = [(a, (a + k) % 6) for k in (1, 2, 3, 4) for a in range(6)][: len(TOY_WORDS)]
TOY_LABELS = {
    "<caption>": ("<LAUGH>", "<COUGH>", "<SNEEZE>", "<SIGH>"),
    "<emotion>": ("<NEUTRAL>", "<HAPPY>", "<SAD>", "<ANGRY>"),
    "<style>": ("<NEWS_SCIENCE>", "<FAIRY_TALE>", "<POETRY_PROSE>", "<DAILY_CONVERSATION>"),
    "<gender>": ("<MALE>", "<FEMALE>"),
    "<age>": ("<CHILD>", "<ADULT>", "<OLD>"),
}
# The task names the toy lists carry (the data's upper-case names, SPEC §10).
TOY_TASK_NAMES = {
    ("<asr>",): "<TRANSCRIBE>", ("<asr>", "<align>"): "<ALIGN>", ("<caption>",): "<CAPTION>",
    ("<emotion>",): "<EMOTION>", ("<style>",): "<STYLE>", ("<gender>",): "<GENDER>",
    ("<age>",): "<AGE>", ("<chat>",): "<S2TCHAT>",
    ("<asr>", "<caption>"): "<TRANSCRIBE> <CAPTION>",
    ("<asr>", "<emotion>"): "<TRANSCRIBE> <EMOTION>",
    ("<asr>", "<style>"): "<TRANSCRIBE> <STYLE>", ("<asr>", "<gender>"): "<TRANSCRIBE> <GENDER>",
    ("<asr>", "<age>"): "<TRANSCRIBE> <AGE>",
}  # fmt: skip
TOY_SYLLABLE = {"<CHILD>": (0.055, 0.07), "<ADULT>": (0.085, 0.10), "<OLD>": (0.12, 0.14)}  # s
TOY_CONTOUR = {  # pitch factor at (start, middle, end) of a word; gain in dB
    "<NEUTRAL>": ((1.0, 1.0, 1.0), 0.0), "<HAPPY>": ((0.95, 1.1, 1.25), 2.0),
    "<SAD>": ((1.05, 0.93, 0.82), -8.0), "<ANGRY>": ((1.0, 1.2, 1.0), 6.0),
}  # fmt: skip
TOY_GAPS = {  # pause after word i (s): (short, long) ranges; poetry alternates
    "<NEWS_SCIENCE>": (0.02, 0.04), "<FAIRY_TALE>": (0.22, 0.28),
    "<DAILY_CONVERSATION>": (0.09, 0.13), "<POETRY_PROSE>": None,
}  # fmt: skip
TOY_SPEAKERS_PER_CLASS = 6  # per (gender, age); the last one is held out for dev and test
TOY_DIGITS = TOY_WORDS[:10]


def _fade(n: int, ms: float = 10.0) -> np.ndarray:
    r = min(int(ms * SAMPLE_RATE / 1000), n // 2)
    w = np.ones(n, np.float32)
    if r:
        ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)).astype(np.float32)
        w[:r], w[n - r :] = ramp, ramp[::-1]
    return w


def _syllable(dur: float, f0: tuple[float, float], formants, tremor: float) -> np.ndarray:
    """A vowel: harmonics of a gliding f0 weighted by two formant peaks, via one wavetable."""
    n = int(dur * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    pitch = np.linspace(f0[0], f0[1], n) * (1 + tremor * np.sin(2 * np.pi * 6.0 * t))  # (n,)
    mean = float(pitch.mean())
    k = np.arange(1, int(4000 / mean) + 1)  # harmonics below 4 kHz
    hz = k * mean
    env = sum(a * np.exp(-0.5 * ((hz - f) / 90.0) ** 2) for f, a in zip(formants, (1.0, 0.7)))
    amp = (env + 0.03) / np.sqrt(k)
    grid = np.arange(1024) / 1024
    table = (amp[:, None] * np.sin(2 * np.pi * k[:, None] * grid[None])).sum(0)  # one period
    table /= np.abs(table).max()
    phase = np.cumsum(pitch) / SAMPLE_RATE * 1024  # (n,) table position
    i = phase.astype(np.int64)
    frac = phase - i
    y = table[i % 1024] * (1 - frac) + table[(i + 1) % 1024] * frac
    return (y * _fade(n)).astype(np.float32)


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec[(f < lo) | (f > hi)] = 0
    y = np.fft.irfft(spec, n)
    return (y / (np.abs(y).max() + 1e-9)).astype(np.float32)


def _event(rng: np.random.Generator, label: str) -> np.ndarray:
    """A non-speech sound: laugh (4 quick mid-band bursts), cough (2 sharp broadband bursts),
    sneeze (a rising 'ah' then high hiss), sigh (long low breath)."""
    S = SAMPLE_RATE
    if label == "<LAUGH>":
        out = np.zeros(int(0.56 * S), np.float32)
        for j in range(4):
            b = _band_noise(rng, int(0.06 * S), 700, 2500) * _fade(int(0.06 * S), 8)
            out[int(j * 0.14 * S) : int(j * 0.14 * S) + len(b)] += b
        return 0.5 * out
    if label == "<COUGH>":
        out = np.zeros(int(0.35 * S), np.float32)
        for j in range(2):
            n = int(0.1 * S)
            b = _band_noise(rng, n, 200, 5000) * np.exp(-np.arange(n) / (0.03 * S)) * _fade(n, 3)
            out[int(j * 0.25 * S) : int(j * 0.25 * S) + n] += b.astype(np.float32)
        return 0.8 * out
    if label == "<SNEEZE>":
        ah = _syllable(0.12, (180, 290), TOY_VOWELS[2], 0.0)
        hiss = _band_noise(rng, int(0.15 * S), 4000, 7500) * _fade(int(0.15 * S), 5)
        return np.concatenate([0.4 * ah, 0.7 * hiss])
    n = int(0.5 * S)  # <SIGH>
    return (
        0.35 * _band_noise(rng, n, 150, 1200) * np.sin(np.pi * np.arange(n) / n).astype(np.float32)
    )


def _toy_speech(
    rng: np.random.Generator,
    words: list[str],
    f0: float,
    age: str,
    emotion: str,
    style: str,
    event: str | None,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Render words -> (audio (N,) float32, [(start, end) s per word])."""
    S = SAMPLE_RATE
    contour, gain_db = TOY_CONTOUR[emotion]
    tremor = 0.05 if age == "<OLD>" else 0.0
    parts = [np.zeros(int(rng.uniform(0.05, 0.15) * S), np.float32)]
    pos, times = len(parts[0]), []
    for i, word in enumerate(words):
        start = pos
        for j, v in enumerate(TOY_WORD_VOWELS[TOY_WORDS.index(word)]):
            dur = rng.uniform(*TOY_SYLLABLE[age])
            syl = _syllable(dur, (f0 * contour[j], f0 * contour[j + 1]), TOY_VOWELS[v], tremor)
            if age == "<OLD>":  # breathy voice
                syl = syl + 0.08 * _band_noise(rng, len(syl), 300, 3500) * _fade(len(syl))
            parts.append(syl)
            pos += len(syl)
        times.append((start / S, pos / S))
        if i < len(words) - 1:
            gap = TOY_GAPS[style] or ((0.02, 0.04) if i % 2 == 0 else (0.22, 0.28))
            parts.append(np.zeros(int(rng.uniform(*gap) * S), np.float32))
            pos += len(parts[-1])
    speech = np.concatenate(parts) * (0.3 * 10 ** (gain_db / 20))
    tail = (
        [np.zeros(int(rng.uniform(0.08, 0.12) * S), np.float32), _event(rng, event)]
        if event
        else []
    )
    tail.append(np.zeros(int(rng.uniform(0.05, 0.12) * S), np.float32))
    audio = np.concatenate([speech.astype(np.float32), *tail])
    audio += rng.normal(0, 3e-5, len(audio)).astype(np.float32)
    return np.clip(audio, -0.99, 0.99), times


def _toy_speakers(rng: np.random.Generator) -> list[dict]:
    out = []
    for g, (lo, hi) in (("<MALE>", (100, 125)), ("<FEMALE>", (200, 240))):
        for age in TOY_LABELS["<age>"]:
            f0s = np.linspace(lo, hi, TOY_SPEAKERS_PER_CLASS) * rng.uniform(0.98, 1.02)
            for j, f0 in enumerate(rng.permutation(f0s)):
                out.append(
                    {
                        "id": f"spk{len(out):02d}",
                        "gender": g,
                        "age": age,
                        "f0": round(float(f0), 1),
                        "heldout": j == TOY_SPEAKERS_PER_CLASS - 1,
                    }
                )
    return out


def _toy_question(rng: np.random.Generator) -> tuple[list[str], str]:
    """'what is three plus four' -> 'seven' (results stay within 0-9)."""
    a, b = (int(x) for x in rng.integers(0, 10, 2))
    if rng.random() < 0.5 and a + b <= 9:
        return ["what", "is", TOY_DIGITS[a], "plus", TOY_DIGITS[b]], TOY_DIGITS[a + b]
    a, b = max(a, b), min(a, b)
    return ["what", "is", TOY_DIGITS[a], "minus", TOY_DIGITS[b]], TOY_DIGITS[a - b]


def _toy_utterances(rng: np.random.Generator, split: str, n_per_task: int, speakers) -> list:
    """Specs (not audio) of one split: every task combo n_per_task times, its labels balanced
    (cycled in a shuffled order); the other attributes drawn at random."""
    pool = [s for s in speakers if s["heldout"] == (split != "train")]
    specs = []
    cycles = {tags: rng.permutation(n_per_task) for tags in TASK_COMBOS}
    for i in range(n_per_task):
        for tags in TASK_COMBOS:
            attrs = {
                t: TOY_LABELS[t][int(rng.integers(len(TOY_LABELS[t])))]
                for t in ("<emotion>", "<style>", "<gender>", "<age>")
            }
            attrs["<caption>"] = None
            for t in tags:
                if t in TOY_LABELS:
                    attrs[t] = TOY_LABELS[t][int(cycles[tags][i]) % len(TOY_LABELS[t])]
            spk = [
                s for s in pool if s["gender"] == attrs["<gender>"] and s["age"] == attrs["<age>"]
            ]
            spk = spk[int(rng.integers(len(spk)))]
            if tags == ("<chat>",):
                words, answer = _toy_question(rng)
            else:
                words = [
                    TOY_WORDS[int(j)] for j in rng.integers(0, len(TOY_WORDS), rng.integers(3, 5))
                ]
                answer = None
            specs.append(
                {
                    "key": f"toy_{split}_{len(specs):05d}",
                    "tags": tags,
                    "attrs": attrs,
                    "speaker": spk,
                    "words": words,
                    "answer": answer,
                }
            )
    return specs


def _toy_text(spec: dict, times) -> str:
    """The data's `txt` for a spec: transcript (or stamps, or answer) then labels."""
    tags, attrs = spec["tags"], spec["attrs"]
    if tags == ("<chat>",):
        return spec["answer"]
    if "<align>" in tags:
        return " ".join(f"{w}<{s:.1f},{e:.1f}>" for w, (s, e) in zip(spec["words"], times))
    body = " ".join(spec["words"]) if "<asr>" in tags else ""
    return body + "".join(attrs[t] for t in tags if t in TOY_LABELS)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _audio_bytes(audio: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def _tokenizer_symbols() -> list[str]:
    """User-defined pieces: Pangu's specials (ids 3..38), then tags and labels, one token each."""
    specials = ["<|User|>:", "<|Bot|>:"] + [f"[unused{i}]" for i in range(34)]
    labels = [lab for labs in LABELS.values() for lab in labs]
    return specials + list(TAGS) + list(dict.fromkeys(labels))


def train_toy_tokenizer(lines: list[str], path: Path, vocab_size: int = 1024) -> None:
    """The contract's toy sentencepiece model: BPE, byte fallback, Llama/Pangu options."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=_tokenizer_symbols(),
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        max_sentence_length=8192,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())


TOY_VERSION = 1


def _toy_params(seed: int, n_train: int, n_dev: int, n_test: int, n_shards: int) -> dict:
    return {
        "version": TOY_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_dev": n_dev,
        "n_test": n_test,
        "n_shards": n_shards,
    }


def _toy_paths(root: Path) -> dict[str, Path]:
    return {
        "root": root,
        "tokenizer": root / "tokenizer.model",
        "corpus": root / "corpus.txt",
        "train": root / "train" / "shards_list.txt",
        "train_mix": root / "train.yaml",
        "dev": root / "dev" / "data.list",
        "test": root / "test" / "data.list",
        "index": root / "toy_world.json",
    }


def build_toy_world(
    root: str | Path,
    seed: int = 1234,
    n_train: int = 80,
    n_dev: int = 5,
    n_test: int = 10,
    n_shards: int = 8,
) -> dict[str, Path]:
    """Write the toy world under `root` (overwriting): n_* utterances per task combo.

    train: `shards_list.txt` + tars (KEY.flac/.txt/.task/.lang/.speaker/.emotion/.gender/
    .duration/.extra, 16 kHz PCM16 in FLAC to keep it small); dev and test: raw `data.list` +
    `wav/*.wav` (PCM16), their speakers held out; test lines carry a held-out instruction in
    `extra.instruction`. Also `train.yaml` (a data mix), `corpus.txt` (stage-0 LLM text: targets,
    arithmetic, train instructions -> tags), `tokenizer.model` and `toy_world.json`."""
    root = Path(root)
    paths = _toy_paths(root)
    rng = np.random.default_rng(seed)
    speakers = _toy_speakers(rng)
    summary = {"params": _toy_params(seed, n_train, n_dev, n_test, n_shards), "splits": {}}
    train_targets = []
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        folder = root / split
        (folder / "wav").mkdir(parents=True, exist_ok=True) if split != "train" else None
        folder.mkdir(parents=True, exist_ok=True)
        specs = _toy_utterances(rng, split, n, speakers)
        tars = []
        if split == "train":
            tars = [
                tarfile.open(folder / f"shards_{i:06d}.tar", "w", format=tarfile.GNU_FORMAT)
                for i in range(n_shards)
            ]
        lines, seconds, labels = [], 0.0, Counter()
        for i, spec in enumerate(specs):
            a, spk = spec["attrs"], spec["speaker"]
            audio, times = _toy_speech(
                rng,
                spec["words"],
                spk["f0"],
                a["<age>"],
                a["<emotion>"],
                a["<style>"],
                a["<caption>"],
            )
            txt = _toy_text(spec, times)
            task = TOY_TASK_NAMES[spec["tags"]]
            extra = {
                "speaker": spk["id"],
                "gender": a["<gender>"],
                "age": a["<age>"],
                "emotion": a["<emotion>"],
                "style": a["<style>"],
                "event": a["<caption>"] or "none",
                "words": spec["words"],
                "times": [[round(s, 3), round(e, 3)] for s, e in times],
            }
            if spec["answer"]:
                extra["question"] = " ".join(spec["words"])
            if split == "test":
                bank = instruction_bank(spec["tags"])["heldout"]
                extra["instruction"] = bank[int(rng.integers(len(bank)))]
            duration = len(audio) / SAMPLE_RATE
            seconds += duration
            labels.update(
                f"{''.join(spec['tags'])} {a[t]}" for t in spec["tags"] if t in TOY_LABELS
            )
            target = make_target(spec["tags"], txt, extra)
            if split == "train":
                train_targets.append(target)
                members = {
                    "txt": txt,
                    "flac": _audio_bytes(audio, "flac"),
                    "task": task,
                    "lang": "en",
                    "speaker": spk["id"],
                    "emotion": a["<emotion>"],
                    "gender": a["<gender>"],
                    "duration": f"{duration:.3f}",
                    "extra": json.dumps(extra, ensure_ascii=False),
                }
                for ext, value in members.items():
                    data = value.encode("utf-8") if isinstance(value, str) else value
                    _tar_add(tars[i % n_shards], f"{spec['key']}.{ext}", data)
            else:
                (folder / "wav" / f"{spec['key']}.wav").write_bytes(_audio_bytes(audio, "wav"))
                lines.append(
                    json.dumps(
                        {
                            "key": spec["key"],
                            "wav": f"wav/{spec['key']}.wav",
                            "txt": txt,
                            "task": task,
                            "lang": "en",
                            "extra": extra,
                        },
                        ensure_ascii=False,
                    )
                )
        for tar in tars:
            tar.close()
        if split == "train":
            lines = [f"shards_{i:06d}.tar" for i in range(n_shards)]
            (folder / "shards_list.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            (folder / "data.list").write_text("\n".join(lines) + "\n", encoding="utf-8")
        summary["splits"][split] = {
            "utterances": len(specs),
            "hours": round(seconds / 3600, 4),
            "labels": dict(sorted(labels.items())),
        }
    paths["train_mix"].write_text(
        "# data mix (name: {path, weight}); paths relative to this file's folder\n"
        "toy_shards: {path: train/shards_list.txt, weight: 1.0, type: shard}\n",
        encoding="utf-8",
    )

    # Stage-0 corpus (train side only: no held-out instruction appears in it).
    corpus = list(train_targets)
    for a, b in itertools.product(range(10), repeat=2):
        if a + b <= 9:
            corpus.append(f"what is {TOY_DIGITS[a]} plus {TOY_DIGITS[b]} ? {TOY_DIGITS[a + b]}")
        if a >= b:
            corpus.append(f"what is {TOY_DIGITS[a]} minus {TOY_DIGITS[b]} ? {TOY_DIGITS[a - b]}")
    corpus += [f"{s['instruction']} {s['target']}" for s in intent_samples("train")]
    corpus += [" ".join(rng.choice(TOY_WORDS, int(rng.integers(3, 8)))) for _ in range(1000)]
    # Words of every instruction (held-out ones included) in random order: the toy LLM should
    # know the words of a held-out phrasing, as a real LLM does, without seeing the phrasing.
    texts = {
        lang: [s for t in CLAUSES[lang].values() for c in t for s in c]
        + [re.sub(r"\{[aAbB]\}", " ", f) for n in (1, 2) for c in FRAMES[lang][n] for f in c]
        for lang in ("en", "zh")
    }
    en = sorted({w for s in texts["en"] for w in s.split()})
    zh = sorted({ch for s in texts["zh"] for ch in s if not ch.isspace()})
    corpus += [" ".join(rng.choice(en, int(rng.integers(4, 10)))) for _ in range(600)]
    corpus += ["".join(rng.choice(zh, int(rng.integers(4, 12)))) for _ in range(600)]
    corpus = [corpus[i] for i in rng.permutation(len(corpus))]
    paths["corpus"].write_text("\n".join(corpus) + "\n", encoding="utf-8")
    # The tokenizer also sees the prompts and every label, never a held-out phrasing.
    from model import PATTERN2, SYSTEM_GENERATE, SYSTEM_SPEECH, SYSTEM_TEXT, pattern1

    chatml = pattern1("").split("\n") + PATTERN2.split("\n")  # so the toy prompts are short
    prompts = [SYSTEM_SPEECH, SYSTEM_TEXT, SYSTEM_GENERATE, *chatml]
    labels = [
        f"{lab} {lab.strip('<>').lower().replace('_', ' ')}"
        for labs in LABELS.values()
        for lab in labs
    ]
    text = corpus + [INTENT_ASK["en"], INTENT_ASK["zh"]] * 5 + prompts * 20 + labels
    train_toy_tokenizer([t for t in text if t.strip()], paths["tokenizer"])
    summary["speakers"] = speakers
    summary["label_sets"] = {t: list(v) for t, v in TOY_LABELS.items()}
    summary["corpus_lines"] = len(corpus)
    paths["index"].write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    return paths


def ensure_toy_world(
    root: str | Path = "toy_data",
    seed: int = 1234,
    n_train: int = 80,
    n_dev: int = 5,
    n_test: int = 10,
    n_shards: int = 8,
) -> dict[str, Path]:
    """The toy world's paths, building it the first time (and when its parameters changed)."""
    paths = _toy_paths(Path(root))
    root = Path(root).resolve()  # a link (toy_data -> elsewhere) is rebuilt where it points
    params = _toy_params(seed, n_train, n_dev, n_test, n_shards)
    if _toy_params_at(root) == params:
        return paths
    if root.exists() and not _toy_paths(root)["index"].is_file() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a toy world (no toy_world.json)")
    print(f"building the toy world in {root} (seed {seed}); this happens once", file=sys.stderr)
    t0 = time.time()
    # Built aside and renamed into place, so that processes starting together (DDP ranks,
    # test workers) never read a half-written world.
    tmp = root.with_name(f".{root.name}.building-{os.getpid()}")
    build_toy_world(tmp, seed, n_train, n_dev, n_test, n_shards)
    if _toy_params_at(root) not in (None, params):  # a world of other parameters: replace it
        shutil.rmtree(root)
    try:
        tmp.rename(root)
    except OSError:  # another process got there first with the same world
        shutil.rmtree(tmp)
    print(f"toy world ready in {time.time() - t0:.1f} s", file=sys.stderr)
    return paths


def _toy_params_at(root: Path) -> dict | None:
    index = _toy_paths(root)["index"]
    return json.loads(index.read_text(encoding="utf-8"))["params"] if index.is_file() else None


def _print_summary(paths: dict[str, Path]) -> None:
    index = json.loads(paths["index"].read_text(encoding="utf-8"))
    size = sum(p.stat().st_size for p in paths["root"].rglob("*") if p.is_file())
    print(f"toy world at {paths['root']} ({size / 1e6:.1f} MB)")
    for split, s in index["splits"].items():
        print(
            f"  {split:5s} {s['utterances']:5d} utterances, {s['hours'] * 60:.1f} min"
            f" -> {paths[split]}"
        )
    print(
        f"  tokenizer {paths['tokenizer']}, stage-0 corpus {paths['corpus']}"
        f" ({index['corpus_lines']} lines)"
    )
    for tag, labels in index["label_sets"].items():
        print(f"  {tag:10s} {' '.join(labels)}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build the toy world (default) and summarise it.")
    parser.add_argument("command", nargs="?", default="toy", choices=["toy"])
    parser.add_argument("--root", default="toy_data")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    _print_summary(ensure_toy_world(args.root, seed=args.seed))
