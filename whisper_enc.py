"""Whisper audio front end and encoder, the speech side of I-OSUM-Pangu (arXiv 2603.10862).

Mirrors openai-whisper's `whisper/audio.py` (log-mel) and `AudioEncoder` in `whisper/model.py`,
with what the release adds on top: true-length inputs (up to 40 s, so positions beyond 1500),
padded batches in which every utterance gets exactly the features it has alone, and one loader
for the three weight layouts of docs/release.md §3 (OpenAI `medium.pt`, Hugging Face, released WeNet).
"""

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from checkpoint import load_strict, read_checkpoint

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop -> 100 mel frames per second
N_FRAMES_30S = 3000  # openai-whisper's fixed input: 30 s at 100 frames/s
HEAD_DIM = 64  # every Whisper size uses 64-dim heads (tiny 384/6 ... large 1280/20)
LN_EPS = 1e-5

# ----------------------------------------------------------------------------- audio I/O


class AudioError(ValueError):
    """An audio file we cannot use; the message names the file and the problem."""


def load_audio(path, max_seconds: float | None = 40.0) -> Tensor:
    """Read wav/flac/ogg (a path or an open binary file) -> float32 (N,) at 16 kHz mono.

    Channels are averaged; other rates go through `resample`. The release's data filter keeps
    utterances of up to 4000 frames (40 s), hence the default `max_seconds`.
    """
    name = str(getattr(path, "name", path))
    if isinstance(path, (str, Path)):
        p = Path(path)
        if not p.is_file():
            raise AudioError(f"{name}: no such file")
        if p.stat().st_size == 0:
            raise AudioError(f"{name}: empty file (0 bytes)")
    try:
        with sf.SoundFile(path) as f:
            sr, n = f.samplerate, f.frames
            if n == 0:
                raise AudioError(f"{name}: contains no samples")
            if max_seconds is not None and n / sr > max_seconds:
                secs = n / sr
                raise AudioError(f"{name}: {secs:.2f} s long, more than max_seconds={max_seconds}")
            audio = f.read(dtype="float32", always_2d=True)  # (N, channels)
    except AudioError:
        raise
    except Exception as e:  # libsndfile says what is wrong; keep its words
        raise AudioError(f"{name}: cannot decode audio ({e})") from e
    if not np.isfinite(audio).all():
        raise AudioError(f"{name}: contains NaN or inf samples")
    audio = torch.from_numpy(audio.mean(axis=1, dtype=np.float32))  # (N,) down-mix
    return resample(audio, sr, SAMPLE_RATE) if sr != SAMPLE_RATE else audio


# ----------------------------------------------------------------------------- resampler

# Kaiser-windowed sinc, with resampy's "kaiser_best" design numbers: 64 zero crossings per
# side, -6 dB at 94.76 % of the lower Nyquist (7.58 kHz for 16 kHz out), beta 14.77 (~ -140 dB
# stop band). Why this one: below 7.2 kHz it is exact band-limited interpolation up to float32
# noise (sines come back within 1e-6), nothing above 8 kHz folds back into the mel range, it
# agrees with soxr (librosa's default) on the 77 lower mel bins to 1e-4, and it needs nothing
# but torch: one conv1d over the polyphase view of the signal, no new dependency. (The release
# used torchaudio's default, a Hann-windowed sinc with 6 zero crossings: a softer filter.)
RESAMPLE_ZEROS = 64
RESAMPLE_ROLLOFF = 0.9475937167399596
RESAMPLE_BETA = 14.769656459379492


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int) -> tuple[Tensor, int]:
    """Polyphase filter for orig -> new (gcd-reduced): (new, orig, Q) weights and the left pad."""
    cutoff = RESAMPLE_ROLLOFF * min(orig, new) / orig  # low-pass edge / input Nyquist
    half = RESAMPLE_ZEROS / cutoff  # window half-width in input samples
    K = math.ceil(half)
    # Output j of each block of `new` sits at input position j*orig/new; its taps are inputs
    # k in [-K, K + orig), i.e. t = j*orig/new - k, within the window where |t| <= half.
    phase = torch.arange(new, dtype=torch.float64)[:, None] * orig / new  # (new, 1)
    k = torch.arange(-K, K + orig, dtype=torch.float64)[None, :]  # (1, 2K + orig)
    t = (phase - k).clamp(-half, half)  # (new, 2K + orig)
    window = torch.special.i0(RESAMPLE_BETA * torch.sqrt(1 - (t / half) ** 2))
    h = cutoff * torch.sinc(cutoff * t) * window / torch.special.i0(torch.tensor(RESAMPLE_BETA))
    # Fold the taps into `orig` input channels (the polyphase view), so the filter is one
    # stride-1 conv1d: tap k = q*orig + r reads channel r at block offset q.
    Q = math.ceil(h.shape[1] / orig)
    h = F.pad(h, (0, Q * orig - h.shape[1]))  # (new, Q * orig)
    weight = h.view(new, Q, orig).transpose(1, 2).contiguous()  # (new, orig, Q)
    return weight.float(), K


