"""Does a trained model use its speech? The diagnostic behind the toy study's "what limits it".

For dev batches of a model (default: the toy study's stage-1 model), the mean target loss in
nats per token, split by kind of target token (tag, word, timestamp piece, label, eos), with
the real mel, with every mel set to zero, and with each row given another row's audio. A model
that reads its speech is better with the real audio; one that does not scores the same. It also
prints how much of the encoder's and the adapter's output changes with the audio: the mean
distance between the outputs for real and zero mel, over the mean output norm.

    python bench/speech_use.py                                    # runs/toy/stage1/final
    python bench/speech_use.py --model runs/toy/stage3/final --stage 3 --batches 8

Measured (toy study, seed 1234, 2-core x86-64 CPU): see docs/study/history.md.
"""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data  # noqa: E402
from model import IOSUMPangu  # noqa: E402
from pangu import IGNORE_ID  # noqa: E402
from toy import toy_paths  # noqa: E402

KINDS = ("tag", "word", "time", "label", "eos")
MODES = ("real", "zero", "other row")


def token_kinds(model: IOSUMPangu) -> list[str]:
    """The kind of every id of the model's tokenizer."""
    tok = model.tokenizer
    kinds = []
    for i in range(tok.vocab_size):
        piece = tok.id_to_added.get(i) or tok.sp.id_to_piece(i)
        if i == model.cfg.llm.eos_id:
            kinds.append("eos")
        elif re.fullmatch(r"<[a-z_]+>", piece):
            kinds.append("tag")
        elif re.fullmatch(r"<[A-Z_]+>", piece):
            kinds.append("label")
        elif re.search(r"[0-9<>,.]", piece):
            kinds.append("time")
        else:
            kinds.append("word")
    return kinds


def with_audio(batch: dict, mode: str) -> dict:
    b = dict(batch)
    if mode == "zero":
        b["mel"] = torch.zeros_like(b["mel"])
    elif mode == "other row":
        b["mel"], b["mel_lengths"] = b["mel"].roll(1, 0), b["mel_lengths"].roll(1, 0)
    return b


@torch.no_grad()
def target_nll(model: IOSUMPangu, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL (N,) and target ids (N,) of a batch's target tokens."""
    x = model.build_inputs(batch)
    labels = x.pop("labels")[:, 1:]
    logits = model.llm(**x)[:, :-1].float()
    keep = labels != IGNORE_ID
    return F.cross_entropy(logits[keep], labels[keep], reduction="none"), labels[keep]


@torch.no_grad()
def content_share(model: IOSUMPangu, batch: dict) -> tuple[float, float]:
    """|out(real) - out(zero)| / |out(real)| over the valid frames, for the encoder and the adapter."""
    mel, lengths = batch["mel"], batch["mel_lengths"]
    enc = [model.encoder(m, lengths) for m in (mel, torch.zeros_like(mel))]  # [(feats, lengths)] x 2
    ada = [model.adapter(f, n) for f, n in enc]
    shares = []
    for (real, n), (zero, _) in (enc, ada):
        valid = torch.arange(real.shape[1])[None, :] < n[:, None]  # (B, T): frames past a length are padding
        shares.append(((real - zero)[valid].norm(dim=-1).mean() / real[valid].norm(dim=-1).mean()).item())
    return shares[0], shares[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/toy/stage1/final")
    p.add_argument("--toy-dir", default="toy_data")
    p.add_argument("--stage", type=int, default=1, help="prompts of this stage (1: fixed tags)")
    p.add_argument("--batches", type=int, default=6)
    args = p.parse_args(argv)
    model = IOSUMPangu.from_pretrained(args.model, verbose=False).eval()
    kinds = token_kinds(model)
    paths = toy_paths(args.toy_dir)
    dev = paths["dev"]
    tok = model.tokenizer_file or paths["tokenizer"]  # the pieces the model was trained with
    loader = data.make_loader(dev, tok, stage=args.stage, split="dev", text_weight=0.0, max_frames_in_batch=1000)
    sums = {(m, k): [0.0, 0] for m in MODES for k in KINDS}
    shares = []
    for i, batch in enumerate(loader):
        if i == args.batches:
            break
        shares.append(content_share(model, batch))
        for mode in MODES:
            nll, ids = target_nll(model, with_audio(batch, mode))
            for loss, t in zip(nll.tolist(), ids.tolist()):
                s = sums[mode, kinds[t]]
                s[0] += loss
                s[1] += 1
    print(f"{args.model}: target loss (nats per token) by kind, {args.batches} dev batches")
    print(f"{'audio':<10}" + "".join(f"{k:>10}" for k in KINDS))
    for mode in MODES:
        cells = [f"{s / n:10.3f}" if n else f"{'-':>10}" for s, n in (sums[mode, k] for k in KINDS)]
        print(f"{mode:<10}" + "".join(cells))
    counts = "  ".join(f"{k} {sums['real', k][1]}" for k in KINDS)
    print(f"tokens: {counts}")
    enc, ada = (sum(s) / len(s) for s in zip(*shares))
    print(f"output change real -> zero mel: encoder {enc:.3f}, adapter {ada:.4f} (of the output norm)")


if __name__ == "__main__":
    main()
