"""train.py: the WeNet schedule, device choice, atomic checkpoints, non-finite steps, exact
resume, Gloo DDP, gradient checkpointing, and one short toy run per stage."""

import json
import math
import os
import shutil
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

import data
import device
import toy
import train

# ----------------------------------------------------------------------------- stand-in pieces
# The generic loop is tested on a tiny regression model first (fast, independent of the model
# files); the per-stage tests below use the real model and toy data.


class StandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 1)
        )
        self.frozen = torch.nn.Linear(8, 8)
        self.frozen.requires_grad_(False)

    def forward(self, batch):
        return self.body(self.frozen(batch["x"])).squeeze(-1)


def standin_step(model, batch):
    loss = torch.nn.functional.mse_loss(model(batch), batch["y"]) * batch.get("scale", 1.0)
    return loss, batch["x"].shape[0]


def standin_epoch(n_batches=6, nan_at=()):
    def make(epoch, start):
        g = torch.Generator().manual_seed(100 + epoch)
        w = torch.linspace(-1, 1, 8)
        for i in range(n_batches):
            x = torch.randn(4, 8, generator=g)
            if i < start:
                continue
            b = {"x": x, "y": x @ w}
            if (epoch, i) in nan_at:
                b["scale"] = float("nan")
            yield b

    return make


def standin_args(tmp_path, *extra):
    return train.parse_args(
        [
            "--stage",
            "1",
            "--out",
            str(tmp_path),
            "--lr",
            "1e-2",
            "--warmup",
            "2",
            "--accum",
            "2",
            "--eval-every",
            "0",
            "--log-every",
            "1",
            *extra,
        ]
    )


def standin_run(tmp_path, *extra, nan_at=()):
    torch.manual_seed(0)
    model = StandIn()
    (tmp_path).mkdir(parents=True, exist_ok=True)
    args = standin_args(tmp_path, *extra)
    res = train.train_loop(
        args,
        model,
        standin_step,
        toy.EpochLoader(standin_epoch(nan_at=nan_at)),
        lambda: standin_epoch()(0, 0),
        {"model": "stand-in"},
        "cpu",
    )
    return model, res


# ----------------------------------------------------------------------------- schedule


def test_warmup_lr_matches_wenet_formula():
    # WeNet WarmupLR: lr * w^0.5 * min(s^-0.5, s * w^-1.5): lr/2 halfway through warm-up,
    # lr at s = w, lr / 2 at s = 4w, lr / 10 at s = 100w.
    lr, w = 5e-4, 2000
    # float64 formula: a few ulp (~1e-16 relative) from these values; approx allows 1e-6 relative
    assert train.warmup_lr(1000, lr, w) == pytest.approx(lr / 2)
    assert train.warmup_lr(2000, lr, w) == pytest.approx(lr)
    assert train.warmup_lr(8000, lr, w) == pytest.approx(lr / 2)
    assert train.warmup_lr(200_000, lr, w) == pytest.approx(lr / 10)


def test_release_defaults_and_overrides():
    a = train.parse_args(["--stage", "3", "--preset", "iosum-pangu-7b"])
    assert (a.lr, a.warmup, a.accum, a.clip, a.weight_decay) == (5e-4, 2000, 4, 5.0, 0.01)
    assert a.out == "runs/iosum-pangu-7b/stage3"
    assert a.freeze_encoder is False  # the release trains Whisper-medium in stages 1 and 3; the toy's stays frozen
    b = train.parse_args(["--stage", "3", "--preset", "iosum-pangu-7b", "--lr", "1e-4", "--accum", "8"])
    assert (b.lr, b.accum) == (1e-4, 8)
    assert train.parse_args(["--stage", "1"]).freeze_encoder is True
    assert train.parse_args(["--stage", "1", "--no-freeze-encoder"]).freeze_encoder is False


def test_optimizer_is_the_release_adamw(tmp_path):
    model, _ = standin_run(tmp_path, "--steps", "1")
    state = torch.load(tmp_path / "step_0000001" / "train_state.pt", weights_only=True)
    g = state["optimizer"]["param_groups"][0]
    assert (g["betas"], g["eps"], g["weight_decay"]) == ((0.9, 0.99), 1e-6, 0.01)


