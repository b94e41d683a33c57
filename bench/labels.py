"""Where are the speaker's labels lost? Linear probes on the toy Whisper's states and the adapter's vectors.

For each model: the encoder's 20 ms states and the adapter's 80 ms vectors of the first TRAIN
train utterances and of every utterance of the held-out split (its speakers are held out); for
each label (gender, age, emotion, style) a linear probe trained on the train utterances' word
frames and scored on the held-out ones, per word frame and per utterance (the mean of its word
frames). Beside what the model answers (ifr_eval.py with the fixed tags), this says where the
labels go between the audio and the frozen LLM (docs/study/limits.md).

    python bench/labels.py runs/toy/stage1/final                  # the study's stage-1 model, test
    python bench/labels.py --split dev runs/toy*/stage1/final

Measured (seed 1234, 2-core Intel Xeon): see docs/study/limits.md.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import data  # noqa: E402
import toy  # noqa: E402
from model import IOSUMPangu  # noqa: E402
from whisper_enc import log_mel_spectrogram  # noqa: E402

LABELS = ("gender", "age", "emotion", "style")


@torch.no_grad()
def word_frames(model: IOSUMPangu, sample: dict, audio: torch.Tensor, mel: torch.Tensor) -> dict[str, torch.Tensor]:
    """One utterance's encoder states (20 ms) and adapter vectors (80 ms) on its word frames."""
    enc, lengths = model.encoder(mel[None], torch.tensor([mel.shape[-1]]))
    vec, _ = model.adapter(enc, lengths)
    heard = {"samples": len(audio), "times": sample["extra"]["times"], "event_span": None}
    out = {}
    for name, x, per in (("encoder", enc[0], 2), ("adapter", vec[0], 8)):
        rows = [k for k, (what, _) in enumerate(toy.frame_contents(heard, per)) if what == "word" and k < len(x)]
        out[name] = x[rows]
    return out


def probe(train: list, held: list, label: str, per_utterance: bool) -> float:
    """% of held-out frames (or utterances) a linear probe, fitted on the train ones, gets right."""
    classes = sorted({extra[label] for _, extra in train})

    def xy(rows):
        xs = [x.mean(0, keepdim=True) if per_utterance else x for x, _ in rows]
        ys = [classes.index(extra[label]) for (x, extra), v in zip(rows, xs) for _ in range(len(v))]
        return torch.cat(xs), torch.tensor(ys)

    (a, y), (b, yb) = xy(train), xy(held)
    mu, sd = a.mean(0), a.std(0) + 1e-6
    a, b = (a - mu) / sd, (b - mu) / sd
    torch.manual_seed(0)
    head = torch.nn.Linear(a.shape[1], len(classes))
    opt = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=1e-3)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(head(a), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 100 * (head(b).argmax(1) == yb).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="I-OSUM-Pangu checkpoint folders (a stage-1 or later model)")
    p.add_argument("--toy-dir", default=str(ROOT / "toy_data"))
    p.add_argument("--split", default="test", choices=["dev", "test"])
    p.add_argument("--train", type=int, default=400, help="train utterances to fit the probes on")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    paths = toy.toy_paths(args.toy_dir)
    train = list(data.read_shard_list(paths["train"]))[: args.train]
    held = list(data.read_raw_list(paths[args.split]))
    print(f"{len(train)} train utterances -> {len(held)} {args.split} utterances (held-out speakers)")
    audio = {id(s): data.decode_audio(s) for s in train + held}  # read once, for every model
    mels = {k: log_mel_spectrogram(a) for k, a in audio.items()}
    for name in args.models:
        model = IOSUMPangu.from_pretrained(name, verbose=False).eval()
        states = {id(s): word_frames(model, s, audio[id(s)], mels[id(s)]) for s in train + held}
        head = "| label | encoder, a frame % | encoder, an utterance % | adapter, a frame % | adapter, an utterance % |"
        print(f"\n{name}\n{head}\n| --- | ---: | ---: | ---: | ---: |")
        for label in LABELS:
            cells = []
            for part in ("encoder", "adapter"):
                fit, score = ([(states[id(s)][part], s["extra"]) for s in ss] for ss in (train, held))
                fit, score = ([(x, e) for x, e in rows if len(x)] for rows in (fit, score))  # some have no word frame
                cells += [f"{probe(fit, score, label, utt):.0f}" for utt in (False, True)]
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
