"""Adapter parity with the original code's tensors (tests/fixtures/reference) and batch invariance."""

import pytest
import torch
from safetensors.torch import load_file

from adapter import (
    PE_KEY,
    Adapter,
    AdapterConfig,
    adapter_state_dict,
    sinusoids_interleaved,
)
from whisper_enc import check_positions

# Parity with the original's float32 run (ATOL, rtol 1e-4): other code and other CPU kernels
# (oneDNN conv, MKL GEMM blocked per ISA) sum in other orders. Rounding in a K-term float32 dot
# product is random-signed, ~sqrt(K) * eps (eps 1.19e-7) of its |terms|: K <= 2560 (speech
# transformer FFN) gives ~6e-6 relative. The original is within 1.9e-7 of a float64 copy
# (report.json); we measure <= 2.9e-6 (values up to 2.4): atol 1e-5 + 1e-4 * |ref| is >= 3x that.
ATOL = 1e-5


@pytest.fixture
def fixtures(reference_dir):
    return load_file(reference_dir / "fixtures.safetensors")


def reference_adapter(path) -> Adapter:
    sd = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    cfg = AdapterConfig.from_name("osum_echat", d_in=64, d_model=64, d_out=64)
    model = Adapter(cfg).eval()
    model.load_state_dict(adapter_state_dict(sd), strict=True)
    return model


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@torch.no_grad()
def test_reference_parity(reference_dir, reference_safetensors, fixtures, fmt):
    model = reference_adapter(reference_safetensors if fmt == "safetensors" else reference_dir / "checkpoint.pt")
    x = fixtures["encoder_out"][None]  # (1, 160, 64)
    down = model.down_sample_2(x)
    torch.testing.assert_close(down[0], fixtures["downsample_out"], atol=ATOL, rtol=1e-4)  # ATOL: K 192
    st = model.speech_transformer(down, torch.ones(1, down.shape[1], dtype=torch.bool))
    torch.testing.assert_close(st[0], fixtures["speech_transformer_out"], atol=ATOL, rtol=1e-4)  # ATOL: K 2560
    y, lengths = model(x, torch.tensor([160]))
    assert lengths.tolist() == [40]
    torch.testing.assert_close(y[0], fixtures["adapter_out"], atol=ATOL, rtol=1e-4)  # see ATOL


@torch.no_grad()
def test_reference_padded_batch(reference_safetensors, fixtures):
    """The release's adapter on the release's padded encoder batch: same lengths, same valid
    frames (its padded encoder frames hold garbage, so this also checks the key mask)."""
    model = reference_adapter(reference_safetensors)
    y, lengths = model(fixtures["batch2_encoder_out"], fixtures["batch2_encoder_lens"])
    assert lengths.tolist() == fixtures["batch2_adapter_lens"].tolist() == [40, 32]
    mask = fixtures["batch2_adapter_mask"].bool()
    assert (torch.arange(40)[None] < lengths[:, None]).equal(mask)
    want = fixtures["batch2_adapter_out"]
    torch.testing.assert_close(y[mask], want[mask], atol=ATOL, rtol=1e-4)  # see ATOL
    # the short row alone (the release's encoder gives it 126 frames alone)
    y1, l1 = model(fixtures["short_alone_encoder_out"][None])
    assert l1.tolist() == [32]
    torch.testing.assert_close(y1[0], fixtures["short_alone_adapter_out"], atol=ATOL, rtol=1e-4)  # see ATOL


def test_lengths_follow_release_mask():
    """Our integer lengths equal the release's `mask[..., ::2][..., ::2]` subsampling, and the
    conv output is exactly as long as the subsampled padded mask."""
    model = Adapter(AdapterConfig.from_name("tiny")).eval()
    for T in range(1, 30):
        x = torch.randn(1, T, 64)
        lengths = torch.arange(1, T + 1)
        mask = torch.arange(T)[None, :] < lengths[:, None]  # (T, T)
        want = mask[:, ::2][:, ::2]
        with torch.no_grad():
            y, got = model(x.expand(T, T, 64), lengths)
        assert got.tolist() == want.sum(-1).tolist()
        assert y.shape[1] == want.shape[1]


