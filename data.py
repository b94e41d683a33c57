"""Data for I-OSUM-Pangu: the release's WeNet formats, read, prompted, batched.

Mirrors the data side of the release (WeNet `wenet/dataset/{dataset,processor}.py` as OSUM uses
it): raw / shard / combine lists and a weighted data mix, each sample turned into its stage's
instruction and target by `tasks.py`, SpecAugment + SpecSub, shuffle and sort buffers, dynamic
batching by padded frames, a resumable DataLoader split over DDP ranks and workers (docs/release.md §7-§10).
Any corpus in these formats is read the same way; the toy world (`toy.py`) is one of them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pangu import IGNORE_ID
from tasks import DEFAULT_TASK, BadSample, build_prompt, intent_samples
from tokenizer import PanguTokenizer
from whisper_enc import HOP_LENGTH, SAMPLE_RATE, AudioError, load_audio, log_mel_spectrogram

log = logging.getLogger("data")

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
AUDIO_EXTS = ("wav", "flac", "mp3", "ogg", "opus", "m4a", "wma")  # WeNet's AUDIO_FORMAT_SETS


def _rng(*parts) -> np.random.Generator:
    """A generator seeded by a stable hash of `parts` (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


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
    """`extra` is a JSON object or a JSON string holding one (docs/release.md §10)."""
    if extra is None or extra == "":
        return {}
    if isinstance(extra, (bytes, bytearray)):
        extra = extra.decode("utf-8")
    if isinstance(extra, str):
        extra = json.loads(extra)
    if not isinstance(extra, dict):
        raise BadSample("bad_json", f"{where}: extra is {type(extra).__name__}, not an object")
    return extra


def list_lines(path: str | Path) -> Iterator[tuple[int, str]]:
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


def combine_pairs(combines_list: str | Path, tar_root: str | Path) -> list[str]:
    """The release's combine layout -> `list_path|tar_path` lines: each label list
    (`combines_list.txt`, one per line) pairs with the tar of the same stem under the root
    folder named in `combines_tar_root.txt` (or given directly as a folder)."""
    tar_root = Path(tar_root)
    if tar_root.is_file():
        tar_root = Path(tar_root.read_text(encoding="utf-8").strip())
    return [f"{line}|{tar_root / (Path(line).stem + '.tar')}" for _, line in list_lines(combines_list)]


def _read_combine(list_path: Path, tar_path: Path, where: str, counter: BadDataCounter):
    if not list_path.is_file():
        counter.add("missing_file", where, f"label list {list_path} does not exist")
        return
    labels = {}
    for n, line in list_lines(list_path):
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


def read_line(kind: str, line: str, where: str, folder: Path, counter: BadDataCounter) -> Iterator[dict]:
    """The samples of one list line: a raw JSON line, a shard list's tar, or a combine list's
    `list_path|tar_path` pair. Bad ones are skipped and counted with `where` (file:line)."""
    if kind == "raw":
        try:
            sample = _raw_sample(line, where, folder)
        except BadSample as e:
            counter.add(e.reason, where, str(e))
            return
        counter.ok()
        yield sample
    elif kind == "shard":
        yield from _read_tar(resolve_path(line, folder), where, counter)
    elif line.count("|") != 1:
        counter.add("bad_json", where, "a combine line is 'list_path|tar_path'")
    else:
        list_path, tar_path = (resolve_path(p, folder) for p in line.split("|"))
        yield from _read_combine(list_path, tar_path, where, counter)


def read_list(path: str | Path, kind: str | None = None, counter: BadDataCounter | None = None) -> Iterator[dict]:
    """Every sample of a list file (`kind` raw / shard / combine, guessed when None)."""
    counter = counter if counter is not None else BadDataCounter(max_fraction=1.0)
    path = Path(path)
    kind = kind or guess_kind(path)
    for n, line in list_lines(path):
        yield from read_line(kind, line, f"{path}:{n}", path.parent, counter)


def read_raw_list(path: str | Path, counter: BadDataCounter | None = None) -> Iterator[dict]:
    """WeNet raw `data.list`: one JSON object per line (key, wav, txt, task, lang, extra).

    Yields {key, wav (resolved path), txt, task, lang?, extra (dict), src ('file:line'), ...}.
    Bad lines are skipped and counted (audio is checked later, when it is decoded)."""
    return read_list(path, "raw", counter)


def read_shard_list(path: str | Path, counter: BadDataCounter | None = None) -> Iterator[dict]:
    """WeNet `shards_list.txt`: one tar per line. Tars are streamed (tarfile 'r|*'), members
    grouped by key; whatever members a key has become fields (`txt`, `task`, `lang`, `speaker`,
    `emotion`, `gender`, `duration`, `extra` (JSON -> dict), ...). Audio stays as bytes in
    `audio` with its `audio_format`. Missing or broken tars are skipped, counted and logged."""
    return read_list(path, "shard", counter)


def read_combine_list(path: str | Path, counter: BadDataCounter | None = None) -> Iterator[dict]:
    """Combine format: lines `list_path|tar_path`; labels from the JSON-lines list (`tas_tag`
    read as `task`), audio from the tar. Keys in the list without audio are counted as bad."""
    return read_list(path, "combine", counter)


# ----------------------------------------------------------------------------- data mix


def _read_mix_file(path: Path) -> dict:
    """A data mix as JSON, or as YAML through PyYAML (imported only here: not a runtime need)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    try:
        import yaml
    except ImportError as e:
        raise ImportError(f"{path}: a YAML data mix needs PyYAML (pip install pyyaml); or write it as JSON") from e
    return yaml.safe_load(text)


@dataclass
class Source:
    name: str
    path: Path
    weight: float = 1.0
    kind: str = "raw"  # raw | shard | combine


def guess_kind(path: Path) -> str:
    """raw (JSON lines), combine (`a|b` lines) or shard (anything else, e.g. tar paths)."""
    for _, line in list_lines(path):
        if line.startswith("{"):
            return "raw"
        return "combine" if "|" in line else "shard"
    return "raw"


def read_data_mix(path: str | Path) -> list[Source]:
    """A data YAML `name: {path, weight[, type]}` (or the same as JSON) -> sources. Paths resolve
    like list entries (cwd, then the YAML's folder); `type` is guessed from the list if absent."""
    path = Path(path)
    conf = _read_mix_file(path)
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: a data mix is a mapping name: {{path, weight}}")
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


def spec_sub(mel: torch.Tensor, rng: random.Random, num_t_sub: int = 3, max_t: int = 30) -> torch.Tensor:
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
    """WeNet `sort`: buffers of `size` with the speech emitted in order of length (frames).

    Text records keep their (shuffled) order: sorted by length, a text batch would hold only
    one-tag or only two-tag intents, and training would swing between the two (the toy's stage 2
    collapsed to one answer so). Speech and text are then spread over the buffer by rank (the
    i-th of n records of a kind at (i + 1/2) / n), so that text batches come between speech
    batches rather than all first.
    """

    def spread(buf):
        placed = []
        for kind in sorted({r["kind"] for r in buf}):
            rs = [r for r in buf if r["kind"] == kind]
            rs = sorted(rs, key=_length) if kind == "speech" else rs
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
    """Records (+ their mels (n_mels, T) for speech) -> the batch format model.py reads:
    keys, tasks, kind, [mel (B, n_mels, T) zero-padded, mel_lengths (B,)], instruction (B, Li)
    padded with -1, target (B, Lt) padded with IGNORE_ID (-100), + instruction_text / target_text."""
    batch = {
        "keys": [r["key"] for r in records],
        "tasks": ["".join(r["tags"]) for r in records],
        "kind": records[0]["kind"],
        "instruction": _pad([r["instruction_ids"] for r in records], -1),
        "target": _pad([r["target_ids"] for r in records], IGNORE_ID),
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
    """Runtime knobs of the pipeline; defaults are the release's where it has them (docs/release.md §9)."""

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
    # keep what every epoch would read again in memory: each list line's samples (audio still
    # encoded) once read cleanly, each utterance's log-mel (before augmentation). For data that
    # fits in memory (the toy's 1040 utterances: ~60 MB): a toy step read its tars anew each epoch
    cache: bool = False

    def __post_init__(self):
        if self.stage not in (1, 2, 3) or self.split not in ("train", "dev", "test"):
            raise ValueError(f"stage {self.stage} / split {self.split!r}: want 1-3 / train|dev|test")
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
        self._intents = intent_samples(self.conf.split)  # dev and test hold their phrasings out
        self._lines: dict[tuple, tuple[list[dict], int]] = {}  # conf.cache: (samples, samples seen)
        self._mels: dict[tuple, torch.Tensor] = {}  # conf.cache: (src, key) -> log-mel

    def items(self, epoch: int) -> list[tuple]:
        """The epoch's work list, identical on every rank and worker."""
        out = []
        for src in self.sources:
            lines = [(src.kind, str(src.path), n, line) for n, line in list_lines(src.path)]
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
            if kind == "text":
                counter.ok()
                samples = [dict(self._intents[n])]
            elif (kind, path, n) in self._lines:  # read cleanly before: the same samples, counted again
                cached, seen = self._lines[kind, path, n]
                counter.seen += seen
                samples = [dict(s) for s in cached]
            else:
                samples = read_line(kind, line, f"{path}:{n}", Path(path).parent, counter)
                if self.conf.cache:
                    bad, seen = counter.bad, counter.seen
                    samples = list(samples)
                    if counter.bad == bad:  # a line with bad data is read (and reported) every time
                        self._lines[kind, path, n] = [dict(s) for s in samples], counter.seen - seen
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
        mel = self._mels.get((r["src"], r["key"]))
        if mel is None:
            try:
                audio = decode_audio(r)
            except AudioError as e:
                counter.add("corrupt_audio", r["src"], str(e), seen=False)
                return
            mel = log_mel_spectrogram(audio, n_mels=conf.n_mels)  # (n_mels, T)
            if conf.cache:
                self._mels[r["src"], r["key"]] = mel
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
            log.warning(
                f"rank {R} worker {worker}: no work ({len(items)} items for {W} ranks x "
                f"{n_workers} workers); give fewer workers or more shards"
            )
        records = self._records(self._read(mine, counter), tok, counter, filtered)
        if conf.shuffle:
            rng = random.Random(f"{self.seed}/{self.epoch}/{R}/{worker}")
            records = shuffle_buffer(records, conf.shuffle_size, rng)
        if conf.sort:
            records = sort_buffer(records, conf.sort_size)
        batches = dynamic_batches(records, conf.max_frames_in_batch, conf.max_batch_size, conf.text_batch_size)
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
                f"state was recorded with num_workers={state['num_workers']}, this loader has {self.num_workers}"
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
    data,
    tokenizer_file,
    stage: int = 1,
    split: str = "train",
    seed: int = 0,
    num_workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    **conf,
) -> Loader:
    """One call for train.py: `data` is a list / data mix / sources (stage 2 may pass None: the
    intent set alone), `tokenizer_file` the LLM's `tokenizer.model`; `conf` overrides DataConf
    fields (e.g. max_frames_in_batch=4000)."""
    if tokenizer_file is None:
        raise ValueError("make_loader needs tokenizer_file (the LLM's tokenizer.model)")
    ds = SpeechTextDataset(
        data,
        tokenizer_file,
        DataConf(stage=stage, split=split, **conf),
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return Loader(ds, num_workers=num_workers)
