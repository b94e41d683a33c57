"""Run an I-OSUM-Pangu model over audio: one file, or every line of a WeNet list, batched.

    python infer.py --wav a.wav --instruction "帮我听听这段录音说了什么"
    python infer.py --data test/data.list --out results.jsonl --batch-size 8 [--resume]
    python infer.py --checkpoint step_N.pt --llm openPangu-Embedded-7B-V1.1 --data LIST --out R

The release ships one script per task that writes `key text` lines; this is one script for all of
them. Each list line gets one JSON line in --out, in input order, whatever went wrong with it
(`error` says what), so `ifr_eval.py` can score the whole list. Decoding is the release's: greedy,
repetition penalty 1.05 on generated tokens, at most 400 new tokens, stop at `[unused10]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import data
from checkpoint import atomic_write
from device import peak_memory_gb, pick_device, synchronize
from model import IOSUMPangu
from tasks import BadSample, build_prompt, fixed_instruction
from whisper_enc import SAMPLE_RATE, AudioError, load_audio

DEFAULT_CHECKPOINT = "runs/toy/stage3/final"  # the toy study's final model (python study.py)
FIELDS = ("key", "task", "lang", "txt", "target", "instruction", "output", "finished", "n_tokens", "seconds", "error")


class _Errors(data.BadDataCounter):
    """Collects what data.read_line skips, so that every bad line still gets its output line."""

    def __init__(self):
        super().__init__(max_fraction=1.0)
        self.found: list[tuple[str, str]] = []

    def add(self, reason: str, where: str, message: str, seen: bool = True) -> None:
        self.found.append((where, f"{reason}: {message}"))


def read_items(path: str | Path, instruction: str | None = None, fixed: bool = False) -> list[dict]:
    """Every sample of a raw / shard / combine list as an item to decode, in input order: the
    sample, its reference, its instruction (the line's own unless `instruction` or `fixed`), or
    the `error` that keeps it from being decoded (bad JSON, unknown task, no instruction...)."""
    path = Path(path)
    kind, errors, items = data.guess_kind(path), _Errors(), []
    for n, line in data.list_lines(path):
        where = f"{path}:{n}"
        for sample in data.read_line(kind, line, where, path.parent, errors):
            items.append(_item(sample, instruction, fixed))
        for place, message in errors.found:  # a line (or a tar member) that could not be read
            items.append({"key": _key_of(line) or place, "task": None, "txt": None, "error": f"{place}: {message}"})
        errors.found.clear()
    return items


def _key_of(line: str) -> str | None:
    try:
        key = json.loads(line).get("key")
    except (json.JSONDecodeError, AttributeError):
        return None
    return str(key) if key is not None else None


def _item(sample: dict, instruction: str | None, fixed: bool) -> dict:
    extra = sample.get("extra") or {}
    item = {"key": sample["key"], "task": sample.get("task"), "lang": sample.get("lang"), "txt": sample.get("txt")}
    item["sample"] = sample
    try:
        prompt = build_prompt(sample, stage=1, split="test", rng=None)  # the fixed form and the target
    except BadSample as e:
        return {**item, "error": f"{sample.get('src')}: {e.reason}: {e}"}
    item["target"] = prompt["target"]
    if fixed:
        item["instruction"] = fixed_instruction(prompt["tags"])
    else:
        item["instruction"] = instruction or sample.get("instruction") or extra.get("instruction")
    if not isinstance(item["instruction"], str) or not item["instruction"]:
        item["error"] = f"{sample.get('src')}: no instruction in the line (give --instruction or --fixed)"
    return item


def _frames(item: dict, max_seconds: float) -> int:
    """Mel frames of the item's audio, from its header alone; over-long audio is refused here,
    before anything is decoded. Raises AudioError / BadSample naming the file (or tar:key)."""
    sample = item["sample"]
    frames = data.audio_frames(sample)
    if frames > max_seconds * data.FRAMES_PER_SECOND:
        where = sample.get("wav", sample.get("src"))
        raise AudioError(f"{where}: {frames / data.FRAMES_PER_SECOND:.1f} s is over --max-seconds {max_seconds}")
    return frames


# ----------------------------------------------------------------------------- results file


def read_done(out: Path) -> dict[int, dict]:
    """The complete lines of an earlier run's --out by their `index`; a half-written last line
    (a run killed mid-write) is cut off the file, so it is decoded again."""
    if not out.exists():
        return {}
    raw = out.read_bytes()
    done, keep = {}, 0
    for line in raw.splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if not line.endswith(b"\n"):
            break
        done[rec["index"]] = rec
        keep += len(line)
    if keep < len(raw):
        with open(out, "r+b") as f:
            f.truncate(keep)
    return done


def _record(index: int, item: dict, **result) -> dict:
    rec = {"index": index, **{k: item.get(k) for k in FIELDS}, **result}
    rec["finished"] = bool(rec["finished"])  # a line that was not decoded did not finish
    return rec


def decode_items(
    model, items: list[dict], out: Path, batch_size: int = 8, resume: bool = False, max_seconds: float = 40.0, **gen
) -> dict:
    """Decode the items in batches of similar length, append each batch's lines to `out` as it
    finishes, then rewrite `out` in input order (atomically). With `resume`, lines already in
    `out` are kept and not decoded again. Returns the summary (counts, speed, memory)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out) if resume else {}
    if not resume:
        out.write_text("")
    todo = [i for i in range(len(items)) if i not in done]
    frames, n_audio_s, t_model, n_tokens = {}, 0.0, 0.0, 0
    max_new = gen.get("max_new_tokens", 400)

    def failed(i: int, error: str) -> None:
        items[i]["error"] = error
        done[i] = _record(i, items[i])
        f.write(json.dumps(done[i], ensure_ascii=False) + "\n")

    with open(out, "a", encoding="utf-8") as f:
        for i in todo:  # bad lines, missing, unreadable and over-long audio are answered at once
            try:
                if items[i].get("error") is None:
                    frames[i] = _frames(items[i], max_seconds)
            except AudioError as e:
                items[i]["error"] = str(e)
            except BadSample as e:
                items[i]["error"] = f"{items[i]['sample'].get('src')}: {e.reason}: {e}"
            if items[i].get("error") is not None:
                failed(i, items[i]["error"])
        f.flush()
        order = sorted(frames, key=lambda i: (frames[i], i))  # length-sorted batches
        bar = tqdm(total=len(order), unit="utt", desc="decoding", dynamic_ncols=True, file=sys.stderr)
        for b in range(0, len(order), batch_size):
            audio = {}
            for i in order[b : b + batch_size]:  # decoded one batch at a time
                try:
                    audio[i] = data.decode_audio(items[i]["sample"])
                except AudioError as e:
                    failed(i, str(e))
            rows = list(audio)
            t0 = time.perf_counter()
            texts, ids = (
                model.generate(
                    audio=[audio[i] for i in rows], instruction=[items[i]["instruction"] for i in rows], **gen
                )
                if rows
                else ([], [])
            )
            synchronize(str(model.speech_token_emded.weight.device))
            t_model += time.perf_counter() - t0
            for i, text, row in zip(rows, texts, ids):
                seconds = round(len(audio[i]) / SAMPLE_RATE, 3)
                result = dict(output=text, finished=len(row) < max_new, n_tokens=len(row), seconds=seconds)
                done[i] = _record(i, items[i], **result)
                f.write(json.dumps(done[i], ensure_ascii=False) + "\n")
                n_audio_s += seconds
                n_tokens += len(row)
            f.flush()
            bar.update(len(order[b : b + batch_size]))
        bar.close()
    lines = [json.dumps(done[i], ensure_ascii=False) + "\n" for i in range(len(items))]
    atomic_write(out, "".join(lines))
    errors = [done[i]["error"] for i in range(len(items)) if done[i]["error"]]
    return {
        "lines": len(items),
        "decoded": len(order) - sum(1 for i in order if done[i]["error"]),
        "resumed": len(items) - len(todo),
        "errors": len(errors),
        "first_errors": errors[:5],
        "utterances_per_s": len(order) / t_model if t_model else 0.0,
        "real_time_factor": t_model / n_audio_s if n_audio_s else 0.0,
        "tokens_per_s": n_tokens / t_model if t_model else 0.0,
        "peak_memory_gb": peak_memory_gb(str(model.speech_token_emded.weight.device)),
    }


