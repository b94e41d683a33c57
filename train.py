"""Train I-OSUM-Pangu in the three stages of the paper (arXiv 2603.10862, docs/release.md §9), plus a
stage 0 that pretrains the toy Pangu, so the toy study starts from a base LLM as the real one
starts from openPangu. Mirrors the release's WeNet recipe (wenet/utils/executor.py,
train_utils.py): AdamW, "warmuplr", clip 5, accumulation 4, bf16 autocast, torchrun + DDP.

    python train.py --stage 1                     # toy stage 1 on the CPU, makes what it lacks
    torchrun --nproc_per_node 8 train.py --stage 3 --preset iosum-pangu-7b --init ... --data ...
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import data
from checkpoint import atomic_dir, atomic_write, count_params, some_keys
from device import BACKENDS, peak_memory_gb, pick_device, synchronize, use_bf16
from model import IOSUMConfig, IOSUMPangu
from pangu import IGNORE_ID, Pangu, PanguConfig, lm_loss, load_pangu
from tokenizer import PanguTokenizer
from toy import (
    ToyWhisper,
    WithFrameTargets,
    corpus_loaders,
    embed_positions,
    ensure_toy_world,
    read_alignment,
    toy_paths,
)
from whisper_enc import WhisperEncoder, load_whisper

# The release's optimisation settings (docs/release.md §9), for every preset but the toy one. The frame
# budget per batch, step count and eval / save intervals are not published (our choice).
RELEASE = dict(
    lr=5e-4,
    warmup=2000,
    accum=4,
    clip=5.0,
    weight_decay=0.01,
    steps=100_000,
    batch_frames=60_000,
    eval_every=2000,
    eval_batches=200,
    save_every=2000,
    log_every=10,
    freeze_encoder=False,  # stages 1 and 3 train Whisper-medium
)
# Toy presets: the schedule of the toy study (study.py), sized so that the whole study takes
# minutes on a 2-core CPU. (our choice, tuned on the toy world's dev split; the recipe is
# otherwise the release's.) "joint" is the ablation: stages 1-3 in one run, s1 + s2 + s3 steps.
TOY = {
    # stage 0 at 1e-3: at 3e-3 (peak at step 300) a fresh toy LLM trained on reading lines alone never
    # learnt to read frames (dev WER 97 % after 300 steps), at 1e-3 it did (2.7 %; bench/reading.py,
    # docs/study/limits.md).
    # 800 steps: seed 1234's toy LLM read exact frames better (29 against 48 % WER), its study did worse
    # (dev IFR 71 against 88 %, WER 46 against 34 %; docs/study/limits.md)
    0: dict(lr=1e-3, warmup=100, steps=600, block=256, batch_size=8),
    1: dict(lr=1e-3, warmup=30, steps=600),  # at 3e-3 the adapter stayed position-only (docs/study/history.md)
    2: dict(lr=5e-3, warmup=20, steps=300),
    # stage 3: LoRA at 3e-3, the speech side at 1e-3 (at 3e-3 the adapter lost words: 88 vs 79 % WER;
    # LoRA at 1e-3 lost intents: 52 vs 68 % IFR; seed 1234, docs/study/history.md)
    # 600 steps: at 300 the adapter's words were still worse than stage 1 left them (dev WER 76 % with
    # natural language, 58 % at 600; IFR 88 vs 91 %; 3 seeds, docs/study/limits.md)
    # final/ = the mean of the last three saves (steps 400, 500, 600; `average_saves`): dev NL WER 22.9 -> 19.9 %
    # (seeds 1234-1236) and 31.0 -> 21.4 % (1237-1239), IFR level (81.9 -> 81.7, 78.2 -> 78.5; docs/study/limits.md)
    3: dict(lr=3e-3, warmup=20, steps=600, speech_lr=1e-3, average=3),
}
ATTRIBUTE_WEIGHT = 0.1  # the toy Whisper's attribute heads beside its sound head (whisper_step)
TOY["whisper"] = dict(lr=3e-3, warmup=30, steps=2500)  # stage 0, --part whisper (beside the LLM: ~200 s of its ~500)
TOY["joint"] = dict(  # each part at the lr of its decoupled stage; its final/ averaged as stage 3's
    lr=TOY[3]["lr"],
    speech_lr=TOY[1]["lr"],
    warmup=TOY[1]["warmup"],
    steps=sum(TOY[s]["steps"] for s in (1, 2, 3)),
    average=TOY[3]["average"],
)
# The toy Whisper stays frozen after stage 0: trained in stage 1 beside a fresh adapter, it drifted
# while the adapter was still position-only (docs/study/history.md).
TOY_COMMON = dict(
    accum=1,
    clip=5.0,
    weight_decay=0.01,
    batch_frames=1000,
    eval_every=50,
    eval_batches=4,
    save_every=100,
    log_every=5,
    freeze_encoder=True,
)
TOY_PRESETS = ("toy",)
# SpecAugment + SpecSub for the toy. The release's (2 time masks <= 50 frames, 3 SpecSub spans <= 30)
# are sized for utterances of seconds; a toy utterance is 50-110 frames, which they would mostly
# erase. Scaled to the toy: one of each, <= 5 frames (5 of 80 mel bins), for every run of a toy preset.
TOY_AUGMENT = dict(num_t_mask=1, max_t=5, num_f_mask=1, max_f=5, num_t_sub=1, max_t_sub=5)


# ----------------------------------------------------------------------------- schedule


def warmup_lr(step: int, lr: float, warmup: int) -> float:
    """WeNet's WarmupLR: linear warm-up to `lr` at step `warmup`, then lr * sqrt(warmup / step).
    `step` counts from 1 (WeNet's last_epoch + 1)."""
    step = max(step, 1)
    if warmup <= 0:
        return lr * step**-0.5
    return lr * warmup**0.5 * min(step**-0.5, step * warmup**-1.5)


# ----------------------------------------------------------------------------- RNG


def rng_state(device: str) -> dict:
    """Every generator a step draws from, as tensors and plain Python values."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    kind = device.split(":")[0]
    if kind in ("cuda", "npu"):
        state[kind] = getattr(torch, kind).get_rng_state()
    return state


def set_rng_state(state: dict, device: str) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    kind = device.split(":")[0]
    if kind in state:
        getattr(torch, kind).set_rng_state(state[kind])


# ----------------------------------------------------------------------------- checkpoints
# out/step_0000100/{model.safetensors, config.json, train_state.pt} and out/latest (a text file
# naming the newest complete one). A checkpoint is written into a hidden temporary folder next
# to its final place, every file fsynced, then renamed in one os.replace; `latest` is replaced
# the same way only after that. A save killed at any point leaves the previous one intact.


def save_checkpoint(out: Path, step: int, weights: dict, config: dict, state: dict, keep: int):
    final = out / f"step_{step:07d}"
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        torch.save(state, tmp / "train_state.pt")
    atomic_write(out / "latest", final.name + "\n")
    old = sorted(p for p in out.glob("step_*") if p.is_dir() and p != final)
    for p in old[: max(len(old) - (keep - 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
    for p in out.glob(".step_*.tmp*"):  # leftovers of killed saves
        shutil.rmtree(p, ignore_errors=True)
    return final


def average_saves(out: Path, model: torch.nn.Module, n: int, last_step: int) -> list[Path]:
    """Set the model's trained tensors to their mean over the last n saves in `out` (fewer if the
    run saved fewer), as WeNet's average_model.py averages a recipe's last checkpoints, and return
    the saves used. The toy's learning rate never anneals (1/sqrt decay after the warm-up), so its
    last step is one noisy point of the run's end; the mean of three is a steadier one. A save
    holds the trained tensors only (`trainable_state`): its keys and shapes must be the model's. Saves past
    `last_step` (an older, longer run in the same folder) are never taken."""
    saves = sorted(p for p in out.glob("step_*") if p.is_dir() and int(p.name[5:]) <= last_step)[-n:]
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = {name: torch.zeros(p.shape, dtype=torch.float64) for name, p in trained.items()}
    for save in saves:
        weights = load_file(save / "model.safetensors")
        missing, unexpected = sorted(trained.keys() - weights.keys()), sorted(weights.keys() - trained.keys())
        shaped = sorted(k for k in weights.keys() & trained.keys() if weights[k].shape != trained[k].shape)
        if missing or unexpected or shaped:
            raise SystemExit(
                f"{save / 'model.safetensors'}: not this run's trained tensors (missing: {some_keys(missing)}; "
                f"unexpected: {some_keys(unexpected)}; mis-shaped: {some_keys(shaped)})"
            )
        for name, w in weights.items():
            total[name] += w.double()
    with torch.no_grad():
        for name, p in trained.items():
            p.copy_(total[name] / len(saves))
    return saves


def find_checkpoint(path: Path) -> Path:
    """A run folder (-> its `latest`) or a step folder -> the step folder."""
    if (path / "latest").exists():
        path = path / (path / "latest").read_text().strip()
    if not (path / "train_state.pt").exists():
        raise SystemExit(f"--resume: {path} holds no checkpoint (no latest / train_state.pt)")
    return path


def load_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    weights = load_file(path / "model.safetensors")
    config = json.loads((path / "config.json").read_text())
    state = torch.load(path / "train_state.pt", map_location="cpu", weights_only=True)
    return weights, config, state


# ----------------------------------------------------------------------------- parameters


def count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def describe_trainable(model: torch.nn.Module) -> str:
    """Trainable parameter counts per top-level part (LoRA counted apart)."""
    groups: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        g = groups.setdefault(name.split(".")[0] + (".lora" if "lora_" in name else ""), [0, 0])
        g[0] += p.numel() if p.requires_grad else 0
        g[1] += p.numel()
    total, trainable = count_params(model), count_params(model, trainable_only=True)
    lines = [f"trainable {count(trainable)} of {count(total)} parameters:"]
    for part, (t, n) in groups.items():
        lines.append(f"  {part:<24} {'train' if t else 'frozen':<6} {count(t) if t else count(n):>10}")
    return "\n".join(lines)


def trainable_state(model: torch.nn.Module) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------- data


def batch_to(batch: dict, device: str) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def forever(loader):
    """Epoch after epoch. (A resumed run may begin with an empty rest of an epoch.)"""
    empty = 0
    while empty < 2:
        n = 0
        for batch in loader:
            n += 1
            yield batch
        empty = empty + 1 if n == 0 else 0
    raise SystemExit("the training data yielded no batch: check --data and the filters")


# ----------------------------------------------------------------------------- the loop


class NonFiniteError(RuntimeError):
    pass


def evaluate(model, step_fn, dev_batches, n_batches: int, device: str, autocast, world: int):
    """Token-weighted mean loss over the first `n_batches` dev batches of every rank."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of loss * tokens, tokens)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # leaves the training RNG alone
        for i, batch in enumerate(dev_batches):
            if i == n_batches:
                break
            with autocast:
                loss, n = step_fn(model, batch_to(batch, device))
            total += torch.tensor([loss.item() * n, n], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(total)
    model.train()
    return (total[0] / total[1].clamp(min=1)).item()


def train_loop(
    args, model, step_fn, train_data, make_dev, config: dict, device: str, rank: int = 0, world: int = 1, on_step=None
) -> dict:
    """The training run itself. `step_fn(model, batch) -> (mean loss, n target tokens)`;
    `train_data`: this rank's batches, one epoch per iteration, with state_dict() /
    load_state_dict() (a data.Loader or an EpochLoader); `make_dev()`: an iterable of dev
    batches, fresh each call; `on_step(step)`, if given, is called after every step (study.py:
    take the other process's core when it is done)."""
    out = Path(args.out)
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    speech_lr = args.lr if args.speech_lr is None else args.speech_lr
    groups = {}  # peak lr -> parameters; each group follows the warm-up schedule from its own peak
    for n, p in zip(names, params):
        groups.setdefault(speech_lr if is_speech_side(n) and args.stage > 0 else args.lr, []).append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "peak_lr": peak} for peak, ps in groups.items()],
        lr=args.lr,
        betas=(0.9, 0.99),
        eps=1e-6,
        weight_decay=args.weight_decay,
        # one kernel for all the parameters: the toy's stage-1 update 10 -> 2.5 ms (docs/study/limits.md,
        # the loop's speed)
        fused=device.split(":")[0] in ("cpu", "cuda"),
    )
    step, bad = 0, 0
    if args.resume:
        ckpt = find_checkpoint(Path(args.resume) if args.resume != "latest" else out)
        weights, saved_config, state = load_checkpoint(ckpt)
        if sorted(weights) != sorted(names):
            raise SystemExit(
                f"--resume {ckpt}: its weights {sorted(set(weights) ^ set(names))[:5]} "
                "do not match this run's trainable set (same --stage / options?)"
            )
        with torch.no_grad():
            for n, p in zip(names, params):
                p.copy_(weights[n])
        opt.load_state_dict(state["optimizer"])
        step, bad = state["step"], state["bad_steps"]
        if len(state["data"]) != world:
            raise SystemExit(f"--resume {ckpt}: saved by {len(state['data'])} ranks, now {world}")
        train_data.load_state_dict(state["data"][rank])
        set_rng_state(state["rng"][rank], device)
        if rank == 0:
            print(f"resumed from {ckpt} at step {step}")
    train_model = model
    if world > 1:
        ids = None if device == "cpu" else [int(device.split(":")[1])]
        # stage 3 mixes speech and text-only batches: the encoder is idle on text batches
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=args.stage == 3
        )
    kind = device.split(":")[0]
    autocast = torch.autocast(kind, dtype=torch.bfloat16, enabled=use_bf16(device, args.precision))
    batches = forever(train_data)
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    bar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True)
    write = bar.write if rank == 0 else lambda line: None  # tqdm.write ignores `disable`
    history, dev_history = [], []
    if args.eval_every and step == 0:  # where the run starts from
        dev_history.append((0, evaluate(model, step_fn, make_dev(), args.eval_batches, device, autocast, world)))
        write(f"step 0: dev loss {dev_history[-1][1]:.4f}")
    model.train()
    while step < args.steps:
        step += 1
        lr = warmup_lr(step, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = warmup_lr(step, g.get("peak_lr", args.lr), args.warmup)  # (older checkpoints: one group)
        t0 = time.perf_counter()
        loss_sum, tokens = 0.0, 0
        for micro in range(args.accum):
            # DataLoader draws a seed from the global RNG for every new iterator: keep such draws
            # out of the model's stream (dropout), or a resumed run would drift from the full one
            with torch.random.fork_rng(devices=[]):
                batch = next(batches)
            # DDP averages gradients on the last micro-batch's backward only
            sync = world == 1 or micro == args.accum - 1
            with contextlib.nullcontext() if sync else train_model.no_sync():
                with autocast:
                    loss, n = step_fn(train_model, batch_to(batch, device))
                (loss / args.accum).backward()
            loss_sum += loss.item()
            tokens += n
        norm = torch.nn.utils.clip_grad_norm_(params, args.clip)
        bad_now = not math.isfinite(loss_sum) or not torch.isfinite(norm).item()
        stats = torch.tensor([loss_sum / args.accum, tokens, bad_now], device=device)
        if world > 1:  # every rank must agree on skipping, and log the mean loss
            dist.all_reduce(stats)
            stats[0] /= world
        if stats[2] > 0:
            bad += 1
            opt.zero_grad(set_to_none=True)
            write(f"step {step}: non-finite loss or gradient, step skipped ({bad} so far)")
            if bad > args.max_bad_steps:
                raise NonFiniteError(
                    f"{bad} steps had a non-finite loss or gradient (last at step {step}, "
                    f"lr {lr:.3g}), more than --max-bad-steps {args.max_bad_steps}: stopping. "
                    "Lower --lr, check the data, or use --precision fp32."
                )
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)
        synchronize(device)
        dt = time.perf_counter() - t0
        rec = dict(
            step=step,
            loss=stats[0].item(),
            lr=lr,
            tokens=int(stats[1]),
            step_time=dt,
            grad_norm=norm.item(),
            skipped=bool(stats[2] > 0),
        )
        history.append(rec)
        if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
            rec["dev_loss"] = evaluate(model, step_fn, make_dev(), args.eval_batches, device, autocast, world)
            dev_history.append((step, rec["dev_loss"]))
            write(f"step {step}: dev loss {rec['dev_loss']:.4f}")
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        bar.update(1)
        if on_step is not None:
            on_step(step)
        if step % args.log_every == 0 or step == args.steps:
            bar.set_postfix(
                loss=f"{rec['loss']:.3f}",
                lr=f"{lr:.2e}",
                tok_s=f"{rec['tokens'] / dt:.0f}",
                step=f"{dt * 1e3:.0f}ms",
                peak=f"{peak_memory_gb(device):.2f}GB",
            )
        if (args.save_every and step % args.save_every == 0) or step == args.steps:
            positions, rngs = [train_data.state_dict()], [rng_state(device)]
            if world > 1:  # every rank's data position and generators, for an exact resume
                positions, rngs = [None] * world, [None] * world
                dist.all_gather_object(positions, train_data.state_dict())
                dist.all_gather_object(rngs, rng_state(device))
            if rank == 0:
                state = dict(
                    optimizer=opt.state_dict(),
                    step=step,
                    bad_steps=bad,
                    data=positions,
                    rng=rngs,
                    lr=args.lr,
                    warmup=args.warmup,
                )
                save_checkpoint(out, step, trainable_state(model), config, state, args.keep)
    bar.close()
    if log:
        log.close()
    return dict(history=history, dev=dev_history, bad_steps=bad, step=step)


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"Optimisation defaults: the release's {RELEASE}; for the toy preset {TOY_COMMON} with per stage {TOY}.",
    )
    p.add_argument(
        "--stage",
        type=int,
        choices=[0, 1, 2, 3],
        required=True,
        help="0 toy pretraining (LLM or Whisper, see --part), 1 speech alignment, 2 intent (text), 3 joint",
    )
    p.add_argument(
        "--part",
        default="llm",
        choices=["llm", "whisper"],
        help="stage 0: which of the toy's pretrained stand-ins to train (the LLM, on corpus.txt; "
        "the encoder, on the toy speech and its alignment.jsonl)",
    )
    p.add_argument("--preset", default="toy", help="model preset: toy | iosum-pangu-7b")
    p.add_argument(
        "--data",
        help="training data (raw/shard/combine list or data YAML/JSON); "
        "default: the toy world in --toy-dir, made if missing",
    )
    p.add_argument("--dev-data", help="dev data, same forms as --data")
    p.add_argument("--toy-dir", default="toy_data")
    p.add_argument("--tokenizer", help="tokenizer.model (default: the LLM's / the toy world's)")
    p.add_argument("--out", help="run folder (default runs/<preset>/stage<N>)")
    p.add_argument(
        "--init",
        help="I-OSUM-Pangu checkpoint folder to start from (default: runs/<preset>/stage<N-1>/final)",
    )
    p.add_argument("--whisper", help="Whisper encoder weights (any layout of docs/release.md §3), stage 1")
    p.add_argument("--llm", help="Pangu folder or file (config.json + safetensors), stage 1")
    p.add_argument("--device", default="auto", help="auto | npu | cuda | cpu")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="auto: bf16 autocast on NPU / bf16-capable CUDA, float32 on the CPU",
    )
    p.add_argument(
        "--grad-ckpt",
        action="store_true",
        help="gradient checkpointing in encoder, adapter and LLM blocks",
    )
    p.add_argument(
        "--freeze-encoder",
        action=argparse.BooleanOptionalAction,
        help="stages 1 and 3: keep the Whisper encoder as it starts (default: on for the toy, off as the release)",
    )
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument(
        "--speech-lr",
        type=float,
        help="peak lr of the speech side (encoder, adapter, speech bos/eos); default --lr (toy stage 3: 1e-3)",
    )
    p.add_argument("--warmup", type=int, help="WarmupLR steps")
    p.add_argument("--steps", type=int, help="optimizer steps of the whole run")
    p.add_argument("--accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--clip", type=float, help="gradient-norm clipping")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-frames", type=int, help="dynamic batching: mel frames per batch")
    p.add_argument(
        "--batch-size",
        type=int,
        help="text-only batches: samples (stage 0: blocks of --block ids)",
    )
    p.add_argument("--block", type=int, help="stage 0: ids per training block (toy: 256, so that most chat lines fit)")
    p.add_argument(
        "--text-weight",
        type=float,
        default=1.0,
        help="stage 3: copies of the stage-2 text data per epoch, beside the speech",
    )
    p.add_argument("--eval-every", type=int, help="dev loss every N steps (0: never)")
    p.add_argument("--eval-batches", type=int, help="dev batches per evaluation and rank")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (and at the end)")
    p.add_argument("--log-every", type=int)
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    p.add_argument(
        "--average",
        type=int,
        help="final/ = the mean of the last N saves (default 1; toy stage 3 and the ablation 3)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="continue a run: from --out's latest checkpoint, or the folder given",
    )
    p.add_argument(
        "--max-bad-steps",
        type=int,
        default=20,
        help="stop after this many steps with a non-finite loss or gradient",
    )
    p.add_argument(
        "--joint",
        action="store_true",
        help="with --stage 3: the ablation (direct joint training): from --llm and the toy Whisper with a fresh "
        "adapter, adapter + LoRA (+ encoder with --no-freeze-encoder) on stages 1-3's batches at once (see MixLoader)",
    )
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    args = p.parse_args(argv)
    toy = args.preset in TOY_PRESETS
    if args.joint and (args.stage != 3 or not toy or args.llm is None):
        p.error("--joint is the toy ablation: --stage 3 --preset toy --llm <the stage-0 LLM>")
    if args.part == "whisper" and args.stage != 0:
        p.error("--part whisper is stage 0's (the toy Whisper)")
    whisper0 = args.stage == 0 and args.part == "whisper"
    defaults = (
        {**TOY_COMMON, **TOY["joint" if args.joint else "whisper" if whisper0 else args.stage]} if toy else RELEASE
    )
    if args.batch_size is None:
        args.batch_size = defaults.get("batch_size", 16)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = f"runs/{args.preset}/stage{args.stage}" + ("-whisper" if whisper0 else "")
    if args.keep < 1:
        p.error("--keep must be >= 1")
    if args.average is None:
        args.average = 1
    if not 1 <= args.average <= args.keep:
        p.error(f"--average {args.average}: between 1 and --keep ({args.keep}), the saves there are")
    return args


