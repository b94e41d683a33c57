"""Which held-out words lose the intent? A model's tags for many held-out phrasings, asked as text.

A dev or test phrasing is a frame of its split around clauses whose slots hold train words and the
split's own synonyms (tasks.LEXICON). This draws PER_COMBO phrasings of the split per task
combination and language (a fixed seed, the same for every model), asks each model for their
tags as stage-2 text intents (greedy, only the leading tags compared exactly, as ifr_eval.py's
intent rule), and prints the % right per model, then (the models' mean) by how many held-out words
a phrasing has, by frame, and by held-out word. It reads no audio: the text skill that stages 2
and 3 teach, which the speech IFR stands on ("Where the Table-6 gap went" in docs/study/limits.md).

    python bench/words.py runs/toy*/stage2/final                   # the study's stage-2 models, dev
    python bench/words.py --split test runs/toy/stage3/final

Measured (the study's 3 seeds, dev, 2-core Intel Xeon): see docs/study/limits.md.
"""

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from intents import as_intent, ask  # noqa: E402  (bench/intents.py)
from phrasings import find_frame  # noqa: E402  (bench/phrasings.py)

import tasks  # noqa: E402
from model import IOSUMPangu  # noqa: E402

PER_COMBO = 40  # phrasings per task combination and language


def draw(split: str, seed: int = 0) -> list[tuple[tuple, str, str]]:
    """(tags, language, phrasing) rows: PER_COMBO of the split's phrasings per combination and language."""
    rng, rows = np.random.default_rng(seed), []
    for tags in tasks.TASK_COMBOS:
        for lang in ("en", "zh"):
            phrasings = tasks._phrasings(tags, lang, split)
            for i in rng.choice(len(phrasings), size=min(PER_COMBO, len(phrasings)), replace=False):
                rows.append((tags, lang, phrasings[int(i)]))
    return rows


def held_out_words(lang: str, split: str, phrasing: str) -> list[str]:
    """The split's own lexicon words (no train phrasing has them) in the phrasing, as CONCEPT:word."""
    i = tasks.SPLITS.index(split)
    return [
        f"{concept}:{w}"
        for concept, words in tasks.LEXICON[lang].items()
        for w in words[i]
        if w not in words[0] and w in phrasing
    ]


def table(title: str, keys: list[list[str]], right: np.ndarray) -> None:
    groups = defaultdict(list)
    for ks, r in zip(keys, right):
        for k in ks:
            groups[k].append(r)
    print(f"\n{title}\n| % right | phrasings | |\n| ---: | ---: | --- |")
    for k, v in sorted(groups.items(), key=lambda kv: np.mean(kv[1])):
        print(f"| {100 * np.mean(v):.1f} | {len(v)} | {k} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="I-OSUM-Pangu checkpoint folders")
    p.add_argument("--split", default="dev", choices=["dev", "test"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = draw(args.split)
    print(f"{args.split}: {len(rows)} phrasings asked as text intents")
    right = []
    for name in args.models:
        got = ask(IOSUMPangu.from_pretrained(name, verbose=False), [as_intent(q) for _, _, q in rows], batch=64)
        right.append([g == tags for g, (tags, _, _) in zip(got, rows)])
        print(f"{name}: {100 * np.mean(right[-1]):.1f} % right", flush=True)
    mean = np.mean(right, axis=0)
    words = [held_out_words(lang, args.split, q) for _, lang, q in rows]
    table("by held-out words in the phrasing", [[f"{len(w)}"] for w in words], mean)
    table("by frame", [[f"{lang} {find_frame(q, len(t), args.split)}"] for t, lang, q in rows], mean)
    table("by held-out word", [w or ["(none)"] for w in words], mean)


if __name__ == "__main__":
    main()
