"""Scoring a results.jsonl written by infer.py: instruction-following rate (IFR) and task metrics.

The paper (I-OSUM-Pangu) reports IFR = correctly executed instructions / all instructions x 100
but publishes no rule for "correct" (docs/release.md §8). Ours, applied by `judge`: an output is
read by tasks.parse_output into its leading intent tags T, the body B, B's trailing label run L
and the text C = B without L. Every line of the list counts (N); a line with an error, an empty
output or an unfinished decode (no eos before the token limit) is not followed. A line is
followed when all five rules hold:
  intent      T has no repeated tag and, as a set, equals the gold tags of the line's task;
  labels      each requested label task has exactly one label of its own set in L (`<OTHER>`
              stands for one task whose set has it), no other label, and no other `<...>` token
              in C than timestamps (a label or tag inside the text counts as stray);
  content     with `<asr>`, C has a letter or digit once tokens are removed; with label tasks
              only, C is empty;
  timestamps  with `<align>`, C is one or more `word<start,end>` units (seconds, 0 <= start <=
              end, starts non-decreasing); without it, C has no `<numbers>` token;
  chat        with `<chat>`, C is not empty.
`tag_acc` is the intent rule alone (an unfinished line is judged on its tags; errored, empty and
unreadable lines are wrong); `ifr_exec` is the other four with the gold tags (for models that
write no tags). Failures count lines per rule: a line stopped by a gate (error, empty,
unfinished; unreadable for a bad JSON line or task) counts there only; any other line counts
under every rule it breaks. Content accuracy is not part of IFR.

Task metrics (every line that asks for the task, errored, empty and unfinished ones included;
the gold is `target`, else tasks.make_target of `txt`; a line with neither is not scored):
  text normalisation: NFKC, lower case, every `<...>` token (tags, labels, timestamps) removed,
  apostrophes deleted, other Unicode punctuation (category P) -> space, whitespace collapsed;
  English is split into words, Chinese into characters (Latin words inside Chinese stay whole).
  A line is Chinese when results give lang "zh", else when its reference has a Han character.
  ASR: WER (English) and CER (Chinese) with jiwer, pooled over the corpus (edits / reference
  units), over every line whose gold tags include `<asr>` (ASR, ASR+X, SRWT); an errored or
  empty line scores as an empty hypothesis; a reference empty after normalisation is skipped.
  Labels: accuracy per label task; the prediction is the label assigned by tasks.read_labels,
  else the only label of the task's set in L; a missing or ambiguous label is wrong.
  SRWT: reference and output words (normalised) are aligned by jiwer's Levenshtein alignment;
  on matched words only, mean |start - start'| + |end - end'| in seconds; `aligned` = matched
  words / reference words. Chat: exact match of the normalised answer.
Needs jiwer (pip install jiwer) for the metrics; `judge` alone does not.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import tasks

GATES = ("error", "empty", "unfinished")  # a line stopped by one of these is judged no further
RULES = ("intent", "labels", "content", "timestamps", "chat")
FAILURES = ("unreadable",) + GATES + RULES
BAD_LINE = "_bad_line"  # load_results' placeholder for a line that is not a JSON object

# ----------------------------------------------------------------------------- the rule


def judge(output: str | None, gold_tags, finished: bool = True, error: str | None = None) -> dict:
    """One line's verdict: `gold_tags` is a tag tuple or a task string ('<TRANSCRIBE> <AGE>').

    Returns {'tags', 'labels', 'text'} (tasks.parse_output), 'rules' {rule: bool} for the five
    rules, 'gate' (None, 'error', 'empty' or 'unfinished'), 'executed' (rules 2-5 and no gate),
    'followed' (all five and no gate) and 'failures' (the gate, else the rules broken)."""
    gold = tasks.parse_task(gold_tags) if isinstance(gold_tags, str) else tuple(gold_tags)
    out = tasks.parse_output(output or "")
    text = out["text"]
    rules = {"intent": len(set(out["tags"])) == len(out["tags"]) and set(out["tags"]) == set(gold)}
    stray = [t for t in tasks.TOKEN.findall(text) if not tasks.STAMP_LIKE.fullmatch(t)]
    rules["labels"] = not stray and tasks.read_labels(gold, out["labels"]) is not None
    if "<asr>" in gold:
        rules["content"] = any(c.isalnum() for c in tasks.TOKEN.sub(" ", text))
    elif "<chat>" in gold:
        rules["content"] = True  # the chat rule judges it
    else:
        rules["content"] = text == ""
    if "<align>" in gold:
        units = tasks.split_stamps(text) or []
        starts = [s for _, s, _ in units]
        rules["timestamps"] = bool(units) and all(0 <= s <= e for _, s, e in units) and starts == sorted(starts)
    else:
        rules["timestamps"] = not tasks.STAMP_LIKE.search(text)
    rules["chat"] = "<chat>" not in gold or text != ""
    gate = "error" if error else "empty" if not (output or "").strip() else None if finished else "unfinished"
    executed = gate is None and all(rules[r] for r in RULES[1:])
    return {
        **{k: out[k] for k in ("tags", "labels", "text")},
        "rules": rules,
        "gate": gate,
        "executed": executed,
        "followed": executed and rules["intent"],
        "failures": [gate] if gate else [r for r in RULES if not rules[r]],
    }


# ----------------------------------------------------------------------------- normalisation

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"


def normalise(text: str) -> str:
    """NFKC, lower case, `<...>` tokens removed, apostrophes deleted, punctuation -> space."""
    text = tasks.TOKEN.sub(" ", unicodedata.normalize("NFKC", text).lower())
    text = re.sub("['\u2019]", "", text)
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def units(text: str, lang: str) -> list[str]:
    """The units an error rate counts: words (en), Han characters and other words (zh)."""
    text = normalise(text)
    return re.findall(rf"[{_HAN}]|[^\s{_HAN}]+", text) if lang == "zh" else text.split()


def text_lang(text: str) -> str:
    """'zh' if the text holds a Han character, else 'en'."""
    return "zh" if re.search(f"[{_HAN}]", text) else "en"


def _lang(record: dict, reference: str) -> str:
    if record.get("lang") in ("en", "zh"):
        return record["lang"]
    return text_lang(reference)


def _jiwer():
    try:
        import jiwer
    except ImportError as e:
        raise ImportError("ifr_eval.py needs jiwer for WER/CER and word alignment: pip install jiwer") from e
    return jiwer


# ----------------------------------------------------------------------------- one results file


def load_results(path: str | Path) -> list[dict]:
    """results.jsonl -> records; a line that is not a JSON object becomes {BAD_LINE: why}, which
    evaluate counts as an unreadable line (blank lines are skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                record = {BAD_LINE: f"{path}:{i}: {e.msg}"}
            if not isinstance(record, dict):
                record = {BAD_LINE: f"{path}:{i}: not a JSON object"}
            records.append(record)
    return records


def _gold(record: dict) -> tuple[tuple[str, ...], dict | None]:
    """(gold tags, parsed gold target or None); raises BadSample/KeyError for an unreadable line."""
    if BAD_LINE in record:
        raise KeyError(record[BAD_LINE])
    target = record.get("target")
    if "task" in record:
        tags = tasks.parse_task(record["task"])
    elif isinstance(target, str):
        tags = tasks.parse_output(target)["tags"]
    else:
        raise KeyError("neither task nor target")
    if not isinstance(target, str):
        fields = {k: record[k] for k in tasks.FIELD_KEYS if isinstance(record.get(k), str)}
        try:
            target = tasks.make_target(tags, str(record.get("txt", "")), fields)
        except tasks.BadSample:
            return tags, None  # judged for IFR, not scored for content
    return tags, tasks.parse_output(target)


def _predicted_labels(tags: tuple[str, ...], labels: tuple[str, ...]) -> dict[str, str]:
    assigned = tasks.read_labels(tags, labels)
    if assigned is not None:
        return assigned
    out = {}
    for tag in (t for t in tags if t in tasks.LABELS):
        own = [label for label in labels if label in tasks.LABELS[tag]]
        if len(own) == 1:
            out[tag] = own[0]
    return out


def _stamped_words(text: str, lang: str) -> list[tuple[str, float, float]]:
    """The `word<start,end>` units of a text, words normalised (units without a word dropped)."""
    out = [("".join(units(w, lang)), s, e) for w, s, e in tasks.find_stamps(text)]
    return [u for u in out if u[0]]


def _matched_words(jiwer, ref: list, hyp: list) -> list[tuple]:
    """(reference unit, output unit) pairs of the words jiwer's Levenshtein alignment matches."""
    alignment = jiwer.process_words(" ".join(w for w, _, _ in ref), " ".join(w for w, _, _ in hyp))
    pairs = []
    for chunk in alignment.alignments[0]:
        if chunk.type == "equal":
            pairs += zip(ref[chunk.ref_start_idx : chunk.ref_end_idx], hyp[chunk.hyp_start_idx : chunk.hyp_end_idx])
    return pairs


def _pct(k: float, n: int) -> float | None:
    return round(100 * k / n, 2) if n else None


def evaluate(records: list[dict]) -> dict:
    """Records of one results.jsonl -> the report (percentages 0-100; see the module docstring)."""
    jiwer = _jiwer()
    failures = Counter({f: 0 for f in FAILURES})
    totals, combos = Counter(), {}
    refs, hyps = {"en": [], "zh": []}, {"en": [], "zh": []}
    align = Counter()
    align_error = 0.0
    labels, chat, unscored, skipped = {}, Counter(), 0, 0
    for record in records:
        totals["n"] += 1
        try:
            tags, gold = _gold(record)
        except (KeyError, tasks.BadSample):
            failures["unreadable"] += 1
            continue
        output = record.get("output") if isinstance(record.get("output"), str) else ""
        v = judge(output, tags, finished=record.get("finished", True) is not False, error=record.get("error"))
        failures.update(v["failures"])
        counts = combos.setdefault("".join(tags), Counter())
        for c in (totals, counts):
            c["lines"] += 1
            c["followed"] += v["followed"]
            c["executed"] += v["executed"]
            c["tags_right"] += v["rules"]["intent"] and v["gate"] in (None, "unfinished")
        if gold is None:
            unscored += 1
            continue
        usable = v["gate"] in (None, "unfinished")
        text = v["text"] if usable else ""
        lang = _lang(record, gold["text"])
        if "<asr>" in tags:
            ref = units(gold["text"], lang)
            if ref:
                refs[lang].append(" ".join(ref))
                hyps[lang].append(" ".join(units(text, lang)))
            else:
                skipped += 1
        if "<align>" in tags:
            ref = _stamped_words(gold["text"], lang)
            if ref:
                pairs = _matched_words(jiwer, ref, _stamped_words(text, lang))
                align.update(lines=1, words=len(ref), matched=len(pairs))
                align_error += sum(abs(r[1] - h[1]) + abs(r[2] - h[2]) for r, h in pairs)
        gold_labels = tasks.read_labels(tags, gold["labels"]) or {}
        predicted = _predicted_labels(tags, v["labels"]) if usable else {}
        for tag in (t for t in tags if t in tasks.LABELS):
            if tag in gold_labels:
                c = labels.setdefault(tag, Counter())
                c["n"] += 1
                c["correct"] += predicted.get(tag) == gold_labels[tag]
        if "<chat>" in tags:
            answer = units(gold["text"], lang)
            chat["n"] += 1
            chat["correct"] += bool(answer) and units(text, lang) == answer
    metrics = {"asr": {}}
    for lang, rate in (("en", "wer"), ("zh", "cer")):
        if refs[lang]:
            o = jiwer.process_words(refs[lang], hyps[lang])
            n_ref = o.hits + o.substitutions + o.deletions
            errors = o.substitutions + o.deletions + o.insertions
            unit = "words" if lang == "en" else "chars"
            metrics["asr"][lang] = {"lines": len(refs[lang]), unit: n_ref, "errors": errors, rate: _pct(errors, n_ref)}
    metrics["asr"]["skipped"] = skipped
    if align["lines"]:
        metrics["align"] = {
            **align,
            "aligned": _pct(align["matched"], align["words"]),
            "mean_error_s": round(align_error / align["matched"], 4) if align["matched"] else None,
        }
    metrics["labels"] = {
        tag: {**labels[tag], "acc": _pct(labels[tag]["correct"], labels[tag]["n"])}
        for tag in tasks.LABELS
        if tag in labels
    }
    if chat["n"]:
        metrics["chat"] = {**chat, "acc": _pct(chat["correct"], chat["n"])}
    metrics["unscored"] = unscored
    order = ["".join(t) for t in tasks.TASK_COMBOS]
    n = totals["n"]
    return {
        "n": n,
        "ifr": _pct(totals["followed"], n),
        "tag_acc": _pct(totals["tags_right"], n),
        "ifr_exec": _pct(totals["executed"], n),
        "by_combo": {
            combo: {
                "n": c["lines"],
                "ifr": _pct(c["followed"], c["lines"]),
                "tag_acc": _pct(c["tags_right"], c["lines"]),
                "ifr_exec": _pct(c["executed"], c["lines"]),
            }
            for combo, c in sorted(combos.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else 99, kv[0]))
        },
        "failures": dict(failures),
        "bad_lines": sum(BAD_LINE in r for r in records),
        "metrics": metrics,
    }