# ----------------------------------------------------------------------------- stages


def is_speech_side(name: str) -> bool:
    """Encoder, adapter and the speech bos / eos rows: all but the LLM (`llm.`)."""
    return not name.startswith("llm.")


def is_trainable(stage: int, name: str, train_encoder: bool = True) -> bool:
    """docs/release.md §9: which parameters each stage trains, by module name (train_encoder
    False: the encoder stays frozen, as the toy's does)."""
    if stage == 0:
        return True  # the toy Pangu, from scratch
    lora = ".lora_" in name
    speech_side = is_speech_side(name) and (train_encoder or not name.startswith("encoder."))
    return {1: speech_side, 2: lora, 3: speech_side or lora}[stage]


def pretrain_step(model, batch):
    """Stage 0: next-token loss of the toy Pangu on blocks of packed corpus lines: ids (B, L + 1,
    K), a position's embedding the sum of its ids' (-1: none), targets (B, L + 1); each position
    attends to the earlier positions of its own line ("doc"), numbered from the line's start ("pos")."""
    ids, targets, doc = batch["ids"][:, :-1], batch["targets"][:, 1:], batch["doc"][:, :-1]
    embeds = embed_positions(getattr(model, "module", model), ids)  # (B, L, D)
    L = doc.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=doc.device).tril()
    mask = (doc[:, :, None] == doc[:, None, :]) & causal  # the diagonal is always in: no row attends to nothing
    logits = model(inputs_embeds=embeds, attention_mask=mask[:, None], position_ids=batch["pos"][:, :-1])
    return lm_loss(logits, targets), int((targets != IGNORE_ID).sum())