def resample(audio: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Band-limited resampling of a 1-D signal (N,) -> (ceil(N * new_sr / orig_sr),)."""
    if orig_sr == new_sr:
        return audio
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    weight, K = _sinc_kernel(orig, new)
    weight = weight.to(audio.device, audio.dtype)
    N = audio.shape[0]
    n_out = -(-N * new // orig)
    Q = weight.shape[-1]
    blocks = -(-n_out // new)  # output blocks of `new` samples, one per `orig` inputs
    total = (blocks + Q - 1) * orig
    x = F.pad(audio, (K, total - K - N))  # zeros outside the signal
    x = x.view(-1, orig).T[None]  # (1, orig, blocks + Q - 1) polyphase view
    y = F.conv1d(x, weight)  # (1, new, blocks)
    return y[0].T.reshape(-1)[:n_out].contiguous()  # (n_out,)


# ----------------------------------------------------------------------------- mel front end


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale: linear below 1 kHz (3 mels per 200 Hz), log above.
    f = np.asarray(f, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    above = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / log_step
    return np.where(f < 1000.0, f / (200.0 / 3), above)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    log_step = math.log(6.4) / 27.0
    return np.where(m < 15.0, (200.0 / 3) * m, 1000.0 * np.exp(log_step * (m - 15.0)))


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80) -> Tensor:
    """(n_mels, N_FFT // 2 + 1) triangles, Slaney scale + Slaney area norm, 0-8000 Hz.

    The same matrix as `librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)` and as
    openai-whisper's shipped `mel_80` / `mel_128` (tests/test_whisper_enc.py checks it).
    """
    fft_hz = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)  # (N_FFT // 2 + 1,)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    width = np.diff(mel_hz)  # (n_mels + 1,)
    ramps = mel_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_freq)
    rising = -ramps[:-2] / width[:-1, None]
    falling = ramps[2:] / width[1:, None]
    tri = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, n_freq)
    # Rounded to float32 before the area norm, as librosa does: then the matrix equals
    # whisper's shipped mel_80 bit for bit (otherwise 1 ulp off in ~1 % of the entries).
    tri = tri.astype(np.float32) * (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]  # equal areas
    return torch.from_numpy(tri.astype(np.float32))


def log_mel_spectrogram(audio: Tensor | np.ndarray, n_mels: int = 80, pad_to_frames: int | None = None) -> Tensor:
    """16 kHz mono audio (N,) -> Whisper log-mel (n_mels, N // HOP_LENGTH).

    docs/release.md §2: periodic Hann STFT (400/160, centred, reflect), last frame dropped, |X|^2, mel,
    log10 floored at 1e-10, then at (utterance max - 8), then (x + 4) / 4. No padding by default
    (the release feeds the true length); `pad_to_frames=3000` zero-pads the audio first, as
    openai-whisper's `pad_or_trim` does (longer audio raises instead of being cut).
    Use `pad_to_frames=N_FRAMES_30S` to feed openai-whisper / Hugging Face models.
    """
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    if audio.dim() != 1:
        raise ValueError(f"log_mel_spectrogram wants mono audio (N,), got {tuple(audio.shape)}")
    if audio.shape[0] <= N_FFT // 2:  # the centred STFT reflects 200 samples at each end
        raise ValueError(f"{audio.shape[0]} audio samples: need at least {N_FFT // 2 + 1}")
    if pad_to_frames is not None:
        n = pad_to_frames * HOP_LENGTH
        if audio.shape[0] > n:
            raise ValueError(f"{audio.shape[0]} audio samples do not fit {pad_to_frames} frames")
        audio = F.pad(audio, (0, n - audio.shape[0]))
    window = torch.hann_window(N_FFT, device=audio.device, dtype=audio.dtype)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[:, :-1].abs() ** 2  # (n_freq, T)
    mel = mel_filters(n_mels).to(audio.device, audio.dtype) @ power  # (n_mels, T)
    log_mel = torch.clamp(mel, min=1e-10).log10()
    log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)
    return (log_mel + 4.0) / 4.0


# ----------------------------------------------------------------------------- config


@dataclass
class WhisperConfig:
    n_mels: int = 80
    d_model: int = 1024
    n_layers: int = 24
    n_heads: int = 16
    d_mlp: int = 4096
    dropout: float = 0.0  # the release trains with 0.1 (embedding + each residual branch)

    def __post_init__(self):
        assert self.d_model % self.n_heads == 0, "d_model must be a multiple of n_heads"
        self.head_dim = self.d_model // self.n_heads

    @classmethod
    def from_name(cls, name: str, **overrides) -> "WhisperConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown WhisperConfig preset {name!r}; have {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS = {
    # Whisper-medium's encoder (docs/release.md §3): 305.7 M parameters as checkpoint.count_params counts them
    # (no position table: ours is a formula); 307.2 M with HF's 1500 x 1024 table.
    "medium": dict(n_mels=80, d_model=1024, n_layers=24, n_heads=16, d_mlp=4096),
    # The toy study's encoder: 0.4 M parameters.
    "toy": dict(n_mels=80, d_model=128, n_layers=2, n_heads=4, d_mlp=512),
    # Unit tests; the dims of tests/fixtures/reference's tiny WeNet encoder. 0.12 M parameters.
    "tiny": dict(n_mels=80, d_model=64, n_layers=2, n_heads=4, d_mlp=256),
}


# ----------------------------------------------------------------------------- modules


def sinusoids(length: int, channels: int, device=None) -> Tensor:
    """Whisper's position table (length, channels) = [sin(t * inv) | cos(t * inv)], float32.

    Computed exactly as openai-whisper does (float32 products), for any length: the release
    feeds up to 2000 positions, past the 1500 rows of the OpenAI/HF tables.
    """
    inv = torch.exp(
        -math.log(10000) / (channels // 2 - 1) * torch.arange(channels // 2, device=device)
    )  # (channels / 2,)
    t = torch.arange(length, device=device)[:, None] * inv[None, :]  # (length, channels / 2)
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class LayerNorm(nn.LayerNorm):
    """Normalised in float32 whatever the weights' dtype (bf16 training), cast back. The adapter's too."""

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.query = nn.Linear(cfg.d_model, cfg.d_model)
        self.key = nn.Linear(cfg.d_model, cfg.d_model, bias=False)  # Whisper's k has no bias
        self.value = nn.Linear(cfg.d_model, cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        B, T, C = x.shape
        q = self.query(x).view(B, T, self.n_heads, -1).transpose(1, 2)  # (B, H, T, hd)
        k = self.key(x).view(B, T, self.n_heads, -1).transpose(1, 2)  # (B, H, T, hd)
        v = self.value(x).view(B, T, self.n_heads, -1).transpose(1, 2)  # (B, H, T, hd)
        # mask (B, 1, 1, T) True = a real key; padded keys get no weight. Scale 1/sqrt(hd).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.attn = MultiHeadAttention(cfg)
        self.attn_ln = LayerNorm(cfg.d_model, eps=LN_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(), nn.Linear(cfg.d_mlp, cfg.d_model)
        )  # exact (erf) GELU, as Whisper
        self.mlp_ln = LayerNorm(cfg.d_model, eps=LN_EPS)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.drop(self.attn(self.attn_ln(x), mask))
        return x + self.drop(self.mlp(self.mlp_ln(x)))


class WhisperEncoder(nn.Module):
    """Conv stem (2x down-sampling) + sinusoid positions + pre-LN Transformer + ln_post."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(ResidualAttentionBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_post = LayerNorm(cfg.d_model, eps=LN_EPS)
        self.gradient_checkpointing = False

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """mel (B, n_mels, T), lengths (B,) valid frames or None (all T) ->
        features (B, ceil(T/2), d_model), lengths' (B,) = ceil(lengths / 2).

        Each utterance of a padded batch gets the features it has alone: the frames past its
        length are zeroed before each conv (the conv padding then sees the zeros it would see
        alone), padded keys are masked in attention, and the padded output frames are zero.
        The release instead derives lengths' from the padded length's parity (docs/release.md §3).
        """
        B, _, T = mel.shape
        T2 = (T + 1) // 2
        if lengths is None or bool((lengths == T).all()):
            x = F.gelu(self.conv2(F.gelu(self.conv1(mel))))  # (B, C, T2)
            keep = mask = None
            out_lengths = torch.full((B,), T2, dtype=torch.long, device=mel.device)
        else:
            if bool((lengths < 1).any()) or bool((lengths > T).any()):
                raise ValueError(f"lengths must be in [1, {T}], got {lengths.tolist()}")
            valid = (torch.arange(T, device=mel.device) < lengths[:, None])[:, None]  # (B, 1, T)
            x = F.gelu(self.conv1(mel.masked_fill(~valid, 0)))  # (B, C, T)
            x = x.masked_fill(~valid, 0)
            x = F.gelu(self.conv2(x))  # (B, C, T2)
            out_lengths = (lengths + 1) // 2
            keep = torch.arange(T2, device=mel.device) < out_lengths[:, None]  # (B, T2)
            mask = keep[:, None, None, :]  # (B, 1, 1, T2) attend to real keys only
        x = x.transpose(1, 2)  # (B, T2, C)
        x = self.drop(x + sinusoids(T2, x.shape[-1], x.device).to(x.dtype))
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        x = self.ln_post(x)  # (B, T2, C)
        if keep is not None:
            x = x.masked_fill(~keep[..., None], 0)
        return x, out_lengths


# ----------------------------------------------------------------------------- loading

# One rename table per layout of docs/release.md §3, relative to the encoder's root (the prefix, e.g.
# `encoder.`, is found by `_find_layout`). Keys map module -> module (`.weight` / `.bias`
# follow), `{}` is the layer index; `None` marks a full key dropped on purpose: all of them
# are sinusoid position tables, checked against the formula before they are dropped.
_OPENAI = {  # OpenAI `medium.pt` (`encoder.`); also our own names (root "" or `encoder.`)
    "conv1": "conv1",
    "conv2": "conv2",
    "positional_embedding": None,  # (1500, d) buffer
    "blocks.{}.attn.query": "blocks.{}.attn.query",
    "blocks.{}.attn.key": "blocks.{}.attn.key",
    "blocks.{}.attn.value": "blocks.{}.attn.value",
    "blocks.{}.attn.out": "blocks.{}.attn.out",
    "blocks.{}.attn_ln": "blocks.{}.attn_ln",
    "blocks.{}.mlp.0": "blocks.{}.mlp.0",
    "blocks.{}.mlp.2": "blocks.{}.mlp.2",
    "blocks.{}.mlp_ln": "blocks.{}.mlp_ln",
    "ln_post": "ln_post",
}
_HF = {  # Hugging Face `openai/whisper-*` (`model.encoder.`; `encoder.` in a bare WhisperModel)
    "conv1": "conv1",
    "conv2": "conv2",
    "embed_positions.weight": None,  # (1500, d) Embedding, frozen
    "layers.{}.self_attn.q_proj": "blocks.{}.attn.query",
    "layers.{}.self_attn.k_proj": "blocks.{}.attn.key",
    "layers.{}.self_attn.v_proj": "blocks.{}.attn.value",
    "layers.{}.self_attn.out_proj": "blocks.{}.attn.out",
    "layers.{}.self_attn_layer_norm": "blocks.{}.attn_ln",
    "layers.{}.fc1": "blocks.{}.mlp.0",
    "layers.{}.fc2": "blocks.{}.mlp.2",
    "layers.{}.final_layer_norm": "blocks.{}.mlp_ln",
    "layer_norm": "ln_post",
}
_WENET = {  # released I-OSUM-Pangu checkpoint (`encoder.`, WeNet TransformerEncoder)
    "embed.conv.0": "conv1",
    "embed.conv.2": "conv2",
    "embed.pos_enc.pe": None,  # (1, 30000, d) buffer; absent from some files
    "encoders.{}.self_attn.linear_q": "blocks.{}.attn.query",
    "encoders.{}.self_attn.linear_k": "blocks.{}.attn.key",
    "encoders.{}.self_attn.linear_v": "blocks.{}.attn.value",
    "encoders.{}.self_attn.linear_out": "blocks.{}.attn.out",
    "encoders.{}.norm1": "blocks.{}.attn_ln",
    "encoders.{}.feed_forward.w_1": "blocks.{}.mlp.0",
    "encoders.{}.feed_forward.w_2": "blocks.{}.mlp.2",
    "encoders.{}.norm2": "blocks.{}.mlp_ln",
    "after_norm": "ln_post",
}
LAYOUTS = {"openai": _OPENAI, "hf": _HF, "wenet": _WENET}
_MARKERS = {  # module names only this layout has, to recognise it from its keys
    "openai": ("blocks.", "ln_post.", "positional_embedding"),
    "hf": ("layers.", "layer_norm.", "embed_positions."),
    "wenet": ("encoders.", "after_norm.", "embed."),
}
_ROOTS = ("model.encoder.", "encoder.", "")  # longest first


def _compile(table: dict) -> list[tuple[re.Pattern, str | None]]:
    out = []
    for src, dst in table.items():
        pat = re.escape(src).replace(r"\{\}", r"(\d+)")
        pat = pat if dst is None else pat + r"\.(weight|bias)"
        out.append((re.compile(pat), dst))
    return out


_COMPILED = {name: _compile(table) for name, table in LAYOUTS.items()}


def _find_layout(keys) -> tuple[str, str]:
    """-> (layout, root prefix), from the key names alone."""
    keys = list(keys)
    for root in _ROOTS:
        rest = [k[len(root) :] for k in keys if k.startswith(root)]
        found = [n for n, marks in _MARKERS.items() if any(r.startswith(marks) for r in rest)]
        if len(found) > 1:
            raise ValueError(f"keys under {root!r} mix the {found} Whisper layouts")
        if found:
            return found[0], root
    raise ValueError(
        f"no Whisper encoder layout (OpenAI / Hugging Face / WeNet) recognised in {len(keys)} "
        f"keys, e.g. {sorted(keys)[:5]}"
    )


def check_positions(key: str, table: Tensor, formula=sinusoids) -> None:
    """Raise unless a stored position table, (N, d) or WeNet's (1, N, d), is formula(N, d).

    The loaders drop such tables after this check: ours are computed (the adapter's formula is
    its own, `adapter.sinusoids_interleaved`).
    """
    if table.is_meta:
        return  # nothing to compare on the meta device
    pe = table.reshape(-1, table.shape[-1]).float()  # (N, d)
    # Another layout ([sin | cos] vs interleaved) or a learned table is off by O(1); float32 argument
    # rounding at t = 30000 (~4e-3) and bf16 storage (~4e-3) are not.
    err = (pe - formula(*pe.shape)).abs().max().item()
    if err > 1e-2:
        raise ValueError(f"{key}: position table differs from the {formula.__name__} formula by {err:.3g}")


def whisper_state_dict(sd: dict) -> dict:
    """State dict in any docs/release.md §3 layout (keys with their prefix) -> our module names.

    Keys outside the encoder's root (`decoder.*`, `llama_model.*`, ...) are ignored on purpose:
    whole-model checkpoints hold the encoder beside other parts. Raises naming unknown keys.
    """
    return _convert(sd)[0]


def _convert(sd: dict) -> tuple[dict, dict]:
    """-> (our name -> tensor, our name -> the checkpoint's key), for error messages."""
    layout, root = _find_layout(sd)
    out, origin, unknown = {}, {}, []
    for key, value in sd.items():
        if not key.startswith(root):
            continue
        rest = key[len(root) :]
        for pat, dst in _COMPILED[layout]:
            m = pat.fullmatch(rest)
            if m is None:
                continue
            if dst is None:
                check_positions(key, value)
            else:
                module = dst.replace("{}", m.group(1)) if "{}" in dst else dst
                new = f"{module}.{m.group(m.lastindex)}"  # + weight / bias
                out[new], origin[new] = value, key
            break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown keys for the {layout} Whisper layout: {sorted(unknown)}")
    return out, origin


def _config_from_shapes(sd: dict, n_heads: int | None) -> WhisperConfig:
    d_model, n_mels, _ = sd["conv1.weight"].shape
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    return WhisperConfig(
        n_mels=n_mels,
        d_model=d_model,
        n_layers=len(blocks),
        n_heads=n_heads or d_model // HEAD_DIM,  # head dim 64 in every Whisper size
        d_mlp=sd["blocks.0.mlp.0.weight"].shape[0],
    )


def load_whisper(
    path_or_state_dict, cfg: WhisperConfig | None = None, dtype: torch.dtype | None = None
) -> WhisperEncoder:
    """Strictly load a Whisper encoder from a path or a state dict in any docs/release.md §3 layout.

    Paths: an OpenAI `.pt`, a Hugging Face safetensors file or folder (sharded or not), or a
    WeNet / released checkpoint (`.pt` or `.safetensors`). Only the encoder's keys are kept;
    the rest (`decoder.`, `llama_model.`, the adapter) is ignored on purpose. `cfg` is inferred
    from the shapes when None (n_heads from OpenAI `dims` or HF `config.json`, else d / 64).
    Built on the meta device and filled with `assign=True`: the tensors are the checkpoint's
    (memory-mapped), converted once to `dtype` (default: torch's default, float32).
    """
    source, n_heads = "state dict", None
    if isinstance(path_or_state_dict, dict):
        sd = path_or_state_dict
    else:
        path = Path(path_or_state_dict)
        source = str(path)
        sd, extra = read_checkpoint(path)
        n_heads = extra.get("dims", {}).get("n_audio_head")  # OpenAI: {"dims", "model_state_dict"}
        if path.is_dir() and (path / "config.json").exists():  # HF config.json beside the weights
            n_heads = json.loads((path / "config.json").read_text()).get("encoder_attention_heads")
    sd, origin = _convert(sd)
    if cfg is None:
        if "conv1.weight" not in sd or "blocks.0.mlp.0.weight" not in sd:
            raise ValueError(f"{source}: cannot infer the config without conv1 / blocks.0.mlp.0")
        cfg = _config_from_shapes(sd, n_heads)
    with torch.device("meta"):
        model = WhisperEncoder(cfg)
    load_strict(model, sd, f"{source} (as {cfg}, our module names)", dtype or torch.get_default_dtype(), origin)
    return model
