"""The toy study in one command: does the decoupled-then-integrated recipe of I-OSUM-Pangu (arXiv
2603.10862, Tables 2, 3, 6) beat direct joint training at following natural-language instructions?

    python study.py                 # toy world, stage 0 (toy LLM + toy Whisper), 1-3, ablation, inference, scores
    python study.py --seeds 3       # three training seeds: mean and spread
    python study.py --fresh         # start again (default: skip what is already done)

Everything runs on the CPU from the toy world (toy.py), with train.py's stages and ifr_eval.py's
scores, on the test split (held-out speakers, held-out phrasings). Writes `runs/toy/report.md`,
`report.json` and PNG plots; `runs/toy/stage3/final` is the model infer.py uses by default.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

import train
from checkpoint import atomic_write
from model import IOSUMPangu
from toy import READING_PER_TRAIN, WORLD_SIZE, ensure_toy_world, toy_params_at

# The paper's numbers for the tables' "paper" columns (docs/release.md §8; Tables 2, 3, 6).
PAPER_IFR = {"decoupled": 90.2, "joint": 51.5, "Qwen2-Audio-Instruct": 71.3}
PAPER_FI_NL = {  # task: (metric, fixed instruction, natural language)
    "ASR": ("WER % (WenetSpeech / Libri clean)", "7.36 / 3.64", "7.40 / 3.51"),
    "SER": ("acc %", "67.39", "67.41"),
    "SGC": ("acc %", "97.04", "96.02"),
    "SRWT": ("paper: AAS ms; toy: mean boundary error s", "22.39", "17.52"),
    "SSR": ("acc %", "62.79", "58.05"),
    "VED": ("acc %", "77.74", "73.04"),
    "SAP": ("acc %", "71.75", "72.86"),
}
# The models of the report: (run folder, instruction kind). "fi": the fixed tag instruction.
MODELS = {
    "stage1": ("stage1", "nl"),  # fixed tags only, asked in natural language (Table 2)
    "decoupled": ("stage3", "nl"),  # stages 1 -> 2 -> 3 (Tables 2, 3, 6)
    "decoupled_fi": ("stage3", "fi"),  # the same model, asked with the fixed tags (Table 3)
    "joint": ("joint", "nl"),  # the ablation (Tables 2, 6)
}


# ----------------------------------------------------------------------------- training


def _done(folder: Path) -> bool:
    return (folder / "final" / "config.json").exists()


def _name(stage) -> str:
    """A training part's run folder: stage0, stage0-whisper, stage1, ..., joint."""
    return {"joint": "joint", "whisper": "stage0-whisper"}.get(stage, f"stage{stage}")


