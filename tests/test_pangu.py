"""pangu.py against transformers' LlamaForCausalLM (same function as openPangu), peft's LoRA,
and the tensors the original I-OSUM-Pangu code produced (tests/fixtures/reference)."""

import copy
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from cpu_decode import pack_for_cpu
from pangu import (
    LORA_TARGETS,
    Pangu,
    PanguConfig,
    apply_lora,
    generate,
    load_pangu,
    lora_parameters,
    merge_lora,
    pangu_state_dict,
    unmerge_lora,
)

V = 256  # small random model with GQA (4 heads, 2 kv heads) and biases on q/k/v/o


def hf_config(**kw):
    c = dict(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        mlp_bias=False,
        rope_theta=1.6e7,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaConfig(**{**c, **kw})


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random LlamaForCausalLM saved by transformers as sharded safetensors."""
    torch.manual_seed(1234)
    hf = LlamaForCausalLM(hf_config()).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for n, p in hf.named_parameters():
            if "norm" in n or "bias" in n:
                p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(d, max_shard_size="60KB", safe_serialization=True)
    assert len(list(d.glob("model-*.safetensors"))) > 3 and (d / "model.safetensors.index.json").exists()
    return d


@pytest.fixture(scope="module")
def hf(hf_dir):
    return LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def ours(hf_dir):
    return load_pangu(hf_dir)


def positions(mask):
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def padded_batch(lengths, L, seed):
    """Ids (B, L) and a mask with pads inside and at the start (the last column is real)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (len(lengths), L), generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for b, n in enumerate(lengths):
        keep = torch.randperm(L - 1, generator=g)[: n - 1]
        mask[b, keep] = 1
        mask[b, -1] = 1
    return ids, mask


def test_config_from_json(hf_dir):
    cfg = PanguConfig.from_json(hf_dir / "config.json")
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (64, 2, 4, 2, 16)
    assert (cfg.intermediate_size, cfg.rope_theta, cfg.norm_eps, cfg.bias) == (
        160,
        1.6e7,
        1e-5,
        True,
    )


@torch.no_grad()
def test_logits_match_hf(hf, ours):
    ids, _ = padded_batch([10, 10], 10, seed=0)
    # Measured 0.0: the same kernels as HF's Llama (sdpa) on the same shapes, deterministic on
    # any CPU. Slack if one side reorders an op: ~sqrt(K) * eps * |x| per op (K <= 160, |x| <= 4:
    # 6e-6), a dozen such ops < 1e-4. Same for the masked batch below.
    torch.testing.assert_close(ours(input_ids=ids), hf(input_ids=ids).logits, atol=1e-4, rtol=0)
    # pads inside and at the start; HF gets the same 2D mask and position ids
    ids, mask = padded_batch([12, 7, 9], 12, seed=1)
    pos = positions(mask)
    want = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    got = ours(input_ids=ids, attention_mask=mask, position_ids=pos)
    real = mask.bool()
    assert not torch.equal(mask, torch.ones_like(mask))
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)  # as above
    # inputs_embeds gives the same as input_ids
    got_e = ours(inputs_embeds=ours.embed(ids), attention_mask=mask, position_ids=pos)
    torch.testing.assert_close(got_e, got, atol=0, rtol=0)  # the same lookup, then the same ops: exact


@torch.no_grad()
def greedy_uncached(model, embeds, mask, n):
    """Full re-forward every step, no cache; positions cumsum(mask) - 1."""
    out = []
    for _ in range(n):
        logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask))
        last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
        tok = logits[torch.arange(len(mask)), last].argmax(-1)  # (B,)
        out.append(tok)
        embeds = torch.cat([embeds, model.embed(tok[:, None])], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1).tolist()


@torch.no_grad()
def test_cached_greedy_equals_uncached(ours):
    ids, mask = padded_batch([9, 5, 12], 12, seed=2)
    embeds = ours.embed(ids)
    got = generate(ours, embeds, mask, max_new_tokens=12, eos_id=-1)
    assert got == greedy_uncached(ours, embeds, mask, 12)


@torch.no_grad()
def test_batch_equals_alone(ours):
    lengths = [4, 11, 7, 1]
    ids, mask = padded_batch(lengths, 14, seed=3)
    embeds = ours.embed(ids)
    batch = generate(ours, embeds, mask, max_new_tokens=10, eos_id=-1, repetition_penalty=1.05)
    for b in range(len(lengths)):
        real = embeds[b : b + 1, mask[b].bool()]  # the prompt alone, without any pad
        alone = generate(ours, real, torch.ones(1, lengths[b]), 10, eos_id=-1, repetition_penalty=1.05)
        assert batch[b] == alone[0], b


