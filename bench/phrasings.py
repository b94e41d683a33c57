"""Which phrasings lose the IFR? The intent rule of results files, per instruction frame.

Each natural-language instruction of the toy is a politeness frame of its split around one
clause per tag (tasks.FRAMES, tasks.CLAUSES): "Can you help me {a}?", "First {a}; after that,
{b}.". This reads results files (infer.py's output, such as the study's
`runs/toy*/eval/decoupled.jsonl`), finds each line's frame among the split's frames for its
tag count and its instruction's language, and prints per frame the lines and the % whose
leading tags are right (ifr_eval.py's intent rule), one column per file (the seeds) and their
mean; then the wrong lines by kind: a tag added to the gold ones (and which), a gold tag
dropped, or other. Lines asked with the fixed tag string are left out. It runs no model.

    python bench/phrasings.py runs/toy*/eval/decoupled.jsonl                  # test frames
    python bench/phrasings.py --split dev DEV_RESULTS.jsonl

Measured (the study's 3 seeds, test, 2-core AMD EPYC): see docs/study/limits.md.
"""

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ifr_eval  # noqa: E402
import tasks  # noqa: E402


def frame_pattern(frame: str) -> re.Pattern:
    """A frame ('Please {a} and {b}.') as a pattern that matches its fillings."""
    parts = re.split(r"\{[aAbB]\}", frame)
    return re.compile("(.+)".join(re.escape(p) for p in parts), re.DOTALL)


def find_frame(instruction: str, n_tags: int, split: str) -> str:
    """The split's frame of an instruction of n_tags clauses; the longest that fits when several
    do (a bare '{A}.' fits every sentence); '?' when none."""
    frames = tasks.FRAMES[ifr_eval.text_lang(instruction)].get(n_tags, ((), (), ()))[tasks.SPLITS.index(split)]
    fits = [f for f in frames if frame_pattern(f).fullmatch(instruction)]
    return max(fits, key=len) if fits else "?"


def error_kind(got: tuple, gold: tuple) -> str:
    """'+<tag>' (the gold tags and one more), '-<tag>' (one gold tag missing) or 'other'."""
    extra, missing = set(got) - set(gold), set(gold) - set(got)
    if len(extra) == 1 and not missing and len(got) == len(gold) + 1:
        return f"+{extra.pop()}"
    if len(missing) == 1 and not extra and got:
        return f"-{missing.pop()}"
    return "other"


def by_frame(records: list[dict], split: str) -> dict[str, dict]:
    """{frame: {'lines', 'right', 'errors': Counter of error kinds}} of one results file."""
    out: dict[str, dict] = {}
    for r in records:
        instruction = r.get("instruction") or ""
        if not instruction or instruction.startswith("<"):  # the fixed tag string
            continue
        gold = tasks.parse_task(r["task"])
        got = ifr_eval.judge(r.get("output"), gold, r.get("finished", True) is not False, r.get("error"))
        row = out.setdefault(find_frame(instruction, len(gold), split), {"lines": 0, "right": 0, "errors": Counter()})
        row["lines"] += 1
        if got["rules"]["intent"]:
            row["right"] += 1
        else:
            row["errors"][error_kind(got["tags"], gold)] += 1
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="infer.py results files (one per seed)")
    p.add_argument("--split", default="test", choices=tasks.SPLITS, help="the split whose frames the lines use")
    args = p.parse_args()
    tables = [by_frame(ifr_eval.load_results(f), args.split) for f in args.results]
    frames = sorted({f for t in tables for f in t}, key=lambda f: (f.isascii() is False, f))
    print(
        f"| frame ({args.split}) | lines | "
        + " | ".join(f"file {i + 1} %" for i in range(len(tables)))
        + " | mean % | wrong: kinds |"
    )
    print("| --- | ---: |" + " ---: |" * (len(tables) + 1) + " --- |")
    for f in frames:
        rows = [t.get(f, {"lines": 0, "right": 0, "errors": Counter()}) for t in tables]
        pct = [100 * r["right"] / r["lines"] if r["lines"] else float("nan") for r in rows]
        errors = sum((r["errors"] for r in rows), Counter())
        kinds = ", ".join(f"{k} {n}" for k, n in errors.most_common(3))
        lines = (
            "/".join(str(r["lines"]) for r in rows) if len({r["lines"] for r in rows}) > 1 else str(rows[0]["lines"])
        )
        print(f"| {f} | {lines} | " + " | ".join(f"{x:.1f}" for x in pct) + f" | {sum(pct) / len(pct):.1f} | {kinds} |")
    for i, f in enumerate(args.results):
        print(f"file {i + 1}: {f}")


if __name__ == "__main__":
    main()