# ----------------------------------------------------------------------------- devices


def test_device_auto_picks_fake_npu(monkeypatch):
    fake = types.ModuleType("torch_npu")
    calls = []
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.setattr(
        torch,
        "npu",
        types.SimpleNamespace(is_available=lambda: True, set_device=calls.append),
        raising=False,
    )
    assert device.pick_device("auto", local_rank=1) == "npu:1"
    assert calls == [1]
    assert device.BACKENDS["npu"] == "hccl"
    assert device.use_bf16("npu:1", "auto") and not device.use_bf16("cpu", "auto")


def test_device_npu_present_but_not_reporting_one_is_not_picked(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: False), raising=False)
    if not torch.cuda.is_available():
        assert device.pick_device("auto") == "cpu"
    with pytest.raises(SystemExit, match="no Ascend NPU"):
        device.pick_device("npu")


def test_absent_devices_asked_for_explicitly_are_clear_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # `import torch_npu` raises ImportError
    with pytest.raises(SystemExit, match="--device npu: no Ascend NPU"):
        device.pick_device("npu")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the absent-CUDA error cannot be shown")
    with pytest.raises(SystemExit, match="--device cuda: .* sees no CUDA device"):
        device.pick_device("cuda")
    assert device.pick_device("cpu") == "cpu"


# ----------------------------------------------------------------------------- checkpoints