@torch.no_grad()
def test_generate_matches_hf_generate(hf, ours):
    ids, mask = padded_batch([8, 5, 10], 10, seed=4)
    embeds = hf.get_input_embeddings()(ids)
    kw = dict(do_sample=False, repetition_penalty=1.05, pad_token_id=0, max_new_tokens=14)
    # pick an eos that one row meets on the way, so stopping per row is exercised
    probe = hf.generate(inputs_embeds=embeds, attention_mask=mask, eos_token_id=None, **kw)
    eos = int(probe[0, 5])
    want = hf.generate(inputs_embeds=embeds, attention_mask=mask, eos_token_id=eos, **kw).tolist()
    want = [row[: row.index(eos)] if eos in row else row for row in want]
    got = generate(ours, embeds, mask, 14, eos_id=eos, repetition_penalty=1.05)
    assert got == want
    assert min(map(len, got)) < 14  # the eos fired somewhere


@torch.no_grad()
def test_sampling_options(ours):
    ids, mask = padded_batch([6, 6], 6, seed=5)
    embeds = ours.embed(ids)
    run = lambda seed, **kw: generate(
        ours, embeds, mask, 8, eos_id=-1, generator=torch.Generator().manual_seed(seed), **kw
    )
    assert run(0, temperature=1.0) == run(0, temperature=1.0)  # seeded
    # top_k 1 and a tiny top_p leave only the best token: greedy
    greedy = generate(ours, embeds, mask, 8, eos_id=-1)
    assert run(1, temperature=0.7, top_k=1) == greedy
    assert run(2, temperature=1.3, top_p=1e-6) == greedy


# ------------------------------------------------------------------ LoRA vs peft


@pytest.fixture(scope="module")
def peft_pair(hf_dir):
    from peft import LoraConfig, get_peft_model

    hf = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
    pm = get_peft_model(hf, cfg).eval()
    torch.manual_seed(7)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.1 * torch.randn_like(p))  # B is zero after peft's init
    sd = pm.state_dict()
    assert any(".base_layer.weight" in k for k in sd) and any("lora_A.default" in k for k in sd)
    return pm, load_pangu(dict(sd), PanguConfig.from_json(hf_dir / "config.json"), lora_alpha=8)


