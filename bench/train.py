"""Training benchmarks (issue 6).

1. Gradient checkpointing: step time and peak activation memory of a toy stage-3 step
   (encoder + adapter + LoRA train) on long audio, off vs on; each in a fresh process, peak
   memory = the rise of the peak resident set over the resident set before the step (Linux
   /proc, with glibc returning freed blocks at once). Goal: >= 40 % less memory for
   <= 40 % more time.
2. Toy stages: target tokens/s of `train.py` on the toy world, stages 1-3.
3. Threads: the toy LLM of stage 0 with 1 and with 2 torch threads, same seed: median step time
   and whether the weights are the same bit for bit (study.py switches it from 1 to 2 threads
   at step 280: a seed's result equals the one-thread run's only where they are).
4. Toy step parts: a step of stages 1 and 3 on the toy world's batches as the loop was and as it
   is (LM head on every position / on the targets only, AdamW per tensor / fused, data re-read
   every epoch / kept), by turns on the same batches.
5. `--device cuda --shape 7b`: one stage-3 LoRA step at the released shape in bf16
   (Whisper-medium + adapter + openPangu-7B with LoRA r 64), random weights, tokens/s and
   peak memory. Needs a GPU with ~40 GB.

    python bench/train.py                       # 1-4 on the CPU
    python bench/train.py --device cuda --shape 7b

Measured (2-core x86-64 CPU, 24 GB, torch 2.13 CPU; `--steps 5`; 8 utterances x 3000 frames):
grad-ckpt off 2904 ms/step, activation peak 911 MiB; on 4067 ms/step, 260 MiB: memory -71 %,
time +40 % (+39 to +41 % over three runs). Toy stages (tokens/s, median step): stage 0 4679
LM tokens/s, 217 ms; stage 1 193 target tokens/s, 425 ms; stage 2 83, 462 ms; stage 3 107,
467 ms (toy targets are a few tokens long: most of the work is the ~100-token prompt).
Threads (2-core AMD EPYC, 30 steps): 1 thread 892 ms/step, 2 threads 477 ms/step (1.87x), the
weights the same bit for bit. Step parts (2-core AMD EPYC, one thread, 30 steps each way): stage 1
287 -> 233 ms (1.23x; data 20.3 -> 2.6 ms a batch), stage 3 692 -> 605 ms (1.14x; 25.2 -> 15.6).
"""

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import data  # noqa: E402
import train  # noqa: E402
from model import IOSUMConfig, IOSUMPangu  # noqa: E402
from toy import ensure_toy_world  # noqa: E402