def train_part(
    stage: int | str, run_dir: Path, world: dict, seed: int, scale: float, threads: int, on_step=None
) -> None:
    """One train.py run into run_dir/<stage> on `threads` torch threads; `scale` shortens every
    schedule (tests); `on_step(step)`: train.run's hook."""
    joint, whisper, name = stage == "joint", stage == "whisper", _name(stage)
    sched = train.TOY[stage]
    steps = max(2, round(sched["steps"] * scale))
    argv = ["--stage", "3" if joint else "0" if whisper else str(stage), "--out", str(run_dir / name)]
    argv += ["--seed", str(seed)] + (["--part", "whisper"] if whisper else [])
    argv += ["--steps", str(steps), "--warmup", str(min(sched["warmup"], steps))]
    argv += ["--tokenizer", str(world["tokenizer"]), "--dev-data", str(world["dev"]), "--device", "cpu"]
    argv += ["--data", str(world["corpus"] if stage == 0 else world["train"])]
    if stage == 1 or joint:  # from the toy LLM and the toy Whisper (run_dir/stage0-whisper), a fresh adapter
        argv += ["--llm", str(run_dir / "stage0" / "final")]
    if joint:
        argv += ["--joint"]
    if scale < 1:
        argv += ["--eval-every", str(max(1, steps // 2)), "--eval-batches", "1", "--save-every", "0"]
    torch.set_num_threads(threads)
    shutil.rmtree(run_dir / name, ignore_errors=True)  # a half-done run starts again
    train.run(train.parse_args(argv), on_step)


def _threads_from(step0: int, threads: int):
    """train.run's hook: after step `step0`, train on `threads` torch threads."""

    def on_step(step: int) -> None:
        if step >= step0 and torch.get_num_threads() < threads:
            torch.set_num_threads(threads)

    return on_step


# ----------------------------------------------------------------------------- inference


def infer_and_score(model_dir: Path, test_list: Path, kind: str, out: Path, threads: int) -> dict:
    """infer.py over the test list (training layout, as the toy was trained; greedy), asked with
    each line's natural-language instruction (`nl`, a held-out phrasing) or the fixed tag string
    (`fi`), written to `out`; then ifr_eval.py's report of it."""
    import ifr_eval
    import infer

    torch.set_num_threads(threads)
    if not out.exists():
        model = IOSUMPangu.from_pretrained(model_dir, verbose=False)
        items = infer.read_items(test_list, fixed=kind == "fi")
        infer.decode_items(model, items, out, batch_size=32, layout="train", max_new_tokens=64)
    return ifr_eval.evaluate(ifr_eval.load_results(out))


# ----------------------------------------------------------------------------- one seed


def check_world(run_dir: Path, params: dict) -> None:
    """A run folder remembers the toy world it was trained on (`world.json`: toy.py's parameters).
    The rerun of a changed world (say, another --reading, or a new default) would skip the parts
    trained on the old one and report them as this world's: it stops instead, and says why."""
    record = run_dir / "world.json"
    if record.exists():
        was = json.loads(record.read_text(encoding="utf-8"))
        if was != params:
            changed = ", ".join(f"{k} {was.get(k)} -> {v}" for k, v in params.items() if was.get(k) != v)
            raise SystemExit(
                f"{run_dir} was trained on another toy world ({changed}; {record}): "
                "run with --fresh to train again, or give another --out"
            )
    elif trained := [d.name for d in sorted(run_dir.glob("*")) if _done(d)]:
        raise SystemExit(
            f"{run_dir} holds parts trained on a toy world it did not record ({', '.join(trained)}; no "
            f"{record.name}: trained before study.py recorded it): run with --fresh to train again, "
            "or give another --out"
        )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(record, json.dumps(params, indent=1) + "\n")


def _part_beside(stage, run_dir: Path, world: dict, seed: int, scale: float, threads: int, log: Path, done) -> None:
    """A training part in a process of its own, beside the main one: its output goes to `log`;
    it reports (seconds, None) or (None, the error) through `done`."""
    with open(log, "w", buffering=1) as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)  # C-level output too
        sys.stdout = sys.stderr = f
        t = time.time()
        try:
            train_part(stage, run_dir, world, seed, scale, threads)
            done.put((round(time.time() - t, 1), None))
        except BaseException as e:  # noqa: BLE001 (the parent says what failed, and where the log is)
            done.put((None, f"{type(e).__name__}: {e}"))


# Training parts, in the order they can run: two chains at a time, the second beside the first
# when there are two jobs (the toy Whisper beside the toy LLM; the ablation beside stages 1-3).
CHAINS = (((0,), ("whisper",)), ((1, 2, 3), ("joint",)))
# The toy LLM of stage 0 (600 steps, ~0.77 s each on one core) outlasts the toy Whisper beside it
# (~220 s): from this step it trains on both processes' threads (1.9x faster), ~110 s less a seed.
# A step, not "when the Whisper is done", so that a seed's weights never depend on timing: the
# thread count may change a kernel's rounding (not on the CPU measured: the same weights, README).
BOTH_CORES_FROM = {0: 280}


def run_seed(args, seed: int, run_dir: Path, world: dict, times: dict) -> dict:
    """Stages 0-3, the ablation, inference and scores for one training seed -> {model: report}."""

    # the seconds each part took when it ran, kept in the run folder so that a rerun that skips
    # the part still reports them
    record = run_dir / "times.json"
    took = json.loads(record.read_text()) if record.exists() else {}

    def keep(part: str, seconds: float) -> None:
        took[part] = seconds
        atomic_write(record, json.dumps(took, indent=1) + "\n")
        print(f"[study] seed {seed} {part}: {seconds:.1f} s", flush=True)

    def timed(part: str, fn):
        t = time.time()
        result = fn()
        keep(part, round(time.time() - t, 1))
        return result

    def train_chain(chain) -> None:
        for stage in chain:
            name = _name(stage)
            on_step = None
            if args.jobs > 1 and stage in BOTH_CORES_FROM:  # the part beside is done by then: its core too
                on_step = _threads_from(round(BOTH_CORES_FROM[stage] * args.scale), 2 * args.threads)
            if not _done(run_dir / name):
                timed(name, lambda s=stage, h=on_step: train_part(s, run_dir, world, seed, args.scale, args.threads, h))
            elif name in took:
                print(f"[study] seed {seed} {name}: done before ({took[name]:.1f} s)", flush=True)

    ctx = multiprocessing.get_context("spawn")
    for main_chain, (beside,) in CHAINS:
        name = _name(beside)
        child = None
        if args.jobs > 1 and not _done(run_dir / name):  # one single-stage chain beside the main one
            log, done = run_dir / f"{name}.log", ctx.SimpleQueue()
            run_dir.mkdir(parents=True, exist_ok=True)
            child = ctx.Process(
                target=_part_beside, args=(beside, run_dir, world, seed, args.scale, args.threads, log, done)
            )
            child.start()
            print(f"[study] seed {seed} {name}: training beside {_name(main_chain[0])} (its log: {log})", flush=True)
        try:
            train_chain(main_chain)
        except BaseException:  # a failed or interrupted main chain takes the part beside it down too
            if child is not None:
                child.terminate()
                child.join()
            raise
        if child is None:
            train_chain((beside,))
            continue
        child.join()
        seconds, error = done.get() if not done.empty() else (None, f"exit code {child.exitcode}")
        if error is not None:
            raise SystemExit(f"[study] seed {seed} {name} failed ({error}); its log: {log}")
        keep(name, seconds)
    reports = {}
    for name, (folder, kind) in MODELS.items():
        out = run_dir / "eval" / f"{name}.jsonl"
        model_dir = run_dir / folder / "final"
        run = functools.partial(infer_and_score, model_dir, world["test"], kind, out, args.threads)
        reports[name] = run() if out.exists() else timed(f"infer+eval {name}", run)  # decoded before: scores only
    for part, seconds in took.items():
        times[part] = round(times.get(part, 0.0) + seconds, 1)
    return reports


# ----------------------------------------------------------------------------- report


def headline(report: dict) -> dict:
    """The numbers of the tables, flat: IFR, tag accuracy and each task's metric."""
    m = report["metrics"]
    out = {"ifr": report["ifr"], "tag_acc": report["tag_acc"], "ifr_exec": report["ifr_exec"]}
    out["asr_wer"] = m["asr"].get("en", {}).get("wer")
    out["asr_cer_zh"] = m["asr"].get("zh", {}).get("cer")
    out["srwt_error_s"] = m.get("align", {}).get("mean_error_s")
    for tag, name in (
        ("<caption>", "ved"),
        ("<emotion>", "ser"),
        ("<style>", "ssr"),
        ("<gender>", "sgc"),
        ("<age>", "sap"),
    ):
        out[f"{name}_acc"] = m["labels"].get(tag, {}).get("acc")
    out["chat_acc"] = m.get("chat", {}).get("acc")
    return out


def _mean_spread(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_report(root: Path, per_seed: list[dict], times: dict, args, wall: float) -> dict:
    """report.json + report.md: the tables in the paper's layouts, toy beside paper."""
    import ifr_eval

    hardware = {
        "cpu": _cpu_name(),
        "threads": args.threads,
        "jobs": args.jobs,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    heads = [{name: headline(r) for name, r in reports.items()} for reports in per_seed]
    keys = list(heads[0]["decoupled"])
    seeds = {
        "n": len(per_seed),
        "seeds": [args.seed + i for i in range(len(per_seed))],
        "per_seed": heads,
        "mean": {n: {k: _mean([h[n][k] for h in heads]) for k in keys} for n in MODELS},
        "std": {n: {k: _std([h[n][k] for h in heads]) for k in keys} for n in MODELS},
    }
    report = {"models": per_seed[0], "time_s": times, "wall_s": wall, "hardware": hardware, "seeds": seeds}
    (root / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    ms = lambda name, key: _mean_spread([h[name][key] for h in heads])  # noqa: E731
    n_seeds = f"{len(per_seed)} seed{'s' if len(per_seed) > 1 else ''} (mean ± sd)"
    md = [f"# The toy study: {n_seeds}, test split (held-out speakers, held-out phrasings)", ""]
    md += [
        "## Table 2: IFR on natural-language instructions",
        "",
        "| model | toy IFR % | toy tag acc % | paper IFR % |",
    ]
    md += ["|---|---|---|---|"]
    paper = {"stage1": "-", "decoupled": PAPER_IFR["decoupled"], "joint": PAPER_IFR["joint"]}
    for name in ("stage1", "decoupled", "joint"):
        md.append(f"| {name} | {ms(name, 'ifr')} | {ms(name, 'tag_acc')} | {paper[name]} |")
    md.append(f"| Qwen2-Audio-Instruct | - | - | {PAPER_IFR['Qwen2-Audio-Instruct']} |")
    md += ["", "## Table 3: each task, fixed tag instruction (FI) vs natural language (NL), decoupled model", ""]
    md += [
        "| task | toy metric | toy FI | toy NL | paper metric | paper FI | paper NL |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = (
        ("ASR", "WER % (en)", "asr_wer"),
        ("ASR (zh)", "CER %", "asr_cer_zh"),
        ("SER", "acc %", "ser_acc"),
        ("SGC", "acc %", "sgc_acc"),
        ("SRWT", "mean start+end error s", "srwt_error_s"),
        ("SSR", "acc %", "ssr_acc"),
        ("VED", "acc %", "ved_acc"),
        ("SAP", "acc %", "sap_acc"),
        ("chat", "exact match %", "chat_acc"),
    )
    for task, metric, key in rows:
        p = PAPER_FI_NL.get(task, ("-", "-", "-"))
        md.append(
            f"| {task} | {metric} | {ms('decoupled_fi', key)} | {ms('decoupled', key)} | {p[0]} | {p[1]} | {p[2]} |"
        )
    md += ["", "## Table 6: direct joint training vs decoupled-then-integrated (same steps, same batches)", ""]
    md += [
        "| metric | joint (toy) | decoupled (toy) | gap | paper joint | paper decoupled |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (("IFR %", "ifr"), ("tag acc %", "tag_acc"), ("exec IFR %", "ifr_exec")):
        gap = _mean(
            [h["decoupled"][key] - h["joint"][key] for h in heads if None not in (h["decoupled"][key], h["joint"][key])]
        )
        paper_j, paper_d = (PAPER_IFR["joint"], PAPER_IFR["decoupled"]) if key == "ifr" else ("-", "-")
        gap_s = "-" if gap is None else f"{gap:+.2f}"
        md.append(f"| {label} | {ms('joint', key)} | {ms('decoupled', key)} | {gap_s} | {paper_j} | {paper_d} |")
    md += [
        "",
        "Joint (our reading of the paper's 'direct joint training'): from the stage-0 toy LLM and toy",
        "Whisper with a fresh adapter, adapter + LoRA (the toy Whisper frozen, as in stages 1 and 3)",
        "trained at once for s1 + s2 + s3 steps on the same batches the three stages see (train.py",
        "--joint, MixLoader), in a random order, LoRA at stage 3's lr and the speech side at stage 1's.",
        "",
    ]
    summed = f", summed over the {len(per_seed)} seeds" if len(per_seed) > 1 else ""
    md += [f"## Time (s{summed})", "", "| part | s |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in times.items()]
    md += [f"| all parts | {sum(times.values()):.1f} |", f"| wall (this command, {args.jobs} jobs) | {wall:.1f} |"]
    md += ["", f"Hardware: {hardware}", ""]
    md += ["## ifr_eval.py tables (first seed)", "", ifr_eval.tables_markdown(per_seed[0])]
    (root / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return report


def _mean(values: list):
    values = [v for v in values if v is not None]
    return round(statistics.mean(values), 3) if values else None


def _std(values: list):
    values = [v for v in values if v is not None]
    return round(statistics.stdev(values), 3) if len(values) > 1 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plot(root: Path, run_dirs: list[Path], per_seed: list[dict]) -> list[Path]:
    """Loss curves per stage, IFR per model, per-task FI vs NL (PNG). matplotlib is a test extra,
    not a runtime dependency: without it, no plots (said so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[study] matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    fig, axes = plt.subplots(1, 6, figsize=(24, 3.5))
    for ax, name in zip(axes, ("stage0", "stage0-whisper", "stage1", "stage2", "stage3", "joint")):
        log = run_dirs[0] / name / "log.jsonl"
        recs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], lw=0.6, alpha=0.6, label="train")
        dev = [r for r in recs if "dev_loss" in r]
        ax.plot([r["step"] for r in dev], [r["dev_loss"] for r in dev], "o-", label="dev")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    axes[0].set_ylabel("loss")
    fig.tight_layout()
    written.append(root / "loss_curves.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    heads = [{n: headline(r) for n, r in reports.items()} for reports in per_seed]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(MODELS)
    ifr = [[h[n]["ifr"] or 0 for h in heads] for n in names]
    ax.bar(names, [statistics.mean(v) for v in ifr], yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in ifr])
    ax.axhline(PAPER_IFR["decoupled"], ls="--", c="k", lw=0.8, label="paper decoupled 90.2")
    ax.axhline(PAPER_IFR["joint"], ls=":", c="k", lw=0.8, label="paper joint 51.5")
    ax.set_ylabel("IFR % (test)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(root / "ifr.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    keys = ["ved_acc", "ser_acc", "ssr_acc", "sgc_acc", "sap_acc", "chat_acc", "asr_wer"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = range(len(keys))
    for off, name in ((-0.2, "decoupled_fi"), (0.2, "decoupled")):
        ax.bar([i + off for i in x], [_mean([h[name][k] for h in heads]) or 0 for k in keys], width=0.4, label=name)
    ax.set_xticks(list(x), [k.replace("_acc", "").replace("_", " ").upper() for k in keys])
    ax.set_ylabel("% (WER: lower is better)")
    ax.legend()
    fig.tight_layout()
    written.append(root / "fi_vs_nl.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/toy", help="run folder of the first seed (others: <out>-seed<S>)")
    p.add_argument("--toy-dir", default="toy_data")
    p.add_argument("--seed", type=int, default=1234, help="training seed of the first run (the world's is fixed)")
    p.add_argument("--seeds", type=int, default=1, help="repeat the study with this many training seeds")
    p.add_argument("--fresh", action="store_true", help="delete the runs and start again")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared 2-core CPU)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="training processes at once (2: the toy Whisper beside the toy LLM, the ablation beside "
                   "stages 1-3), each with --threads")  # fmt: skip
    p.add_argument("--scale", type=float, default=1.0, help="multiply every schedule's steps (tests: 0.01)")
    p.add_argument("--world-size", type=int, nargs=3, metavar=("TRAIN", "DEV", "TEST"), default=WORLD_SIZE,
                   help="toy utterances per task combination and split")  # fmt: skip
    p.add_argument("--reading", type=int, default=READING_PER_TRAIN,
                   help="stage-0 reading lines: text-only utterances per train utterance (toy.py)")  # fmt: skip
    args = p.parse_args(argv)
    root = Path(args.out)
    run_dirs = [root if i == 0 else root.with_name(f"{root.name}-seed{args.seed + i}") for i in range(args.seeds)]
    if args.fresh:
        for d in run_dirs:
            shutil.rmtree(d, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.time()
    n_train, n_dev, n_test = args.world_size
    world = ensure_toy_world(args.toy_dir, n_train=n_train, n_dev=n_dev, n_test=n_test, reading=args.reading)
    times["toy world"] = round(time.time() - t, 1)
    for d in run_dirs:
        check_world(d, toy_params_at(world["root"]))
    per_seed = [run_seed(args, args.seed + i, d, world, times) for i, d in enumerate(run_dirs)]
    report = write_report(root, per_seed, times, args, wall=round(time.time() - t, 1))
    plots = plot(root, run_dirs, per_seed)
    print((root / "report.md").read_text(encoding="utf-8"))
    print(f"[study] wrote {root / 'report.md'}, {root / 'report.json'}" + "".join(f", {q}" for q in plots))
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    print(f"[study] time: {parts}; parts summed {sum(times.values()):.0f} s, wall {report['wall_s']:.0f} s")
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