# ----------------------------------------------------------------------------- tables

# Table 3 of the paper: one row per task, one column per run (fixed vs natural-language instruction).
TASK_ROWS = (
    ("ASR (WER %, en)", lambda m: m["asr"].get("en", {}).get("wer"), "{:.2f}"),
    ("ASR (CER %, zh)", lambda m: m["asr"].get("zh", {}).get("cer"), "{:.2f}"),
    ("SRWT (mean start + end error, s)", lambda m: m.get("align", {}).get("mean_error_s"), "{:.3f}"),
    ("SRWT (words aligned %)", lambda m: m.get("align", {}).get("aligned"), "{:.2f}"),
    ("VED (acc %)", lambda m: m["labels"].get("<caption>", {}).get("acc"), "{:.2f}"),
    ("SER (acc %)", lambda m: m["labels"].get("<emotion>", {}).get("acc"), "{:.2f}"),
    ("SSR (acc %)", lambda m: m["labels"].get("<style>", {}).get("acc"), "{:.2f}"),
    ("SGC (acc %)", lambda m: m["labels"].get("<gender>", {}).get("acc"), "{:.2f}"),
    ("SAP (acc %)", lambda m: m["labels"].get("<age>", {}).get("acc"), "{:.2f}"),
    ("chat (exact match %)", lambda m: m.get("chat", {}).get("acc"), "{:.2f}"),
)