@torch.no_grad()
def test_lora_matches_peft(peft_pair):
    pm, ours = peft_pair
    ids, mask = padded_batch([9, 6], 9, seed=6)
    pos = positions(mask)
    want = pm(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    got = ours(input_ids=ids, attention_mask=mask, position_ids=pos)
    real = mask.bool()
    # measured 0.0: base(x) + scale * B(A(x)) in peft's order, the same kernels; slack as for HF
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)
    base = pm.get_base_model()
    with pm.disable_adapter():
        plain = base(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert (plain[real] - want[real]).abs().max() > 1e-2  # LoRA does change the logits
    merge_lora(ours)
    merged = ours(input_ids=ids, attention_mask=mask, position_ids=pos)
    unmerge_lora(ours)
    # Merged (W + s B A) and unmerged are equal in exact arithmetic; float32 rounds them apart by
    # ~sqrt(K) * eps relative per projection (K <= 160: 1.5e-6), i.e. noise of ~1e-6 on logits
    # <= 3 (measured max 2.6e-6 over 15 x 256 values). Another CPU changes which roundings happen, not
    # their size; 1e-5 is ~4x the max. Unmerging subtracts the rounded s B A again: same bound.
    torch.testing.assert_close(merged[real], got[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours(input_ids=ids, attention_mask=mask, position_ids=pos), got, atol=1e-5, rtol=0)


def test_lora_training_step_changes_only_lora(hf_dir):
    model = load_pangu(hf_dir)
    apply_lora(model, r=4, alpha=8, dropout=0.1)
    model.train()
    model.gradient_checkpointing = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    assert len(trainable) == 2 * 6 * 2  # A and B, six projections, two layers
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    ids, mask = padded_batch([8, 5], 8, seed=8)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    opt.step()
    for k, v in model.state_dict().items():
        changed = not torch.equal(v, before[k])
        assert changed == (".lora_A." in k or ".lora_B." in k), k


def test_gradient_checkpointing_same_grads(ours):
    model = load_pangu(ours.state_dict(), ours.cfg)
    ids, mask = padded_batch([7, 4], 7, seed=9)
    grads = []
    for gc in (False, True):
        model.zero_grad()
        model.train()
        model.gradient_checkpointing = gc
        model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        # Recomputation runs the same kernels on the same shapes (measured bit-equal); only the
        # order autograd accumulates a gradient's contributions may differ: a few eps, << 1e-5.
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ packed CPU weights

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN (mkldnn)"
)


@needs_onednn
@torch.no_grad()
def test_packed_equals_unpacked(ours):
    packed = pack_for_cpu(copy.deepcopy(ours))
    kinds = [type(m).__name__ for m in packed.modules()]
    assert kinds.count("PackedLinear") == 2 * 7 + 1 and "Linear" not in kinds
    ids, mask = padded_batch([12, 7, 9], 12, seed=10)
    pos = positions(mask)
    want = ours(input_ids=ids, attention_mask=mask, position_ids=pos)
    got = packed(input_ids=ids, attention_mask=mask, position_ids=pos)
    # oneDNN's packed GEMM vs torch's linear: other libraries may sum K <= 160 terms in another
    # order, ~sqrt(K) * eps * |x| (|x| <= 4: 6e-6 worst op, ~1e-6 typical); measured 0.0 here
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    embeds = ours.embed(ids)
    kw = dict(max_new_tokens=12, eos_id=-1, repetition_penalty=1.05)
    assert generate(packed, embeds, mask, **kw) == generate(ours, embeds, mask, **kw)
    # state_dict gives the original weights back, so a packed model saves losslessly
    sd, sd0 = packed.state_dict(), ours.state_dict()
    assert sd.keys() == sd0.keys() and all(torch.equal(sd[k], sd0[k]) for k in sd0)


@needs_onednn
@torch.no_grad()
def test_packed_lora_needs_merge(ours, peft_pair):
    late = apply_lora(copy.deepcopy(ours.model.layers[0]), r=2, alpha=4, targets=["up_proj"])
    with pytest.raises(ValueError, match="mlp.up_proj has unmerged LoRA.*merge_lora"):
        pack_for_cpu(late)  # found after q, k, v, o, gate: those must stay unpacked too
    assert not any(type(m).__name__ == "PackedLinear" for m in late.modules())
    lora = copy.deepcopy(peft_pair[1])
    ids, mask = padded_batch([9, 6], 9, seed=11)
    pos = positions(mask)
    want = lora(input_ids=ids, attention_mask=mask, position_ids=pos)
    merge_lora(lora)
    keys = lora.state_dict().keys()
    pack_for_cpu(lora)
    # merged + packed vs unmerged: the merge rounding of test_lora_matches_peft (measured 2.9e-6)
    torch.testing.assert_close(lora(input_ids=ids, attention_mask=mask, position_ids=pos), want, atol=1e-5, rtol=0)
    assert lora.state_dict().keys() == keys


@needs_onednn
@torch.no_grad()
def test_pack_bf16_packs_or_changes_nothing(ours):
    """bfloat16 packing needs AVX-512 or AVX-NE-CONVERT: where the CPU lacks them, the error
    says so before any layer was replaced; where it has them, the logits stay the same."""
    model = copy.deepcopy(ours).to(torch.bfloat16)
    ids, mask = padded_batch([8, 5], 8, seed=12)
    pos = positions(mask)
    want = model(input_ids=ids, attention_mask=mask, position_ids=pos)
    try:
        pack_for_cpu(model)
    except RuntimeError as e:
        assert "cannot pack torch.bfloat16 weights on this CPU" in str(e)
        assert not any(type(m).__name__ == "PackedLinear" for m in model.modules())
    got = model(input_ids=ids, attention_mask=mask, position_ids=pos)
    # bf16: each linear's output is rounded to 2^-8 relative, and another GEMM order can flip that
    # rounding: ~1 bf16 ulp (0.4 %) per linear, ~15 linears, random signs: ~1.5 % of |x| <= 3.4.
    # atol 0.05 + 2 % covers it (measured 0.0 here); a wrong packing is off by O(1).
    torch.testing.assert_close(got.float(), want.float(), atol=0.05, rtol=0.02)


# ------------------------------------------------------------------ the 7 B shape


def spec_keys(n_layers):
    """The openPangu-Embedded-7B-V1.1 keys as docs/release.md §5 lists them."""
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        keys |= {p + f"self_attn.{x}_proj.{w}" for x in "qkvo" for w in ("weight", "bias")}
        keys |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        keys |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
    return keys


def test_pangu_7b_preset_shapes_and_counts():
    cfg = PanguConfig.from_name("pangu-7b")
    with torch.device("meta"):
        model = Pangu(cfg)
        hf = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=153376,
                hidden_size=4096,
                num_hidden_layers=34,
                num_attention_heads=32,
                num_key_value_heads=8,
                intermediate_size=12800,
                attention_bias=True,
                mlp_bias=False,
                rope_theta=1.6e7,
                tie_word_embeddings=False,
            )
        )
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in hf.state_dict().items() if "rotary_emb" not in k}
    assert set(ours) == spec_keys(34) == set(want)
    assert ours == want
    assert (cfg.eos_id, cfg.bos_id, cfg.pad_id, cfg.head_dim) == (45892, 1, 0, 128)
    total = sum(p.numel() for p in model.parameters())
    body = total - 2 * 153376 * 4096
    assert abs(total / 1e9 - 8.03) < 0.01 and abs(body / 1e9 - 6.77) < 0.01, (total, body)
    apply_lora(model, r=64, alpha=32)
    n_lora = sum(p.numel() for p in lora_parameters(model))
    assert abs(n_lora / 1e6 - 131) < 1, n_lora
    assert all(p.requires_grad == (p in set(lora_parameters(model))) for p in model.parameters())