@torch.no_grad()
def test_batch_equals_single():
    torch.manual_seed(1)
    model = Adapter(AdapterConfig.from_name("tiny")).eval()
    lengths = [37, 20, 5, 1]
    xs = [torch.randn(1, n, 64) for n in lengths]
    batch = torch.randn(len(xs), max(lengths), 64) * 10  # garbage in the padding
    for i, x in enumerate(xs):
        batch[i, : lengths[i]] = x[0]
    y, yl = model(batch, torch.tensor(lengths))
    for i, x in enumerate(xs):
        y1, l1 = model(x)
        assert yl[i] == l1[0]
        # Same code and CPU, other shapes: GEMM blocking and reduction splits may change with the
        # row count, ~sqrt(K) * eps relative for K <= 128 (FFN): ~1.4e-6; measured 4.8e-7.
        torch.testing.assert_close(y[i, : l1[0]], y1[0], atol=1e-5, rtol=1e-5)


def test_release_preset_size_and_keys():
    with torch.device("meta"):
        model = Adapter(AdapterConfig.from_name("osum_echat"))
    n = sum(p.numel() for p in model.parameters())
    assert 52.0e6 < n < 53.0e6, n  # docs/release.md §4: "about 52 M"
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["down_sample_2.conv.1.weight"] == (1024, 1024, 3)
    assert shapes["down_sample_2.conv.7.bias"] == (1024,)
    assert shapes["speech_transformer.embed.out.0.weight"] == (1024, 1024)
    assert shapes["speech_transformer.embed.out.1.bias"] == (1024,)
    assert shapes["speech_transformer.encoders.3.feed_forward.w_1.weight"] == (2560, 1024)
    assert shapes["speech_transformer.encoders.3.self_attn.linear_k.bias"] == (1024,)
    assert shapes["speech_transformer.after_norm.weight"] == (1024,)
    assert shapes["speech_llama_proj.weight"] == (4096, 1024)
    assert len(shapes) == 6 + 4 + 4 * 16 + 2 + 2


def test_position_table_checked_and_dropped(fixtures):
    # Both tables are the same float32 formula, but exp and sin kernels differ by CPU (SLEEF
    # AVX2 / AVX-512, libm), each within ~1 ulp. Arguments reach 39 rad: 2 ulp of div (<= 1.2e-7
    # for div < 1; div = 1 exactly at channel 0) times 39 is 4.7e-6, + 1 ulp of the product
    # (1.9e-6 at 29 rad), + sin's own ~1e-7: <= 7e-6 < 1e-5. Measured 1.8e-6 on an AVX-512 Xeon
    # (the old 1e-6 failed there). A wrong table is off by O(1).
    torch.testing.assert_close(
        sinusoids_interleaved(40, 64), fixtures["pe_speech_transformer_first40"], atol=1e-5, rtol=0
    )
    pe = sinusoids_interleaved(5000, 64)[None]
    check_positions(PE_KEY, pe, sinusoids_interleaved)
    check_positions(PE_KEY, pe.bfloat16(), sinusoids_interleaved)
    sd = adapter_state_dict({PE_KEY: pe, "speech_llama_proj.bias": torch.zeros(2), "x.y": 1})
    assert list(sd) == ["speech_llama_proj.bias"]
    whisper_style = torch.cat([pe[..., 0::2], pe[..., 1::2]], -1)  # [sin | cos]: wrong table
    with pytest.raises(ValueError, match="pos_enc.pe"):
        adapter_state_dict({PE_KEY: whisper_style})


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(2)
    model = Adapter(AdapterConfig.from_name("tiny", dropout=0.0)).train()
    x, lengths = torch.randn(2, 21, 64), torch.tensor([21, 13])
    grads = []
    for on in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = on
        y, yl = model(x, lengths)
        y[0, : yl[0]].sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        # Recomputation runs the same kernels on the same shapes (measured bit-equal); only the
        # order autograd accumulates a gradient's contributions may differ: a few eps, << 1e-5.
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