def _cell(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def tables_markdown(reports: dict[str, dict]) -> str:
    """{run name: report} -> markdown: IFR per model (Table 2), task metrics per run (Table 3),
    IFR / tag accuracy / exec IFR side by side (Table 6), IFR per task combination, failures."""
    names = list(reports)
    parts = [
        "### IFR per model (Table 2)",
        _table(["model", "n", "IFR %"], [[k, str(r["n"]), _cell(r["ifr"])] for k, r in reports.items()]),
    ]
    rows = []
    for label, get, fmt in TASK_ROWS:
        values = [get(r["metrics"]) for r in reports.values()]
        if any(v is not None for v in values):
            rows.append([label] + [_cell(v, fmt) for v in values])
    parts += ["### Task metrics (Table 3)", _table(["task"] + names, rows)]
    ablation = [
        [label] + [_cell(r[key]) for r in reports.values()]
        for label, key in (("IFR %", "ifr"), ("tag acc %", "tag_acc"), ("exec IFR % (gold tags)", "ifr_exec"))
    ]
    parts += ["### IFR, tag accuracy, execution (Table 6)", _table(["metric"] + names, ablation)]
    combos = list(dict.fromkeys(c for r in reports.values() for c in r["by_combo"]))
    rows = []
    for combo in combos:
        cells = [r["by_combo"].get(combo) for r in reports.values()]
        rows.append([f"`{combo}`"] + ["-" if c is None else f"{_cell(c['ifr'])} ({c['n']})" for c in cells])
    parts += ["### IFR % per task combination (lines)", _table(["tags"] + names, rows)]
    rows = [[rule] + [str(r["failures"].get(rule, 0)) for r in reports.values()] for rule in FAILURES]
    parts += ["### Failures (lines per rule)", _table(["rule"] + names, rows)]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="IFR and task metrics of infer.py's results.jsonl")
    p.add_argument("results", nargs="+", help="results.jsonl, or NAME=results.jsonl for side-by-side tables")
    p.add_argument("--json", type=Path, help="write the report (several runs: {'models': {NAME: report}})")
    args = p.parse_args(argv)
    runs = {}
    for arg in args.results:
        name, _, path = arg.partition("=") if "=" in arg and not Path(arg).exists() else (Path(arg).stem, "", arg)
        if name in runs:
            p.error(f"two runs named {name!r}")
        if not Path(path).is_file():
            p.error(f"no results file {path}")
        runs[name] = Path(path)
    reports = {}
    for name, path in runs.items():
        reports[name] = evaluate(load_results(path))
        if reports[name]["bad_lines"]:
            print(
                f"{path}: {reports[name]['bad_lines']} lines are not JSON objects (counted as unreadable)",
                file=sys.stderr,
            )
    print(tables_markdown(reports), end="")
    if args.json:
        out = next(iter(reports.values())) if len(reports) == 1 else {"models": reports}
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return reports


if __name__ == "__main__":
    main()