# ------------------------------------------------------------------ loader errors


def test_loader_errors(hf_dir, tmp_path, ours):
    broken = tmp_path / "broken"
    shutil.copytree(hf_dir, broken)
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load_pangu(broken)

    sd = {k: v.clone() for k, v in ours.state_dict().items()}
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # dropped on purpose
    assert set(pangu_state_dict(sd)) == set(ours.state_dict())
    load_pangu(sd, ours.cfg)

    missing = dict(sd)
    del missing["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing keys model.layers.1.mlp.up_proj.weight"):
        load_pangu(missing, ours.cfg)

    wrong = dict(sd, **{"model.layers.0.self_attn.k_proj.bias": torch.zeros(16)})
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.k_proj.bias: \(16,\)"):
        load_pangu(wrong, ours.cfg)

    extra = dict(sd, **{"model.layers.0.self_attn.k_proj.scale": torch.zeros(1)})
    with pytest.raises(KeyError, match="unknown Pangu checkpoint layout.*k_proj.scale"):
        load_pangu(extra, ours.cfg)
    gpt2 = {"transformer.h.0.attn.c_attn.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match="unknown Pangu checkpoint layout.*transformer.h.0"):
        pangu_state_dict(gpt2)

    bad_index = tmp_path / "bad_index"
    shutil.copytree(hf_dir, bad_index)
    index = json.loads((bad_index / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "model-99999-of-99999.safetensors"
    (bad_index / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-99999-of-99999.safetensors"):
        load_pangu(bad_index)

    single = tmp_path / "single.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items() if "rotary" not in k}, single)
    with pytest.raises(ValueError, match="pass cfg"):
        load_pangu(single)
    assert torch.equal(load_pangu(single, ours.cfg).lm_head.weight, ours.lm_head.weight)


# ------------------------------------------------------------------ the original code's tensors


@pytest.fixture
def reference(reference_dir):
    ref = reference_dir
    sd = torch.load(ref / "checkpoint.pt", map_location="cpu", weights_only=True)
    llm = {k: v for k, v in sd.items() if k.startswith("llama_model.")}
    model = load_pangu(llm, PanguConfig.from_json(ref / "config.json"), lora_alpha=16)
    return model, load_file(ref / "fixtures.safetensors")


@torch.no_grad()
def test_reference_forward_logits(reference):
    model, fx = reference
    got = model(
        inputs_embeds=fx["forward_inputs_embeds"][None],
        attention_mask=fx["forward_attention_mask"][None],
        position_ids=fx["forward_position_ids"][None],
    )[0]
    # The original (HF + peft) on another CPU: other sum orders, K <= 160. The original is within
    # 2.3e-7 of float64 and its eager and sdpa runs 1.8e-7 apart (report.json); we measure 2.1e-7
    # (logits <= 0.6). Any float32 order stays within ~1e-6; 1e-4 is ~100x that. Same below.
    torch.testing.assert_close(got, fx["forward_logits"], atol=1e-4, rtol=0)
    # the batch of 2 with pads inside row 1 (its pad positions are never used)
    mask = fx["batch2_forward_attention_mask"]
    got = model(
        inputs_embeds=fx["batch2_forward_inputs_embeds"],
        attention_mask=mask,
        position_ids=fx["batch2_forward_position_ids"],
    )
    assert not mask[1].all()
    real = mask[1].bool()
    torch.testing.assert_close(got[1][real], fx["batch2_forward_logits_row1"][real], atol=1e-4, rtol=0)  # as above
    torch.testing.assert_close(got[0], fx["forward_logits"], atol=1e-4, rtol=0)  # as above


@torch.no_grad()
def test_reference_generate(reference):
    model, fx = reference
    embeds = fx["generate_inputs_embeds"][None]
    mask = torch.ones(1, embeds.shape[1], dtype=torch.long)
    assert greedy_uncached(model, embeds, mask, 16)[0] == fx["generate_ids"].tolist()
    eos = 511  # the fixtures' stand-in for [unused10]; it never fires here
    assert generate(model, embeds, mask, 16, eos_id=eos) == [fx["generate_ids"].tolist()]
    got = generate(model, embeds, mask, 16, eos_id=eos, repetition_penalty=1.05)
    assert got == [fx["generate_ids_reppen105"].tolist()]