def whisper_step(model, batch):
    """Stage 0, toy Whisper: cross-entropy of every head on its frames, the attributes' weighted
    by ATTRIBUTE_WEIGHT (at 1 they held the words back: 13 % of dev word frames right after 500
    steps, 93 % with the sound head alone)."""
    logits = model(batch["mel"], batch["mel_lengths"])
    targets = batch["frame_targets"]
    loss = sum(lm_loss(logits[name], targets[name]) * (1.0 if name == "sound" else ATTRIBUTE_WEIGHT) for name in logits)
    return loss, int((targets["sound"] != IGNORE_ID).sum())


def speech_step(model, batch):
    """Stages 1-3: the model's own loss on the target tokens (docs/release.md §7)."""
    out = model(batch, all_logits=False)
    return out["loss"], int(out["n_tokens"])


class MixLoader:
    """The ablation's data (toy study, Table 6): one epoch = counts[i] batches of loaders[i],
    interleaved in a seeded random order, each loader going on where it stopped. With counts =
    the steps of stages 1, 2, 3 the joint run sees the same batches as the three stages, only
    all at once. state_dict() holds every loader's position."""

    def __init__(self, loaders: list, counts: list[int], seed: int):
        self.loaders, self.counts, self.seed = loaders, counts, seed
        self.epoch, self.batches = 0, 0
        self._iters = [None] * len(loaders)

    def state_dict(self) -> dict:
        loaders = [loader.state_dict() for loader in self.loaders]
        return {"epoch": self.epoch, "batches_consumed": self.batches, "loaders": loaders}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batches = state["epoch"], state["batches_consumed"]
        for loader, s in zip(self.loaders, state["loaders"]):
            loader.load_state_dict(s)
        self._iters = [None] * len(self.loaders)

    def _next(self, i: int):
        if self._iters[i] is None:
            self._iters[i] = forever(self.loaders[i])
        return next(self._iters[i])

    def __iter__(self):
        order = [i for i, n in enumerate(self.counts) for _ in range(n)]
        order = [order[j] for j in np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        while self.batches < len(order):
            batch = self._next(order[self.batches])
            self.batches += 1
            yield batch
        self.epoch, self.batches = self.epoch + 1, 0


def build_data(args, tokenizer_file: Path, rank: int, world: int):
    """This rank's training batches (a loader that records its position) and a maker of
    dev-batch iterables. Stage 0 reads the toy corpus; stages 1-3 go through data.py."""
    if args.stage == 0 and args.part == "llm":  # the toy corpus (a real run starts from openPangu)
        corpus = Path(args.data or Path(args.toy_dir) / "corpus.txt")
        tok = PanguTokenizer(tokenizer_file)
        return corpus_loaders(corpus, tok, args.block, args.batch_size, args.seed, rank, world)
    world_paths = toy_paths(args.toy_dir) if args.data is None else None
    conf = dict(
        tokenizer_file=tokenizer_file,
        stage=max(args.stage, 1),  # stage 0's toy Whisper reads stage 1's batches
        seed=args.seed,
        rank=rank,
        world_size=world,
        max_frames_in_batch=args.batch_frames,
        text_batch_size=args.batch_size,
        text_weight=args.text_weight,
        **(dict(TOY_AUGMENT, cache=True) if args.preset in TOY_PRESETS else {}),  # cache: data.DataConf
    )
    train_data = data.make_loader(
        args.data or world_paths["train"], split="train", num_workers=args.num_workers, **conf
    )
    if args.joint:  # the ablation: the batches of stages 1, 2 and 3 (this one), in one run
        loaders = [
            data.make_loader(args.data or world_paths["train"], split="train", **{**conf, "stage": s}) for s in (1, 2)
        ]
        counts = [TOY[s]["steps"] * args.steps // TOY["joint"]["steps"] for s in (1, 2)]
        train_data = MixLoader([*loaders, train_data], [*counts, args.steps - sum(counts)], args.seed)
    dev_list = args.dev_data or (world_paths["dev"] if world_paths else None)
    if args.stage == 0:  # the toy Whisper: stage 1's speech batches, with what each frame holds
        train_align = read_alignment(Path(args.data or world_paths["train"]).parent / "alignment.jsonl")
        if dev_list is None:
            print("no --dev-data: no dev loss")
            args.eval_every = 0
            return WithFrameTargets(train_data, train_align), None
        dev_align = read_alignment(Path(dev_list).parent / "alignment.jsonl")
        dev = lambda: WithFrameTargets(data.make_loader(dev_list, split="dev", **conf), dev_align)  # noqa: E731
        return WithFrameTargets(train_data, train_align), dev
    if dev_list is None and args.eval_every and args.stage != 2:  # stage 2: data.py's intents
        print("no --dev-data: no dev loss")
        args.eval_every = 0
    # stage 3's dev loss is on speech only: the loader sorts text-only batches first, so a few
    # dev batches of the mix would all be stage 2's intents (tracked by stage 2's own dev loss)
    dev_conf = {**conf, "text_weight": 0.0} if args.stage == 3 else conf
    return train_data, lambda: data.make_loader(dev_list, split="dev", **dev_conf)


def set_grad_ckpt(model: torch.nn.Module, on: bool) -> None:
    """Turn gradient checkpointing on in the encoder, adapter and LLM blocks."""
    parts = [model] if isinstance(model, Pangu) else [model.encoder]
    parts += [model.adapter, model.llm] if isinstance(model, IOSUMPangu) else []
    for part in parts:
        if on and not hasattr(part, "gradient_checkpointing"):
            print(f"warning: {type(part).__name__} has no gradient_checkpointing switch")
        part.gradient_checkpointing = on


def build_stage1_model(cfg: IOSUMConfig, whisper: str | None, llm: str) -> IOSUMPangu:
    """Stage 1 starts from a Whisper encoder (or a fresh one, in the toy study), a fresh
    adapter, and a pretrained LLM that it loads, never initialising a 7 B model at random.
    LoRA is on from the start (frozen until stage 2), as the release builds the model."""
    base = load_pangu(llm)
    model = IOSUMPangu(dataclasses.replace(cfg, llm=base.cfg), llm=base)
    if whisper:
        model.encoder = load_whisper(whisper, cfg.whisper)  # strict; replaces the random init
    return model


def save_final(out: Path, model, tokenizer_file: Path | None) -> Path:
    """The stage's result, what the next stage (or inference) loads: the whole model in our
    format (stage 0: a Pangu folder that `pangu.load_pangu` reads), renamed into place."""
    if isinstance(model, ToyWhisper):  # the encoder alone, in our (OpenAI) names: load_whisper reads it
        with atomic_dir(out / "final") as tmp:
            save_file({k: v.contiguous() for k, v in model.encoder.state_dict().items()}, tmp / "model.safetensors")
            (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(model.encoder.cfg), indent=1) + "\n")
        return out / "final"
    if not isinstance(model, Pangu):
        return model.save_pretrained(out / "final")
    with atomic_dir(out / "final") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(model.cfg.to_json(), indent=1) + "\n")
        if tokenizer_file:
            for f in (tokenizer_file, tokenizer_file.parent / "tokenizer_config.json"):
                shutil.copyfile(f, tmp / f.name)
    return out / "final"