def proc_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def reset_peak() -> None:
    """Give freed heap back to the OS, then restart the kernel's peak-RSS counter."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def fake_batch(cfg, B: int, frames: int, n_instr: int, n_target: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    V = cfg.llm.vocab_size
    return {
        "kind": "speech",
        "mel": torch.randn(B, cfg.whisper.n_mels, frames, generator=g).to(device),
        "mel_lengths": torch.full((B,), frames, device=device),
        "instruction": torch.randint(40, V, (B, n_instr), generator=g).to(device),
        "target": torch.randint(40, V, (B, n_target), generator=g).to(device),
    }


def stage3_model(preset: str, device: str, bf16: bool, meta: bool = False) -> IOSUMPangu:
    cfg = IOSUMConfig.from_name(preset)
    if meta:  # the 7 B shape: no 32 GB random init on the CPU; fill on the device
        with torch.device("meta"):
            model = IOSUMPangu(cfg)
        model.to_empty(device=device)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.normal_(0, 0.02) if ".lora_B." not in n else p.zero_()
        assert not list(model.buffers()), "fill the buffers here: to_empty left them garbage"
    else:
        model = IOSUMPangu(cfg).to(device)
    model.set_prompt_ids(p1_speech=list(range(1, 60)), p2=list(range(1, 10)))
    for n, p in model.named_parameters():
        p.requires_grad_(train.is_trainable(3, n))
        if bf16 and not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # frozen LLM in bf16, trained parts float32
    return model


def one_config(args) -> dict:
    """Child process. --measure memory: peak activation memory of a step with --ckpt as given
    (its own process, one config). --measure time: steps alternating off / on, so that a
    change in the machine's load hits both alike; median step times."""
    device = train.pick_device(args.device)
    bf16 = train.use_bf16(device, "auto")
    torch.manual_seed(0)
    model = stage3_model(args.preset, device, bf16, meta=args.shape == "7b")
    batch = fake_batch(model.cfg, args.batch, args.frames, 20, args.target, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    kind = device.split(":")[0]
    autocast = torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16)

    def step(ckpt: bool) -> float:
        train.set_grad_ckpt(model, ckpt)
        train.synchronize(device)
        t0 = time.perf_counter()
        with autocast:
            loss = model(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep grads allocated: what remains is activations
        del loss
        train.synchronize(device)
        return time.perf_counter() - t0

    step(args.ckpt)  # allocates grads and optimizer state, warms up
    tokens = int((batch["target"] >= 0).sum())
    if args.measure == "time":
        times = {False: [], True: []}
        for _ in range(args.steps):
            for ckpt in (False, True):
                times[ckpt].append(step(ckpt))
        med = {k: statistics.median(v) for k, v in times.items()}
        return dict(off_s=med[False], on_s=med[True], tok_s_off=tokens / med[False], tok_s_on=tokens / med[True])
    if kind == "cpu":
        reset_peak()
        base = proc_kib("VmRSS")
    else:
        getattr(torch, kind).reset_peak_memory_stats()
        base = getattr(torch, kind).memory_allocated() // 1024
    step(args.ckpt)
    if kind == "cpu":
        peak = proc_kib("VmHWM")
    else:
        peak = getattr(torch, kind).max_memory_allocated() // 1024
    return dict(act_peak_mib=(peak - base) / 1024, peak_mib=peak / 1024)


def child(args, measure: str, ckpt: bool = False) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--preset",
        args.preset,
        "--device",
        args.device,
        "--shape",
        args.shape,
        "--batch",
        str(args.batch),
        "--frames",
        str(args.frames),
        "--target",
        str(args.target),
        "--steps",
        str(args.steps),
        "--measure",
        measure,
    ]
    cmd += ["--ckpt"] if ckpt else []
    env = dict(os.environ)
    if measure == "memory":  # blocks above 64 KiB are mmapped and unmapped on free: RSS follows
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # live memory (it slows the step: not timed)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def toy_stage_tokens(steps: int) -> None:
    """Tokens/s of the real loop on the toy world (data loading included), stages 0-3, each
    starting from the previous one; the toy world is made in toy_data/ if missing."""
    with tempfile.TemporaryDirectory() as tmp:
        for stage in range(4):
            res = train.main(
                [
                    "--stage",
                    str(stage),
                    "--out",
                    f"{tmp}/stage{stage}",
                    "--steps",
                    str(steps),
                    "--eval-every",
                    "0",
                    "--device",
                    "cpu",
                ]
            )
            h = res["history"][1:]  # the first step warms up
            tok_s = sum(r["tokens"] for r in h) / sum(r["step_time"] for r in h)
            step = statistics.median(r["step_time"] for r in h)
            what = "LM tokens" if stage == 0 else "target tokens"
            print(f"toy stage {stage}: {tok_s:7.0f} {what}/s, median step {step * 1e3:.0f} ms")


