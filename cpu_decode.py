"""Faster decoding on a CPU: every nn.Linear of a merged Pangu handed to oneDNN, its weight packed once.

A decode step multiplies a few rows (one per sequence) by every weight matrix; oneDNN's product with
the weight packed ahead of time into its blocked layout beats F.linear there, and packing once costs
nothing per step (bench/decode.py measures it). The two ops are the ones `torch.compile` emits for
packed linears; they live in `torch.ops.mkldnn`, private and undocumented, hence apart from pangu.py.
"""

import torch
from torch import nn

from pangu import LoRALinear

ROWS_HINT = 1  # the rows oneDNN is told to expect: batch 1 decoded fastest with it (bench/decode.py)


class PackedLinear(nn.Module):
    """nn.Linear for CPU inference, the weight kept only in oneDNN's packed form (no second copy).

    `state_dict` gives the weight back dense and unchanged, so a packed model saves losslessly.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), ROWS_HINT)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def forward(self, x):
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.packed.to_dense()  # the original, exactly
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias


@torch.no_grad()
def pack_for_cpu(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of a CPU model by a PackedLinear, for faster decoding.

    Inference only, one way, in place: merge LoRA first (`pangu.merge_lora`). The logits equal the
    unpacked model's to float rounding (tests/test_pangu.py). Every check runs before the first change,
    so a refused model is left unpacked.
    """
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("pack_for_cpu needs PyTorch built with oneDNN (mkldnn)")
    for dtype in {p.dtype for p in model.parameters()}:  # try a tiny one before changing any
        try:
            torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype), ROWS_HINT)
        except RuntimeError as e:
            raise RuntimeError(f"oneDNN cannot pack {dtype} weights on this CPU: {e}") from None
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear) and not m.merged:
            raise ValueError(f"{name} has unmerged LoRA: call merge_lora(model) before packing")
        if isinstance(m, nn.Linear) and m.weight.device.type != "cpu":
            raise ValueError(f"{name} is on {m.weight.device}; pack_for_cpu is for the CPU")
    for name, m in list(model.named_modules()):
        parent, _, child = name.rpartition(".")
        if isinstance(m, nn.Linear) and child not in ("lora_A", "lora_B"):  # (merged: unused)
            setattr(model.get_submodule(parent), child, PackedLinear(m))
    return model
