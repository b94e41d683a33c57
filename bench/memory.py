"""Loading memory and speech-to-text latency of I-OSUM-Pangu on the CPU.

1. Peak resident memory (VmHWM, each load in a fresh subprocess) of loading a Pangu-shaped
   model from safetensors, relative to the bytes of its tensors (goal <= 1.15x). The model
   is openPangu-7B's shape with fewer layers (random bf16 weights written to a temp dir):
   - `model.IOSUMPangu.from_pretrained(dir)`: our format, the whole speech model;
   - `pangu.load_pangu(dir)`: the LLM alone, Hugging Face layout in 2 shards + index.
   Both build on the meta device and assign memory-mapped (copy-on-write) tensors, so the
   peak is taken after reading every tensor once, as a forward pass would.
2. End-to-end latency of one 10 s utterance, split into front end / encoder / adapter /
   prefill / decode, float32, for the toy model and a mid-size one (Whisper-medium encoder,
   the release's adapter, openPangu-7B width and vocabulary with 2 of its 34 layers).

    python bench/memory.py [--layers 8] [--skip-load] [--skip-latency] [--mid-layers 2]
                           [--threads N]

Measured (2-core x86-64 CPU, 24 GB, torch 2.13 CPU, shared with other jobs), --layers 8:
whole model 6.51 GB of bf16 tensors -> peak 6.85 GB (1.051x; 1.015x over the interpreter)
from our format and from the released .safetensors (a 9.06 GB file with its aliases); the LLM
alone via pangu.load_pangu 5.70 GB -> 6.03 GB (1.058x; 1.017x). Latency of 10 s, --threads 1
(2 threads stalled on the shared machine), float32: toy 4 / 20 / 7 / 43 ms (front end /
encoder / adapter / prefill of 235 positions), 7.2 ms per token; mid (2.04 B) 4 ms / 6.3 s /
0.29 s / 4.0 s, 344 ms per token, 21 s end to end with 32 new tokens.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pangu  # noqa: E402
import whisper_enc  # noqa: E402
from checkpoint import count_params  # noqa: E402
from model import IOSUMConfig, IOSUMPangu  # noqa: E402
from whisper_enc import SAMPLE_RATE, log_mel_spectrogram  # noqa: E402

_DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float32: "F32"}


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def write_random_safetensors(path: Path, shapes: dict, dtype=torch.bfloat16, seed: int = 0):
    """Stream random tensors into a .safetensors file one at a time (the writer never holds
    the whole model). Returns the bytes of tensor data."""
    # one random block, repeated: the bytes are not what is measured, and filling GBs with
    # fresh random numbers would take minutes on 2 cores
    gen = torch.Generator().manual_seed(seed)
    block = torch.empty(1 << 24).normal_(0, 0.02, generator=gen).to(dtype)  # 16 M values
    block = block.view(torch.uint8).numpy().tobytes()
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = torch.Size(shape).numel() * dtype.itemsize
        header[name] = {
            "dtype": _DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for shape in shapes.values():
            left = torch.Size(shape).numel() * dtype.itemsize
            while left:
                chunk = block[: min(left, len(block))]
                f.write(chunk)
                left -= len(chunk)
    return offset


def mid_pangu_cfg(layers: int) -> pangu.PanguConfig:
    return pangu.PanguConfig.from_name("pangu-7b", n_layers=layers)


def prepare(tmp: Path, layers: int) -> dict:
    """Our-format dir of the whole model and an HF-layout dir of its LLM, random bf16."""
    cfg = IOSUMConfig.from_name("iosum-pangu-7b", llm=dict(n_layers=layers))
    with torch.device("meta"):
        model = IOSUMPangu(cfg)
    ours = tmp / "ours"
    ours.mkdir()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    t = time.time()
    n_ours = write_random_safetensors(ours / "model.safetensors", shapes)
    meta = dict(format="iosum-pangu", trainable_only=False, config=cfg.to_dict(), prompt_ids={})
    (ours / "config.json").write_text(json.dumps(meta))
    # the LLM alone in the Hugging Face layout, two shards and an index (as openPangu ships)
    hf = tmp / "hf"
    hf.mkdir()
    with torch.device("meta"):
        llm = pangu.Pangu(cfg.llm)
    llm_shapes = {k: tuple(v.shape) for k, v in llm.state_dict().items()}
    names = list(llm_shapes)
    half = len(names) // 2
    weight_map, n_hf = {}, 0
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        n_hf += write_random_safetensors(hf / shard, {k: llm_shapes[k] for k in part}, seed=i + 1)
        weight_map.update({k: shard for k in part})
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (hf / "config.json").write_text(json.dumps(cfg.llm.to_json()))
    # the whole model in the released layout (step_N.pt's keys as .safetensors), aliases and
    # the unused ln_speech / speech_head included
    released = tmp / "released.safetensors"
    n_rel = write_random_safetensors(released, released_shapes(model))
    sizes = f"{n_ours / 1e9:.2f} GB (ours) + {n_rel / 1e9:.2f} GB (released) + {n_hf / 1e9:.2f} GB"
    print(f"wrote {sizes} (LLM) of random bf16 in {time.time() - t:.0f} s")
    return dict(ours=ours, hf=hf, released=released)


def released_shapes(model: IOSUMPangu) -> dict:
    """Our key names -> the release's (the inverse of model.released_state_dict)."""
    enc = [
        (re.compile(ours.replace(".", r"\.").replace("{}", r"(\d+)") + r"\.(\w+)"), rel)
        for rel, ours in whisper_enc._WENET.items()
        if ours
    ]
    out = {}
    for key, v in model.state_dict().items():
        part, rest = key.split(".", 1)
        if part == "encoder":
            for pat, rel in enc:
                if m := pat.fullmatch(rest):
                    rel = rel.replace("{}", m.group(1)) if "{}" in rel else rel
                    name = f"encoder.{rel}.{m.group(m.lastindex)}"
                    break
            else:
                raise KeyError(key)
        elif part == "adapter":
            name = rest
        elif part == "llm":
            rest = rest.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
            name = "llama_model.base_model.model." + rest
        else:
            name = key
        out[name] = tuple(v.shape)
    d, d_enc = model.cfg.llm.dim, model.cfg.whisper.d_model
    out["embed_tokens.weight"] = out["llama_model.base_model.model.model.embed_tokens.weight"]
    out["lm_head.weight"] = out["llama_model.base_model.model.lm_head.weight"]
    out |= {
        "ln_speech.weight": (d_enc,),
        "ln_speech.bias": (d_enc,),
        "speech_head.weight": (model.cfg.speech_token_num, d),
        "speech_head.bias": (model.cfg.speech_token_num,),
    }
    return out


