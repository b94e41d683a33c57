"""Can the toy LLM read a speech span? The diagnostic behind the stage-0 bullets of docs/study/limits.md.

Two measurements on the dev utterances of a toy world, both with the *exact* stage-0 frames
(`toy.heard_span`: no audio, no adapter), asked with the fixed tag instruction in the speech
prompt's layout, decoded greedily:

    python bench/reading.py --model runs/toy/stage0/final      # a trained toy LLM: WER + label accuracy
    python bench/reading.py --fresh --lr 1e-3 --steps 300      # a fresh toy LLM taught to read, nothing else

`--fresh` trains a new toy Pangu (the `toy` preset) on reading lines alone: fresh text-only train
utterances each step (drawn as toy.py draws the train split's, train speakers only), the `<asr>`
instruction, the loss on the answer only, one line a row (no packing), and prints the dev WER
every 50 steps. It tells whether a setting (learning rate, frame format) lets a toy LLM learn to
read at all, apart from stage 0's data mix.

With `--model` it also asks `<asr><align>` (the timestamps' error as ifr_eval.py's SRWT
scores it, against the frames' own times rounded as the data writes them), `<chat>` of fresh
spoken questions of the dev speakers ("what is two plus four", drawn as toy.py draws the chat
task's, text-only: exact frames again), and every arithmetic fact of the stage-0 corpus as
plain text ("what is two plus four ?"): whether the toy LLM answers a question it reads, and
whether it knows the answer at all.

Measured (2-core AMD EPYC, one thread, seed 0): see docs/study/limits.md.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jiwer  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import ifr_eval  # noqa: E402
import toy  # noqa: E402
from model import PATTERN2, SYSTEM_SPEECH, pattern1, tokenizer_in  # noqa: E402
from pangu import IGNORE_ID, Pangu, PanguConfig, lm_loss, load_pangu  # noqa: E402
from tokenizer import PanguTokenizer  # noqa: E402

LABEL_KEYS = {"<emotion>": "emotion", "<gender>": "gender", "<age>": "age", "<style>": "style"}


def prompt(heard: dict, instruction: str) -> str:
    """The speech prompt up to the answer, the span written as its exact frames."""
    span = toy.SPAN_OPEN + toy.heard_span(heard) + toy.SPAN_CLOSE
    return f"{pattern1(SYSTEM_SPEECH)}{instruction}{span}<s>{PATTERN2}"


def to_ids(rows: list[list[list[int]]]) -> torch.Tensor:
    """Rows of positions (each a list of ids) -> (B, L, K) ids, -1 past a position's own and a row's end."""
    L, K = max(map(len, rows)), max(len(p) for r in rows for p in r)
    ids = torch.full((len(rows), L, K), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        for t, p in enumerate(row):
            ids[b, t, : len(p)] = torch.tensor(p)
    return ids


@torch.no_grad()
def answer(model: Pangu, tok: PanguTokenizer, heard: dict, instruction: str, max_new: int = 16) -> str:
    x = toy.embed_positions(model, to_ids([toy.line_positions(prompt(heard, instruction), tok)]))
    out = []
    for _ in range(max_new):
        nxt = int(model(inputs_embeds=x)[0, -1].argmax())
        if nxt == tok.eos_id:
            break
        out.append(nxt)
        x = torch.cat([x, model.embed(torch.tensor([[nxt]]))], 1)
    return tok.decode(out, skip_special=False)


@torch.no_grad()
def text_answer(model: Pangu, tok: PanguTokenizer, text: str, max_new: int = 3) -> str:
    """Greedy continuation of a plain text line (no chat layout), as the corpus writes its facts."""
    x = torch.tensor([tok.encode(text, bos=True)])
    n = x.shape[1]
    for _ in range(max_new):
        x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], 1)
    return tok.decode(x[0, n:].tolist())


def chat_questions(speakers: list[dict], n: int, seed: int = 0) -> list[tuple[dict, str]]:
    """n fresh spoken questions of the dev speakers, as (heard, answer): text-only specs of toy.py's
    chat task (its words, layout, speaker and attributes drawn as the dev split's)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        for spec in toy._toy_utterances(rng, "dev", 1, speakers):
            if spec["tags"] == ("<chat>",) and len(out) < n:
                a = spec["attrs"]
                layout = toy._toy_layout(rng, spec["words"], a["<age>"], a["<style>"], a["<caption>"])
                out.append((toy._heard(spec, layout), spec["answer"]))
    return out


def stamped(words: list[str], times: list) -> str:
    """Words with their <start,end> stamps, written as the toy data writes them (toy._toy_text)."""
    return toy._toy_text({"tags": ("<asr>", "<align>"), "words": words, "attrs": {}}, times)


def frame_stamps(heard: dict) -> str:
    """The best stamps the frames allow: each word from its first to its last 80 ms frame's end
    (the format's floor for the timestamps' error)."""
    frames = toy.frame_contents(heard, per=8)
    words, times = [], []
    for i, word in enumerate(heard["words"]):
        ks = [k for k, c in enumerate(frames) if c == ("word", i)]
        if ks:
            words.append(word)
            times.append((ks[0] * 0.08, (ks[-1] + 1) * 0.08))
    return "<asr><align>" + stamped(words, times)


def read_wer(model: Pangu, tok: PanguTokenizer, dev: list[dict]) -> float:
    model.eval()
    hyps = [answer(model, tok, h, "<asr>").replace("<asr>", "").strip() or "-" for h in dev]
    model.train()
    return jiwer.wer([" ".join(h["words"]) for h in dev], hyps)


def fresh(args, tok: PanguTokenizer, speakers: list[dict], dev: list[dict]) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = Pangu(PanguConfig.from_name("toy"))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 30)
        rows, split = [], []
        while len(rows) < args.batch:
            for spec in toy._toy_utterances(rng, "train", 1, speakers):
                if spec["tags"] == ("<chat>",) or len(rows) == args.batch:
                    continue
                a = spec["attrs"]
                heard = toy._heard(spec, toy._toy_layout(rng, spec["words"], a["<age>"], a["<style>"], a["<caption>"]))
                head = toy.line_positions(prompt(heard, "<asr>"), tok)
                tail = [[i] for i in tok.encode("<asr>" + " ".join(spec["words"]), bos=False)] + [[tok.eos_id]]
                rows.append(head + tail)
                split.append(len(head))
        ids = to_ids(rows)
        targets = torch.full(ids.shape[:2], IGNORE_ID, dtype=torch.long)
        for b, (row, n) in enumerate(zip(rows, split)):
            targets[b, n - 1 : len(row) - 1] = ids[b, n : len(row), 0]  # the answer only
        loss = lm_loss(model(inputs_embeds=toy.embed_positions(model, ids)), targets)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % 50 == 0 or step == args.steps:
            wer = read_wer(model, tok, dev)
            print(f"step {step:4d}  loss {loss.item():.3f}  dev WER {100 * wer:5.1f} %  ({time.time() - t0:.0f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a trained toy LLM (runs/toy/stage0/final)")
    p.add_argument("--fresh", action="store_true", help="train a fresh toy LLM on reading lines alone")
    p.add_argument("--toy-dir", default="toy_data")
    p.add_argument("--n", type=int, default=40, help="dev utterances read")
    p.add_argument("--chat", type=int, default=40, help="fresh spoken questions of the dev speakers asked <chat>")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if not (args.fresh or args.model):
        p.error("give --model DIR or --fresh")
    torch.set_num_threads(args.threads)
    paths = toy.toy_paths(args.toy_dir)
    # a model reads with the tokenizer it was trained with
    tok = PanguTokenizer((args.model and tokenizer_in(args.model)) or paths["tokenizer"])
    dev = list(toy.read_alignment(paths["dev"].parent / "alignment.jsonl").values())
    if args.fresh:
        speakers = json.loads(paths["index"].read_text(encoding="utf-8"))["speakers"]
        fresh(args, tok, speakers, dev[: args.n])
        return
    model = load_pangu(args.model)
    print(f"{args.model}: dev WER {100 * read_wer(model, tok, dev[: args.n]):.1f} % ({args.n} utterances)")
    for tag, key in LABEL_KEYS.items():
        right = sum(h[key] in answer(model, tok, h, tag) for h in dev[:20])
        print(f"  {tag:10s} {right} / 20")
    events = [h for h in dev if h["event"]][:20]
    print(f"  <caption>  {sum(h['event'] in answer(model, tok, h, '<caption>') for h in events)} / {len(events)}")
    stamps = [
        {
            "task": "<ALIGN>",
            "txt": stamped(h["words"], h["times"]),
            "output": answer(model, tok, h, "<asr><align>", max_new=64),
        }
        for h in dev[: args.n]
    ]
    align = ifr_eval.evaluate(stamps)["metrics"].get("align", {})
    floor = ifr_eval.evaluate([{**r, "output": frame_stamps(h)} for r, h in zip(stamps, dev)])["metrics"]["align"]
    print(
        f"  <align>    {align.get('mean_error_s')} s mean start + end error on {align.get('aligned')} % of words"
        f" (the frames allow {floor['mean_error_s']} s)"
    )
    speakers = json.loads(paths["index"].read_text(encoding="utf-8"))["speakers"]
    questions = chat_questions(speakers, args.chat)
    right = sum(answer(model, tok, h, "<chat>").removeprefix("<chat>").strip() == a for h, a in questions)
    said = [" ".join(h["words"]) for h, _ in questions]
    read = sum(answer(model, tok, h, "<asr>").removeprefix("<asr>").strip() == w for (h, _), w in zip(questions, said))
    print(f"  <chat>     {right} / {len(questions)} answered (the question read exactly: {read} / {len(questions)})")
    facts = toy.arithmetic_facts()
    known = sum(text_answer(model, tok, q).split()[:1] == [a] for q, a in facts)
    print(f"  as text    {known} / {len(facts)} arithmetic facts of the corpus answered")


if __name__ == "__main__":
    main()