# ----------------------------------------------------------------------------- model


def default_layout(model: IOSUMPangu) -> str:
    """The prompt layout a model is decoded with by default: the release's own weights (its
    step_N.pt, or our conversion of it) were trained with the training prompt but are decoded by
    the release's generate() with another one, which we reproduce ("release"); a model train.py
    wrote is decoded with the prompt it was trained with ("train")."""
    return "release" if model.source == "release" else "train"


def pack_on_cpu(model, batch_size: int, choice: str) -> bool:
    """Whether to hand the decoder to oneDNN (`cpu_decode.pack_for_cpu`, LoRA merged first). auto:
    from batch 4 up, where it was faster on both CPUs measured (bench/decode.py, README); at batch 1
    it was slower on an Intel Xeon (0.85x) and faster on an AMD EPYC, so plain float32 there."""
    if choice == "off" or str(model.speech_token_emded.weight.device) != "cpu":
        return False
    return choice == "on" or batch_size >= 4


def load_model(args) -> IOSUMPangu:
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        hint = (
            " (run `python study.py` first: it trains the toy model)" if args.checkpoint == DEFAULT_CHECKPOINT else ""
        )
        raise SystemExit(f"--checkpoint {checkpoint} does not exist{hint}")
    device = pick_device(args.device)
    dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = IOSUMPangu.from_pretrained(checkpoint, llm_dir=args.llm, config=args.config, dtype=dtype, verbose=False)
    model.eval().to(device)
    if pack_on_cpu(model, args.batch_size, args.cpu_pack):
        from cpu_decode import pack_for_cpu
        from pangu import merge_lora

        pack_for_cpu(merge_lora(model.llm))
    return model


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--wav", help="one audio file: print the answer")
    what.add_argument("--data", help="a WeNet raw data.list, shard list or combine list")
    p.add_argument("--out", help="results JSON lines (with --data)")
    p.add_argument("--instruction", help="the instruction for every line (default: each line's own)")
    p.add_argument("--fixed", action="store_true", help="ask with the fixed tag instruction of each line's task")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="our folder, or the release's step_N.pt")
    p.add_argument("--llm", help="openPangu folder (config.json, tokenizer.model), for the release's step_N.pt")
    p.add_argument("--config", help="preset of a released checkpoint (default iosum-pangu-7b)")
    p.add_argument(
        "--layout",
        choices=["auto", "release", "train"],
        default="auto",
        help="prompt layout; auto: release for the release's weights, train for ours (default_layout)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resume", action="store_true", help="keep the lines already in --out, decode the rest")
    p.add_argument("--device", default="auto", help="auto | npu | cuda | cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: the checkpoint's")
    p.add_argument("--cpu-pack", default="auto", choices=["auto", "on", "off"], help="oneDNN-packed decoder on CPU")
    p.add_argument("--max-seconds", type=float, default=40.0, help="longer audio gets an error line (release: 40 s)")
    p.add_argument("--max-new-tokens", type=int, default=400)
    p.add_argument("--repetition-penalty", type=float, default=1.05)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the release)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = p.parse_args(argv)
    if args.data and not args.out:
        p.error("--data needs --out")
    if args.instruction and args.fixed:
        p.error("--instruction and --fixed exclude each other")
    if args.wav and not (args.instruction or args.fixed):
        p.error("--wav needs --instruction (or --fixed with a task: not available for a bare file)")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = load_model(args)
    layout = default_layout(model) if args.layout == "auto" else args.layout
    generator = torch.Generator(device=str(model.speech_token_emded.weight.device)).manual_seed(args.seed)
    gen = dict(
        layout=layout,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
    )
    if args.wav:
        try:
            audio = load_audio(args.wav, max_seconds=args.max_seconds)
        except AudioError as e:
            raise SystemExit(str(e)) from e
        texts, _ = model.generate(audio=[audio], instruction=[args.instruction], **gen)
        print(texts[0])
        return {"output": texts[0]}
    items = read_items(args.data, args.instruction, args.fixed)
    print(f"{args.data}: {len(items)} lines, layout {layout}, batch {args.batch_size}", file=sys.stderr)
    summary = decode_items(model, items, Path(args.out), args.batch_size, args.resume, args.max_seconds, **gen)
    print(
        f"wrote {args.out}: {summary['lines']} lines ({summary['decoded']} decoded, {summary['resumed']} resumed, "
        f"{summary['errors']} errors); {summary['utterances_per_s']:.2f} utt/s, RTF {summary['real_time_factor']:.3f}, "
        f"{summary['tokens_per_s']:.1f} generated tok/s, peak memory {summary['peak_memory_gb']:.2f} GB",
        file=sys.stderr,
    )
    for e in summary["first_errors"]:
        print(f"  error: {e}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