def toy_stage0_threads(steps: int) -> None:
    """The toy LLM of stage 0 trained `steps` steps on 1 and on 2 threads from the same seed."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            argv = ["--stage", "0", "--out", f"{tmp}/t{threads}", "--steps", str(steps), "--device", "cpu"]
            res = train.main(argv + ["--eval-every", "0", "--save-every", "0"])
            weights = {k: v.detach().clone() for k, v in res["model"].state_dict().items()}
            runs[threads] = statistics.median(r["step_time"] for r in res["history"][1:]), weights
    (t1, w1), (t2, w2) = runs[1], runs[2]
    same = all(torch.equal(w1[k], w2[k]) for k in w1)
    print(
        f"toy stage 0, {steps} steps: 1 thread {t1 * 1e3:.0f} ms/step, 2 threads {t2 * 1e3:.0f} ms/step "
        f"({t1 / t2:.2f}x); weights after {steps} steps {'the same bit for bit' if same else 'DIFFER'}"
    )


def toy_step_parts(steps: int) -> None:
    """A toy step of stages 1 and 3 on the toy world's batches (a fresh toy model: the time does
    not depend on the weights), as it was and as train.py runs it now: the LM head on every
    position -> on the target positions only (`all_logits=False`), AdamW one tensor at a time ->
    fused, every epoch's tars and log-mels read anew -> kept (`cache=True`). Steps alternate
    between the two ways on the same batches, so that a change in the machine's load hits both."""
    world = ensure_toy_world(ROOT / "toy_data")
    torch.set_num_threads(1)  # as study.py trains
    for stage in (1, 3):
        model = IOSUMPangu(IOSUMConfig.from_name("toy"))
        model.set_prompts(world["tokenizer"])
        for n, p in model.named_parameters():
            p.requires_grad_(train.is_trainable(stage, n))
        params = [p for p in model.parameters() if p.requires_grad]
        opts = {was: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=not was) for was in (True, False)}
        conf = dict(stage=stage, seed=0, max_frames_in_batch=train.TOY_COMMON["batch_frames"], **train.TOY_AUGMENT)
        data_ms = {}
        for cache in (False, True):
            loader = data.make_loader(world["train"], world["tokenizer"], cache=cache, **conf)
            sum(1 for _ in loader)  # the first epoch reads everything either way
            t = time.perf_counter()
            batches = list(loader)
            data_ms[cache] = (time.perf_counter() - t) / len(batches) * 1e3
        times = {True: [], False: []}
        for batch in batches[:: max(1, len(batches) // steps)][:steps]:  # spread over the epoch's kinds
            for was in (True, False):
                t = time.perf_counter()
                model(batch, all_logits=was)["loss"].backward()
                opts[was].step()
                opts[was].zero_grad(set_to_none=True)
                times[was].append(time.perf_counter() - t)
        was, now = (statistics.median(times[k]) * 1e3 + data_ms[not k] for k in (True, False))
        print(
            f"toy stage {stage} step (median of {len(times[True])}, data included): was {was:.0f} ms "
            f"(data {data_ms[False]:.1f}), now {now:.0f} ms (data {data_ms[True]:.1f}): {was / now:.2f}x"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default="toy", choices=["toy", "7b"])
    p.add_argument("--batch", type=int, default=None, help="utterances per step")
    p.add_argument("--frames", type=int, default=None, help="mel frames per utterance")
    p.add_argument("--target", type=int, default=60, help="target tokens per utterance")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    p.add_argument("--toy-steps", type=int, default=12, help="steps per toy stage (0: skip)")
    p.add_argument("--thread-steps", type=int, default=30, help="toy stage-0 steps per thread count (0: skip)")
    p.add_argument("--part-steps", type=int, default=30, help="toy steps per way, was / now (0: skip)")
    p.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--measure", default="time", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    seven = args.shape == "7b"
    args.preset = args.preset or ("iosum-pangu-7b" if seven else "toy")
    args.batch = args.batch or (4 if seven else 8)
    args.frames = args.frames or (1000 if seven else 3000)  # 10 s / 30 s of audio
    if args.child:
        print(json.dumps(one_config(args)))
        return
    train.pick_device(args.device)  # a clear error now if the device is absent
    print(
        f"stage-3 step, preset {args.preset}, {args.batch} x {args.frames} frames, "
        f"{args.target} target tokens each, device {args.device}, torch {torch.__version__}"
    )
    off, on, t = child(args, "memory", False), child(args, "memory", True), child(args, "time")
    print(
        f"  grad-ckpt off: {t['off_s'] * 1e3:7.0f} ms/step ({t['tok_s_off']:.0f} target tokens/s), "
        f"activation peak {off['act_peak_mib']:6.0f} MiB (process peak {off['peak_mib']:.0f} MiB)"
    )
    print(
        f"  grad-ckpt on : {t['on_s'] * 1e3:7.0f} ms/step ({t['tok_s_on']:.0f} target tokens/s), "
        f"activation peak {on['act_peak_mib']:6.0f} MiB (process peak {on['peak_mib']:.0f} MiB)"
    )
    mem = 1 - on["act_peak_mib"] / off["act_peak_mib"]
    slow = t["on_s"] / t["off_s"] - 1
    print(
        f"  checkpointing: activation memory -{mem:.0%}, step time {slow:+.0%} "
        "(goal: >= 40 % less memory for <= 40 % more time)"
    )
    if not seven and args.toy_steps:
        toy_stage_tokens(args.toy_steps)
    if not seven and args.thread_steps:
        toy_stage0_threads(args.thread_steps)
    if not seven and args.part_steps:
        toy_step_parts(args.part_steps)


if __name__ == "__main__":
    main()