def toy_whisper(args) -> Path:
    """Where a toy run's stage 1 (and the ablation) finds the toy Whisper of stage 0."""
    return Path(args.out).parent / "stage0-whisper" / "final" / "model.safetensors"


def missing_toy_stages(args) -> list[tuple[int, str]]:
    """The earlier toy runs, oldest first, that `args.stage` needs and that have no `final/` yet,
    as (stage, part): (0, 'llm') the toy LLM, (0, 'whisper') the toy Whisper, (1, 'llm') ...
    A fresh clone's `--stage 3` trains both of stage 0, then 1 and 2 first."""
    if args.preset not in TOY_PRESETS or args.init is not None or args.stage == 0:
        return []
    run_dir, missing = Path(args.out).parent, []
    first = 1 if args.joint else args.stage  # the earliest stage this chain runs
    if not ((args.stage == 1 or args.joint) and args.llm):
        for s in range(args.stage - 1, -1, -1):
            if (run_dir / f"stage{s}" / "final").exists():
                break
            missing.insert(0, (s, "llm"))
            first = s
    if first <= 1 and args.whisper is None and not toy_whisper(args).exists():
        missing.insert(0, (0, "whisper"))
    return missing


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    """One stage; in the toy study, the earlier stages it lacks first, each as its own run."""
    args = parse_args(argv)
    missing = missing_toy_stages(args)
    if missing and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise SystemExit(f"run toy stage(s) {missing} first (one process), then this")
    for stage, part in missing:
        name = f"stage{stage}" + ("-whisper" if part == "whisper" else "")
        print(f"{Path(args.out).parent}/{name}/final is missing: training it first")
        same = {
            "--preset": args.preset,
            "--device": args.device,
            "--precision": args.precision,
            "--toy-dir": args.toy_dir,
            "--seed": str(args.seed),
        }
        flags = {"--stage": str(stage), "--part": part, "--out": str(Path(args.out).parent / name), **same}
        run(parse_args([x for kv in flags.items() for x in kv]))
    return run(args)


