"""How much of the FI -> NL change is the IFR's? Each task's metric on three sets of lines.

Table 3 asks the same model twice: with the fixed tag string (FI) and with a held-out
natural-language instruction (NL). A line whose tags come out wrong usually loses its answer
too (no transcript after a missing `<asr>`, no label after a missing `<age>`), so the NL column
holds the IFR's loss besides any loss in doing the task. This scores (ifr_eval.py's metrics,
the lines of all the files pooled) the FI lines, every NL line, and the NL lines whose intent
tags are right (ifr_eval.py's intent rule): if the last row is near FI, what the NL column
loses is the instruction, not the task. It runs no model.

    python bench/fi_nl.py runs/toy*/eval             # the study's eval folders, one per seed

Measured (the study's 6 seeds, test, 2-core Intel Xeon): see docs/study/limits.md.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ifr_eval  # noqa: E402
import study  # noqa: E402
import tasks  # noqa: E402

COLUMNS = ("asr_wer", "ser_acc", "sgc_acc", "ssr_acc", "ved_acc", "sap_acc", "srwt_error_s", "chat_acc")


def tags_right(record: dict) -> bool:
    """ifr_eval.py's intent rule on one results line (an unreadable line: False)."""
    try:
        tags, _ = ifr_eval._gold(record)
    except (KeyError, tasks.BadSample):
        return False
    finished = record.get("finished", True) is not False
    verdict = ifr_eval.judge(record.get("output") or "", tags, finished, record.get("error"))
    return verdict["rules"]["intent"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("evals", nargs="+", type=Path, help="folders holding decoupled.jsonl and decoupled_fi.jsonl")
    p.add_argument("--model", default="decoupled", help="the results' name in each folder (NL; FI: NAME_fi)")
    args = p.parse_args()
    files = {kind: [d / f"{args.model}{kind}.jsonl" for d in args.evals] for kind in ("_fi", "")}
    missing = [str(f) for fs in files.values() for f in fs if not f.is_file()]
    if missing:
        p.error(f"no results file {', '.join(missing)} (python study.py writes them under runs/toy*/eval)")
    fi, nl = ([r for f in files[kind] for r in ifr_eval.load_results(f)] for kind in ("_fi", ""))
    rows = [("FI", fi), ("NL", nl), ("NL, tags right", [r for r in nl if tags_right(r)])]
    print("| lines | n | " + " | ".join(COLUMNS) + " |")
    print("| --- | ---: |" + " ---: |" * len(COLUMNS))
    for name, records in rows:
        h = study.headline(ifr_eval.evaluate(records))
        cells = ["-" if h[k] is None else f"{h[k]:.2f}" if k == "srwt_error_s" else f"{h[k]:.1f}" for k in COLUMNS]
        print(f"| {name} | {len(records)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
