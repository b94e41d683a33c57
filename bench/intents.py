"""Where is the IFR lost? A model's intent tags on the dev split, asked five ways.

1. `text set`: the split's stage-2 text-intent set (tasks.intent_samples), as stage 2 is taught;
2. `as text`: the dev speech lines' own instructions, asked as text intents (no audio);
3. `with speech`: the same instructions with their line's audio (the study's NL condition);
4. `other audio`: the same instructions, each with another line's audio (a fixed permutation);
5. `silence`: the same instructions, each with silence as long as its line's audio;
and `first tag`: with their speech, only the first tag compared (the rest of the loss is in the
second tag, missing, extra or wrong).
Ways 2 and 3 differ only in the speech prompt around the same instructions, so their gap is
what the step from text to speech costs; ways 3-5 tell whether it is the audio's content or
the speech prompt itself (`follow the audio's task`: lines whose tags with another line's audio
are that line's, not their own).
Only the leading tags are decoded and compared (exactly, as ifr_eval.py's intent rule), with
the study's decoding (greedy, training layout).

    python bench/intents.py                                                  # runs/toy/stage3/final
    python bench/intents.py --model runs/toy/stage2/final runs/toy/joint/final

Measured (toy study, 3 seeds, 2-core AMD EPYC): see docs/study/limits.md.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
import ifr_eval  # noqa: E402
import infer  # noqa: E402
import tasks  # noqa: E402
from model import IOSUMPangu  # noqa: E402
from toy import toy_paths  # noqa: E402

TAG_TOKENS = 4  # enough new tokens for the leading tags (each tag is one piece of the tokenizer)


def ask(model: IOSUMPangu, instructions: list[str], audio: list | None = None, batch: int = 32) -> list[tuple]:
    """The leading tags the model writes for each instruction (with audio[i] if given)."""
    out = []
    for b in range(0, len(instructions), batch):
        speech = None if audio is None else audio[b : b + batch]
        texts, _ = model.generate(
            audio=speech, instruction=instructions[b : b + batch], layout="train", max_new_tokens=TAG_TOKENS
        )
        out += [tasks.parse_output(t)["tags"] for t in texts]
    return out


def as_intent(instruction: str) -> str:
    """A speech instruction as a stage-2 text-intent query, in its own language."""
    return f"{tasks.INTENT_ASK[ifr_eval.text_lang(instruction)]}:{instruction}"


def share(got: list, want: list) -> float:
    """% of rows whose tags are the wanted ones."""
    return 100 * sum(g == w for g, w in zip(got, want)) / len(want)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["runs/toy/stage3/final"])
    p.add_argument("--toy-dir", default="toy_data", help="the toy world (its dev list)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = toy_paths(args.toy_dir)["dev"]
    items = [it for it in infer.read_items(dev) if it.get("error") is None]
    gold = [tasks.parse_output(it["target"])["tags"] for it in items]
    audio = [data.decode_audio(it["sample"]) for it in items]
    perm = np.random.default_rng(0).permutation(len(items))  # the same for every model
    intents = tasks.intent_samples("dev")
    intent_gold = [tuple(s["tags"]) for s in intents]
    print(f"dev: {len(intents)} text intents, {len(items)} speech lines ({dev})")
    cols = ["text set", "as text", "with speech", "other audio", "silence", "first tag"]
    print("| model | " + " | ".join(f"{c} %" for c in cols) + " | follow the audio's task |")
    print("| --- |" + " ---: |" * (len(cols) + 1))
    for name in args.model:
        model = IOSUMPangu.from_pretrained(name, verbose=False)
        text_set = ask(model, [s["instruction"] for s in intents])
        as_text = ask(model, [as_intent(it["instruction"]) for it in items])
        with_speech = ask(model, [it["instruction"] for it in items], audio)
        other = ask(model, [it["instruction"] for it in items], [audio[j] for j in perm])
        silence = ask(model, [it["instruction"] for it in items], [torch.zeros_like(a) for a in audio])
        first = share([t[:1] for t in with_speech], [t[:1] for t in gold])
        follow = sum(o == gold[j] != g for o, j, g in zip(other, perm, gold))
        print(
            f"| {name} | {share(text_set, intent_gold):.1f} | {share(as_text, gold):.1f}"
            f" | {share(with_speech, gold):.1f} | {share(other, gold):.1f} | {share(silence, gold):.1f}"
            f" | {first:.1f} | {follow} / {len(items)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