def run(args, on_step=None) -> dict:
    """Train one stage as `args` says; returns the history, the final folder and the model.
    `on_step(step)`: called after every step (train_loop)."""
    world = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(args.device, local_rank)
    if world > 1:  # MASTER_ADDR / MASTER_PORT come from torchrun's environment
        dist.init_process_group(BACKENDS[device.split(":")[0]], rank=rank, world_size=world)
    say = print if rank == 0 else lambda *a, **k: None
    out, toy = Path(args.out), args.preset in TOY_PRESETS
    say(
        f"stage {args.stage}, preset {args.preset}, device {device} x {world}, "
        f"{'bf16 autocast' if use_bf16(device, args.precision) else 'float32'}, out {out}"
    )
    if toy and args.data is None:  # the toy world, made once
        if rank == 0:
            ensure_toy_world(args.toy_dir)
        if world > 1:
            dist.barrier()
    prev = out.parent / f"stage{args.stage - 1}" / "final"  # runs/<preset>/stage<N-1>/final
    needs_prev = args.stage > 0 and args.init is None and (args.stage > 1 or args.llm is None) and not args.joint
    if needs_prev and not prev.exists():
        raise SystemExit(
            f"stage {args.stage} starts from {prev}, which does not exist: "
            "run the previous stage, or pass --init (stage 1: --llm)"
        )
    tokenizer_file = Path(args.tokenizer) if args.tokenizer else None
    if tokenizer_file is None and toy:
        tokenizer_file = toy_paths(args.toy_dir)["tokenizer"]

    # -- model (same seed on every rank; DDP also broadcasts rank 0's weights)
    torch.manual_seed(args.seed)
    bf16 = use_bf16(device, args.precision)
    dtype = torch.bfloat16 if bf16 else torch.float32  # of what stays frozen
    if args.stage == 0 and not toy:
        raise SystemExit("stage 0 pretrains the toy's LLM and Whisper; a real run starts from openPangu and Whisper")
    if args.stage == 0 and args.part == "whisper":
        model = ToyWhisper(WhisperEncoder(IOSUMConfig.from_name(args.preset).whisper))
        cfg_json = dict(format="toy-whisper", config=dataclasses.asdict(model.encoder.cfg))
        step_fn = whisper_step
    elif args.stage == 0:
        model = Pangu(PanguConfig.from_name(args.preset))
        cfg_json = dict(format="pangu-stage0", config=model.cfg.to_json())
        step_fn = pretrain_step
    else:
        if (args.stage == 1 or args.joint) and args.init is None:
            cfg = IOSUMConfig.from_name(args.preset)
            if toy and args.whisper is None:  # the toy Whisper of stage 0
                args.whisper = str(toy_whisper(args))
                if not Path(args.whisper).exists():
                    raise SystemExit(
                        f"{args.whisper} is missing: run --stage 0 --part whisper first (or pass --whisper)"
                    )
            model = build_stage1_model(cfg, args.whisper, args.llm or str(prev))
            say(f"starting from LLM {args.llm or prev}, encoder {args.whisper or '(fresh)'}")
        else:
            # float32 first: the trained parts keep their precision; the frozen ones go to
            # bf16 below (a 7 B model passes through 32 GB of host memory once)
            model = IOSUMPangu.from_pretrained(args.init or prev, dtype=torch.float32, verbose=rank == 0)
            say(f"starting from {args.init or prev}")
        if tokenizer_file is None:
            tokenizer_file = model.tokenizer_file
        if tokenizer_file is None and args.llm and Path(args.llm, "tokenizer.model").exists():
            tokenizer_file = Path(args.llm, "tokenizer.model")
        if tokenizer_file is None:
            raise SystemExit("no tokenizer: pass --tokenizer (the LLM's tokenizer.model)")
        model.set_prompts(tokenizer_file)
        cfg_json = dict(
            format="iosum-pangu",
            trainable_only=True,
            config=model.cfg.to_dict(),
            prompt_ids=model.prompt_ids,
        )
        step_fn = speech_step
    cfg_json["stage"], cfg_json["args"] = args.stage, vars(args)
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable(args.stage, name, not args.freeze_encoder))
    for p in model.parameters():  # float32 master weights for what trains; bf16 for the rest
        p.data = p.data.to(torch.float32 if p.requires_grad else dtype)
    set_grad_ckpt(model, args.grad_ckpt)
    model.to(device)
    say(describe_trainable(model))

    # -- data: this rank's share, seeded the same on every rank
    train_data, make_dev = build_data(args, tokenizer_file, rank, world)
    seed_all(args.seed + rank)  # dropout and augmentation differ per rank, reproducibly

    out.mkdir(parents=True, exist_ok=True)
    result = train_loop(args, model, step_fn, train_data, make_dev, cfg_json, device, rank, world, on_step)
    if rank == 0:
        if args.average > 1:
            saves = average_saves(out, model, args.average, result["step"])
            say(f"final: the mean of {len(saves)} saves ({', '.join(p.name for p in saves)})")
        result["final"] = save_final(out, model, tokenizer_file)
        say(f"saved {result['final']}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    result["model"] = model
    return result


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


if __name__ == "__main__":
    main()