def child(kind: str, path: str) -> None:
    """Runs in a fresh interpreter: load, then report peak memory as JSON on stdout."""
    base_kb = status_kb("VmRSS")
    t = time.time()
    if kind == "ours":
        model = IOSUMPangu.from_pretrained(path)
    elif kind == "released":  # dims: the preset + the LLM dir's config.json, as a user loads
        model = IOSUMPangu.from_pretrained(path, llm_dir=Path(path).parent / "hf")
    elif kind == "load_pangu":
        model = pangu.load_pangu(path)
    else:
        raise ValueError(kind)
    seconds = time.time() - t
    load_kb = status_kb("VmHWM")
    # A memory-mapped load is lazy: its pages count only once read. Read every tensor once
    # (as a forward pass would) before taking the peak.
    storages, checksum = {}, 0.0
    with torch.no_grad():
        for v in model.state_dict().values():
            storages[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
            for part in v.reshape(-1).split(1 << 22):  # 4 M values at a time
                checksum += float(part.float().sum())
    r = dict(
        kind=kind,
        seconds=seconds,
        tensor_bytes=sum(storages.values()),
        base_kb=base_kb,
        load_kb=load_kb,
        peak_kb=status_kb("VmHWM"),
    )
    print(json.dumps(r))


def run_child(kind: str, path: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_load(layers: int) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        paths = prepare(Path(tmp), layers)
        print(
            f"{'loader':<50} {'tensors GB':>10} {'peak GB':>8} {'peak/bytes':>10} "
            f"{'(peak-base)/bytes':>17} {'load s':>6}"
        )
        for kind in ("ours", "released", "load_pangu"):
            path = paths["hf" if kind == "load_pangu" else kind]
            r = run_child(kind, path)
            b, peak, base = r["tensor_bytes"], r["peak_kb"] * 1024, r["base_kb"] * 1024
            print(
                f"{LOADERS[kind]:<50} {b / 1e9:>10.2f} {peak / 1e9:>8.2f} {peak / b:>10.3f} "
                f"{(peak - base) / b:>17.3f} {r['seconds']:>6.1f}"
            )
        print("peak: VmHWM after loading and reading every tensor once; base: VmRSS after imports")


LOADERS = {
    "ours": "IOSUMPangu.from_pretrained (our format)",
    "released": "IOSUMPangu.from_pretrained (released .safetensors)",
    "load_pangu": "pangu.load_pangu (HF shards, safe_open)",
}


def random_model(cfg: IOSUMConfig) -> IOSUMPangu:
    """Random weights without the slow default init: build on meta, allocate, fill."""
    with torch.device("meta"):
        model = IOSUMPangu(cfg)
    model = model.to_empty(device="cpu").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=gen)
    return model


@torch.no_grad()
def bench_latency(name: str, cfg: IOSUMConfig, new_tokens: int = 32) -> None:
    model = random_model(cfg)
    n_params = count_params(model)
    model.set_prompt_ids(p1_generate=list(range(1, 90)), p2=[1, 64, 13, 17, 230, 13])  # ~ real lengths
    instruction = torch.arange(100, 112)[None]  # a 12-token instruction
    audio = torch.randn(10 * SAMPLE_RATE) * 0.1  # 10 s

    def timed(fn, repeat=3):
        fn()  # warm-up: the first call builds oneDNN kernels and allocator pools
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t)
        return out, best

    mel, t_front = timed(lambda: log_mel_spectrogram(audio)[None])  # (1, 80, 1000)
    (feats, lengths), t_enc = timed(lambda: model.encoder(mel))
    _, t_ad = timed(lambda: model.adapter(feats, lengths))
    batch = dict(kind="speech", mel=mel, mel_lengths=torch.tensor([mel.shape[-1]]), instruction=instruction)
    x = model.build_inputs(batch, layout="release", with_target=False)
    L = x["inputs_embeds"].shape[1]

    def gen(n):
        return pangu.generate(
            model.llm, x["inputs_embeds"], x["attention_mask"], max_new_tokens=n, eos_id=-1, repetition_penalty=1.05
        )

    _, t_prefill = timed(lambda: gen(1))  # prefill + one sampled token
    ids, t_all = timed(lambda: gen(new_tokens), repeat=1)  # (after its own warm-up run)
    assert len(ids[0]) == new_tokens
    t_decode = (t_all - t_prefill) / (new_tokens - 1)
    total = t_front + t_enc + t_ad + t_prefill + t_decode * (new_tokens - 1)
    print(f"{name}: {n_params / 1e6:.0f} M params, float32, prompt {L} positions, {torch.get_num_threads()} threads")
    print(
        f"  front end {t_front * 1e3:8.1f} ms | encoder {t_enc * 1e3:8.1f} ms | adapter "
        f"{t_ad * 1e3:7.1f} ms | prefill {t_prefill * 1e3:8.1f} ms | decode "
        f"{t_decode * 1e3:7.1f} ms/token ({1 / t_decode:.1f} tokens/s)"
    )
    peak = status_kb("VmHWM") / 1e6
    print(
        f"  end to end with {new_tokens} new tokens: {total:.2f} s "
        f"(real-time factor {total / 10:.2f}); peak RSS so far {peak:.2f} GB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8, help="LLM layers of the load test (34 = 7B)")
    p.add_argument("--mid-layers", type=int, default=2, help="LLM layers of the mid latency model")
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child)
    if args.threads:  # on a shared machine, fewer threads than cores avoids OpenMP spin stalls
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    if not args.skip_load:
        bench_load(args.layers)
    if not args.skip_latency:
        bench_latency("toy", IOSUMConfig.from_name("toy"))
        mid = IOSUMConfig.from_name("iosum-pangu-7b", llm=dict(n_layers=args.mid_layers))
        bench_latency(f"mid (Whisper-medium + release adapter + 7B-wide Pangu, {args.mid_layers} layers)", mid)


if __name__ == "__main__":
    main()