def test_killed_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model, _ = standin_run(tmp_path, "--steps", "2")
    before = load_file(tmp_path / "step_0000002" / "model.safetensors")
    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then the process "dies"
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:
            fh.truncate(100)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(train.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        standin_run(tmp_path, "--steps", "3", "--resume")
    monkeypatch.undo()
    ckpt = train.find_checkpoint(tmp_path)
    assert ckpt.name == "step_0000002"
    weights, _, state = train.load_checkpoint(ckpt)
    assert state["step"] == 2
    assert all(torch.equal(weights[k], before[k]) for k in before)
    # the rename itself failing leaves it intact too, and the next save cleans up
    monkeypatch.setattr(train.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError):
        standin_run(tmp_path, "--steps", "3", "--resume")
    monkeypatch.undo()
    assert train.find_checkpoint(tmp_path).name == "step_0000002"
    standin_run(tmp_path, "--steps", "3", "--resume")
    assert train.find_checkpoint(tmp_path).name == "step_0000003"
    assert not list(tmp_path.glob(".step_*"))


def test_keep_last_k(tmp_path):
    standin_run(tmp_path, "--steps", "5", "--save-every", "1", "--keep", "2")
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000004", "step_0000005"]


def test_resume_is_exact_on_stand_in(tmp_path):
    # 6 batches per epoch, 2 per step: the resumed half crosses an epoch boundary
    m_full, full = standin_run(tmp_path / "a", "--steps", "6")
    standin_run(tmp_path / "b", "--steps", "3")
    m_res, res = standin_run(tmp_path / "b", "--steps", "6", "--resume")
    assert [r["step"] for r in res["history"]] == [4, 5, 6]
    # resume restores weights, optimizer, RNG and data position, then runs the same kernels: the
    # losses are bit-equal (measured 0.0; the weights below are compared exactly), 1e-6 is slack
    torch.testing.assert_close(
        [r["loss"] for r in res["history"]],
        [r["loss"] for r in full["history"][3:]],
        rtol=1e-6,
        atol=0,
    )
    for (n, a), b in zip(m_full.state_dict().items(), m_res.state_dict().values()):
        assert torch.equal(a, b), n


# ----------------------------------------------------------------------------- non-finite


def test_non_finite_loss_is_skipped_and_counted(tmp_path):
    torch.manual_seed(0)
    m0 = StandIn()
    model, res = standin_run(tmp_path, "--steps", "3", nan_at={(0, 2)})  # batch 2 = step 2
    assert [r["skipped"] for r in res["history"]] == [False, True, False]
    assert res["bad_steps"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(m0.body[0].weight, model.body[0].weight)


def test_too_many_non_finite_steps_stop_with_clear_error(tmp_path):
    nan_at = {(e, i) for e in range(3) for i in range(6)}
    with pytest.raises(train.NonFiniteError, match="non-finite.*--max-bad-steps 2"):
        standin_run(tmp_path, "--steps", "10", "--max-bad-steps", "2", nan_at=nan_at)


def test_log_file_written(tmp_path):
    standin_run(tmp_path, "--steps", "2")
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    assert os.path.exists(tmp_path / "latest")


# ----------------------------------------------------------------------------- real model


def speech_batch(cfg, B=2, T=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, T * 2 // 3])[:B]
    mel = torch.randn(B, cfg.whisper.n_mels, T, generator=g)
    mel[1:, :, lengths[1] :] = 0
    V = cfg.llm.vocab_size
    instruction = torch.randint(40, V, (B, 6), generator=g)
    instruction[1, 4:] = -1
    target = torch.randint(40, V, (B, 8), generator=g)
    target[1, 5:] = -100
    return {
        "keys": ["a", "b"][:B],
        "tasks": ["<asr>"] * B,
        "kind": "speech",
        "mel": mel,
        "mel_lengths": lengths,
        "instruction": instruction,
        "target": target,
    }


def toy_model(stage=3, preset="toy"):
    from model import IOSUMConfig, IOSUMPangu

    torch.manual_seed(0)
    model = IOSUMPangu(IOSUMConfig.from_name(preset))
    model.set_prompt_ids(p1_speech=[1, 3, 50, 60], p1_text=[1, 3, 70], p2=[1, 4, 80])
    for name, p in model.named_parameters():
        p.requires_grad_(train.is_trainable(stage, name))
    return model


def test_gradient_checkpointing_gives_the_same_gradients():
    model = toy_model(stage=3)
    batch = speech_batch(model.cfg)
    grads, saved = [], []
    for on in (False, True):
        train.set_grad_ckpt(model, on)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks (checkpointing replays the RNG)
        storages = {}  # what autograd keeps for backward outside checkpointed blocks

        def pack(x, storages=storages):
            storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            loss = model(batch)["loss"]
        loss.backward()
        saved.append(sum(storages.values()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert saved[1] < 0.5 * saved[0], saved  # the switch really checkpoints
    assert any(".lora_" in n for n in grads[0]) and any(n.startswith("encoder.") for n in grads[0])
    for n in grads[0]:
        # recomputation replays the RNG and runs the same kernels on the same shapes (measured
        # bit-equal); only autograd's accumulation order may differ: a few eps of |grad| <= 0.2
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=1e-5, msg=n)


# ----------------------------------------------------------------------------- the four stages


def stage_args(root, stage, *extra):
    """train.py's arguments for a short run of `stage` (0-3, or 'whisper': stage 0's toy Whisper)."""
    toy = root / "toy"
    if stage == "whisper":
        stage, extra = 0, ("--part", "whisper", "--out", str(root / "runs" / "stage0-whisper"), *extra)
        data_args = ["--data", str(toy / "train" / "shards_list.txt"), "--dev-data", str(toy / "dev" / "data.list")]
        data_args += ["--batch-frames", "300"]
    elif stage == 0:
        data_args = ["--data", str(toy / "corpus.txt"), "--block", "32", "--batch-size", "8"]
    else:
        data_args = [
            "--data",
            str(toy / "train" / "shards_list.txt"),
            "--batch-size",
            "8",
            "--dev-data",
            str(toy / "dev" / "data.list"),
            "--batch-frames",
            "300",
            "--text-weight",
            "0.05",
        ]
    return [
        "--stage",
        str(stage),
        "--out",
        str(root / "runs" / f"stage{stage}"),
        "--tokenizer",
        str(toy / "tokenizer.model"),
        "--device",
        "cpu",
        "--steps",
        "8",
        "--lr",
        "2e-3",
        "--warmup",
        "2",
        "--accum",
        "1",
        "--eval-every",
        "8",
        "--eval-batches",
        "2",
        "--save-every",
        "0",
        *data_args,
        *extra,
    ]


def run_main(argv, snapshot=None):
    """train.main, keeping a copy of the weights the loop starts from."""
    real = train.train_loop

    def spy(args, model, *a, **k):
        if snapshot is not None:
            snapshot.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return real(args, model, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "train_loop", spy)
        return train.main(argv)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    toy.ensure_toy_world(root / "toy", n_train=6, n_dev=2, n_test=1, n_shards=2)
    runs = {}
    # each stage starts from the previous one's runs/stageN/final; stage 1 also from the toy Whisper
    # stage 1 keeps the toy Whisper frozen (the toy's default); stage 3 trains it, as the release does
    for stage in (0, "whisper", 1, 2, 3):
        before = {}
        res = run_main(stage_args(root, stage, *(["--no-freeze-encoder"] if stage == 3 else [])), before)
        runs[stage] = (before, res)
    return root, runs


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_stage_trains_only_its_parameters_and_lowers_dev_loss(stages, stage):
    root, runs = stages
    before, res = runs[stage]
    (_, start), (_, end) = res["dev"][0], res["dev"][-1]
    assert end < start, res["dev"]
    model = res["model"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    intended = {n for n, _ in model.named_parameters() if train.is_trainable(stage, n, train_encoder=stage == 3)}
    assert changed == intended, (sorted(changed ^ intended)[:5], len(changed), len(intended))
    parts = {n.split(".")[0] + (".lora" if ".lora_" in n else "") for n in intended}
    assert (
        parts
        == {
            0: {"model", "lm_head"},
            1: {"adapter", "speech_token_emded"},
            2: {"llm.lora"},
            3: {"encoder", "adapter", "speech_token_emded", "llm.lora"},
        }[stage]
    )
    # the stage's result is what the next stage loads (stage 0: a Pangu folder)
    final = root / "runs" / f"stage{stage}" / "final"
    if stage == 0:
        from pangu import load_pangu

        loaded = load_pangu(final)
        torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)  # bytes: exact
    else:
        from model import IOSUMPangu

        loaded = IOSUMPangu.from_pretrained(final)
        torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)  # bytes: exact


def test_toy_whisper_trains_the_encoder_and_stage1_starts_from_it(stages):
    """Stage 0's toy Whisper: every encoder weight and head trains, dev loss falls, `final/` is
    the encoder in a layout load_whisper reads, bit for bit, and stage 1's encoder starts there."""
    from whisper_enc import load_whisper

    root, runs = stages
    before, res = runs["whisper"]
    (_, start), (_, end) = res["dev"][0], res["dev"][-1]
    assert end < start, res["dev"]
    model = res["model"]
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    final = root / "runs" / "stage0-whisper" / "final" / "model.safetensors"
    loaded = load_whisper(final, model.encoder.cfg)
    # exact: save and load copy the float32 bytes (safetensors, no cast), no arithmetic on any CPU
    torch.testing.assert_close(loaded.state_dict(), model.encoder.state_dict(), rtol=0, atol=0)
    stage1_before = runs[1][0]
    for n, p in model.encoder.named_parameters():
        assert torch.equal(stage1_before[f"encoder.{n}"], p), n


def test_next_stage_starts_from_previous_final(stages):
    _, runs = stages
    for stage in (1, 2, 3):
        before, _ = runs[stage]
        prev = runs[stage - 1][1]["model"].state_dict()
        prefix = "" if stage > 1 else "llm."
        for n, v in prev.items():
            k = prefix + n
            if k not in before:  # stage 1 wraps the stage-0 projections in LoRA
                k = k.replace("_proj.weight", "_proj.base_layer.weight")
                k = k.replace("_proj.bias", "_proj.base_layer.bias")
            assert torch.equal(before[k], v), (stage, n)


# ----------------------------------------------------------------------------- resume, DDP


def test_speech_side_and_lora_follow_their_own_peak_lr(stages):
    """--speech-lr: encoder, adapter and speech rows in one AdamW group, LoRA in the other, each
    warming up to its own peak (toy stage 3: LoRA 3e-3, speech 1e-3)."""
    root, _ = stages
    out = root / "two_lrs"
    argv = stage_args(root, 3, "--out", str(out), "--steps", "1", "--eval-every", "0", "--save-every", "1")
    argv += ["--init", str(root / "runs" / "stage2" / "final"), "--speech-lr", "5e-4", "--no-freeze-encoder"]
    res = train.main(argv)
    groups = torch.load(out / "step_0000001" / "train_state.pt", weights_only=True)["optimizer"]["param_groups"]
    trainable = [n for n, p in res["model"].named_parameters() if p.requires_grad]
    speech = [n for n in trainable if not n.startswith("llm.")]
    by_peak = {g["peak_lr"]: (len(g["params"]), g["lr"]) for g in groups}
    assert by_peak == {
        2e-3: (len(trainable) - len(speech), train.warmup_lr(1, 2e-3, 2)),
        5e-4: (len(speech), train.warmup_lr(1, 5e-4, 2)),
    }
    assert any(n.startswith("encoder.") for n in speech) and all(".lora_" in n for n in set(trainable) - set(speech))
    assert train.parse_args(["--stage", "3"]).speech_lr == 1e-3 and train.parse_args(["--stage", "1"]).speech_lr is None


def test_final_is_the_mean_of_the_last_saves(stages):
    """--average N: final/ holds each trained tensor's mean over the run's last N saves (the toy's
    stage 3 and ablation: 3), the frozen ones as they started; --average 1 keeps the last step.
    Exact: the mean is taken in float64 and rounded once to float32, the same IEEE operations
    element by element on any CPU, as the reference below takes it."""
    root, _ = stages
    init = ["--init", str(root / "runs" / "stage2" / "final"), "--steps", "4", "--save-every", "1", "--eval-every", "0"]
    finals = {}
    for n in (1, 3):
        out = root / f"average{n}"
        before = {}
        res = run_main(stage_args(root, 3, "--out", str(out), "--average", str(n), *init), before)
        saves = sorted(out.glob("step_*"))
        assert [p.name for p in saves] == ["step_0000002", "step_0000003", "step_0000004"]  # --keep 3
        weights = [load_file(p / "model.safetensors") for p in saves]
        final = load_file(out / "final" / "model.safetensors")
        for name, p in res["model"].named_parameters():
            if p.requires_grad:
                picked = weights[-n:]
                mean = (sum(w[name].double() for w in picked) / n).float()
                # exact on any CPU: both sum the same float64 tensors in the same order and round once to
                # float32; elementwise IEEE add / divide / cast are correctly rounded whatever the SIMD width
                torch.testing.assert_close(final[name], mean, rtol=0, atol=0, msg=name)
            else:
                assert torch.equal(final[name], before[name].to(final[name].dtype)), name
        finals[n] = final
    # a longer old run's save left in the folder (step 9 > this run's 4) is never averaged in
    stale = out / "step_0000009"
    shutil.copytree(saves[-1], stale)
    save_file({k: v + 1 for k, v in weights[-1].items()}, stale / "model.safetensors")
    assert [p.name for p in train.average_saves(out, res["model"], 3, 4)] == [p.name for p in saves]
    odd = out / "step_0000010"  # a save of other tensors: named in the error, with its odd keys
    shutil.copytree(saves[-1], odd)
    save_file({"bogus": torch.zeros(1)}, odd / "model.safetensors")
    with pytest.raises(SystemExit, match="step_0000010.*unexpected: bogus;"):
        train.average_saves(out, res["model"], 3, 10)
    lora = [k for k in weights[0] if ".lora_" in k]
    assert lora and any(not torch.equal(finals[1][k], finals[3][k]) for k in lora)  # the mean is not the last step
    assert train.parse_args(["--stage", "3"]).average == 3 and train.parse_args(["--stage", "2"]).average == 1
    with pytest.raises(SystemExit):
        train.parse_args(["--stage", "3", "--average", "4"])  # more than --keep saves


def test_resume_continues_exactly_on_the_real_model(stages):
    # stage 3 on speech: encoder + adapter + LoRA, dropout, SpecAugment + SpecSub
    root, _ = stages
    init = ["--stage", "3", "--init", str(root / "runs" / "stage2" / "final")]

    def run(out, steps, *extra):
        argv = stage_args(
            root,
            3,
            "--out",
            str(root / out),
            "--steps",
            str(steps),
            "--eval-every",
            "0",
            "--text-weight",
            "0",
            *init,
            "--no-freeze-encoder",
            *extra,
        )
        return train.main(argv)

    full = run("full", 4)
    run("halves", 2)
    resumed = run("halves", 4, "--resume")
    assert [r["step"] for r in resumed["history"]] == [3, 4]
    # Resume restores everything a step depends on, so the same kernels give bit-equal steps
    # (measured 0.0). The bounds are small (rtol 1e-5 on losses ~6; atol 1e-6 = 2 ulp at
    # |w| <= 4.8), not room for drift.
    torch.testing.assert_close(
        [r["loss"] for r in resumed["history"]], [r["loss"] for r in full["history"][2:]], rtol=1e-5, atol=0
    )
    a = load_file(root / "full" / "step_0000004" / "model.safetensors")
    b = load_file(root / "halves" / "step_0000004" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)  # bit-equal expected, see above


def _ddp_worker(rank, world, port, argv, out):
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    seen = []
    real = train.speech_step

    def spy(model, batch):
        seen.extend(batch["keys"])
        return real(model, batch)

    train.speech_step = spy
    res = train.main(argv)
    torch.save(
        {
            "params": {n: p.detach() for n, p in res["model"].named_parameters()},
            "seen": seen,
            "losses": [r["loss"] for r in res["history"]],
        },
        out / f"rank{rank}.pt",
    )


def test_ddp_gloo_two_processes_keep_replicas_identical(stages, tmp_path):
    import socket

    import torch.multiprocessing as mp

    root, runs = stages
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = stage_args(
        root,
        3,
        "--out",
        str(tmp_path / "ddp"),
        "--steps",
        "3",
        "--eval-every",
        "0",
        "--init",
        str(root / "runs" / "stage2" / "final"),
    )
    mp.spawn(_ddp_worker, args=(2, port, argv, tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["losses"] == r1["losses"]  # the all-reduced mean, logged the same on both
    assert not set(r0["seen"]) & set(r1["seen"]), "ranks must see disjoint data"
    start = runs[2][1]["model"].state_dict()
    changed = 0
    for n, p in r0["params"].items():
        assert torch.equal(p, r1["params"][n]), n
        changed += not torch.equal(p, start[n])
    assert changed > 0
    assert (tmp_path / "ddp" / "step_0000003").is_dir()  # rank 0 saved


def test_bf16_autocast_path_runs_on_cpu(stages, tmp_path):
    # what CUDA / Ascend get by default: bf16 autocast, frozen weights bf16, trained float32
    root, _ = stages
    argv = stage_args(
        root,
        2,
        "--out",
        str(tmp_path),
        "--steps",
        "2",
        "--eval-every",
        "0",
        "--precision",
        "bf16",
        "--init",
        str(root / "runs" / "stage1" / "final"),
    )
    res = train.main(argv)
    assert all(math.isfinite(r["loss"]) and not r["skipped"] for r in res["history"])
    for n, p in res["model"].named_parameters():
        assert p.dtype == (torch.float32 if ".lora_" in n else torch.bfloat16), n


def test_toy_runs_scale_spec_augment_to_toy_utterances(stages):
    """The release's masks (<= 50 frames) would erase most of a 50-110-frame toy utterance."""
    root, _ = stages
    args = train.parse_args(stage_args(root, 1))
    train_data, _ = train.build_data(args, root / "toy" / "tokenizer.model", rank=0, world=1)
    conf = train_data.dataset.conf
    got = {k: getattr(conf, k) for k in train.TOY_AUGMENT}
    assert conf.augment and got == train.TOY_AUGMENT
    assert data.DataConf().max_t == 50 and data.DataConf().max_t_sub == 30  # the release's, elsewhere
