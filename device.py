"""Where a run executes: an Ascend NPU, a CUDA GPU or the CPU, chosen once by train.py and infer.py.

The release trains on Ascend NPUs through `torch_npu` (HCCL); the same code runs on CUDA (NCCL) and
on the CPU (Gloo). A device asked for by name that is not there is an error, never a fallback.
"""

import resource

import torch

BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}  # torch.distributed backend per device


def npu_available() -> bool:
    """True when the Ascend plugin imports and reports at least one NPU."""
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except ImportError:
        return False
    return hasattr(torch, "npu") and torch.npu.is_available()


def pick_device(name: str, local_rank: int = 0) -> str:
    """'auto' | 'npu' | 'cuda' | 'cpu' -> a device string such as 'npu:0'. Never falls back:
    a device asked for by name that is not there is an error."""
    if name == "auto":
        name = "npu" if npu_available() else "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "npu" and not npu_available():
        raise SystemExit(
            "--device npu: no Ascend NPU found (torch_npu does not import, or "
            "torch.npu.is_available() is False). Install torch_npu + CANN, or pick another "
            "--device."
        )
    elif name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: torch {torch.__version__} sees no CUDA device "
            f"(built with CUDA: {torch.version.cuda}). Pick another --device."
        )
    elif name not in ("npu", "cuda", "cpu"):
        raise SystemExit(f"--device {name}: expected auto, npu, cuda or cpu")
    if name == "cpu":
        return "cpu"
    getattr(torch, name).set_device(local_rank)
    return f"{name}:{local_rank}"


def use_bf16(device: str, precision: str) -> bool:
    """bf16 autocast where the device supports it, float32 on the CPU (unless asked)."""
    kind = device.split(":")[0]
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    return kind == "npu"


def peak_memory_gb(device: str) -> float:
    kind = device.split(":")[0]
    if kind in ("cuda", "npu"):
        return getattr(torch, kind).max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak RSS, KiB on Linux


def synchronize(device: str) -> None:
    kind = device.split(":")[0]
    if kind in ("cuda", "npu"):
        getattr(torch, kind).synchronize()
