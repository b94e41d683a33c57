"""Is the data loader fast enough? Samples/s it delivers vs samples/s a toy training step eats.

    python bench/data.py [--root toy_data] [--max-frames 2000] [--batches 30] [--steps 4]
                         [--threads N]

Loader: stage-1 training batches of the toy world (FLAC shards -> log-mel -> SpecAugment/SpecSub
-> collate) with 0 and 2 workers, worker start-up included. Trainer: forward + backward + AdamW
of the toy I-OSUM-Pangu (model.py, "toy" preset; stage 1: encoder + adapter trainable) on batches
held in memory, then the same fed live by the 2-worker loader (do the two fight for the cores?).
Without model.py a stand-in of the toy sizes is timed instead (it says so).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import toy  # noqa: E402
from checkpoint import count_params  # noqa: E402
from pangu import IGNORE_ID, lm_loss  # noqa: E402


def loader_rate(paths, num_workers: int, max_frames: int, n_batches: int) -> tuple[float, int]:
    loader = data.make_loader(
        paths["train"],
        paths["tokenizer"],
        stage=1,
        num_workers=num_workers,
        max_frames_in_batch=max_frames,
    )
    t0, n = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        n += len(batch["keys"])
        if i + 1 == n_batches:
            break
    return n / (time.perf_counter() - t0), n


class StandIn(torch.nn.Module):
    """Toy sizes without model.py: encoder -> adapter -> LLM on [instruction|speech|target]."""

    def __init__(self, tokenizer_file):
        super().__init__()
        from adapter import Adapter, AdapterConfig
        from pangu import Pangu, PanguConfig
        from whisper_enc import WhisperConfig, WhisperEncoder

        self.encoder = WhisperEncoder(WhisperConfig.from_name("toy"))
        self.adapter = Adapter(AdapterConfig.from_name("toy"))
        self.llm = Pangu(PanguConfig.from_name("toy"))

    def forward(self, batch):
        feats, lengths = self.encoder(batch["mel"], batch["mel_lengths"])
        speech, _ = self.adapter(feats, lengths)  # (B, T'', D)
        ins, tgt = batch["instruction"].clamp(min=0), batch["target"].clamp(min=0)
        x = torch.cat([self.llm.embed(ins), speech, self.llm.embed(tgt)], 1)  # (B, L, D)
        L = x.shape[1]
        logits = self.llm(inputs_embeds=x, position_ids=torch.arange(L)[None].expand(len(x), L))
        labels = torch.cat([torch.full(x.shape[:2], IGNORE_ID)[:, : L - tgt.shape[1]], batch["target"]], 1)
        loss = lm_loss(logits[:, :-1], labels[:, 1:])
        return {"loss": loss}


def toy_model(tokenizer_file):
    try:
        from model import IOSUMConfig, IOSUMPangu

        model = IOSUMPangu(IOSUMConfig.from_name("toy"))
        model.set_prompts(tokenizer_file)
        name = "model.py IOSUMPangu('toy')"
    except Exception as e:  # model.py absent or unfinished: time the stand-in
        print(f"model.py unusable ({type(e).__name__}: {e}); timing a stand-in of the toy sizes")
        model, name = StandIn(tokenizer_file), "stand-in of the toy sizes"
    for p in model.llm.parameters():  # stage 1: the LLM is frozen
        p.requires_grad_(False)
    n = count_params(model) / 1e6
    t = count_params(model, trainable_only=True) / 1e6
    print(f"trainer: {name}, {n:.2f} M parameters, {t:.2f} M trainable (stage 1)")
    return model


def train_rate(model, batches, steps: int) -> float:
    """Samples/s of `steps` training steps pulling from `batches` (one warm-up step first)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = iter(batches)

    def step(batch):
        model(batch)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(next(batches))  # warm-up
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(batches)  # a live loader's wait counts
        step(batch)
        n += len(batch["keys"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="toy_data")
    ap.add_argument("--max-frames", type=int, default=2000, help="max_frames_in_batch")
    ap.add_argument("--batches", type=int, default=30, help="batches timed per loader run")
    ap.add_argument("--steps", type=int, default=4, help="training steps timed (+1 warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = toy.ensure_toy_world(args.root)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batches of <= {args.max_frames} padded frames"
    )

    rates = {}
    for w in (0, 2):
        rates[w], n = loader_rate(paths, w, args.max_frames, args.batches)
        print(f"loader, {w} workers: {rates[w]:8.1f} samples/s ({n} samples)")

    model = toy_model(paths["tokenizer"])
    make = lambda w: data.make_loader(  # noqa: E731
        paths["train"], paths["tokenizer"], num_workers=w, max_frames_in_batch=args.max_frames
    )
    held = [b for b, _ in zip(make(0), range(args.steps + 1))]
    trainer = train_rate(model, held, args.steps)
    print(f"trainer, batches in memory:         {trainer:8.1f} samples/s")
    fed = train_rate(model, make(2), args.steps)
    print(f"trainer, fed by the 2-worker loader: {fed:8.1f} samples/s")
    for w in (0, 2):
        print(f"loader ({w} workers) / trainer = {rates[w] / trainer:6.1f}x")
    verdict = "not the bottleneck" if min(rates.values()) > trainer else "THE BOTTLENECK"
    print(f"the loader is {verdict}")


if __name__ == "__main__":
    main()
