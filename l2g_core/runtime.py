"""Where a stage runs: device choice, DDP under torchrun, numeric precision, seeds and random states."""

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from l2g_core.errors import L2GError

#: What a stage computes in (training and CAM export; `precision` of their config sections):
#: fp32: IEEE fp32 everywhere, TF32 off for matmul and cuDNN (what the official fp32 code
#:   computed on the GPUs it ran on; PyTorch would otherwise run convolutions in TF32 on Ampere+);
#: tf32: fp32 tensors, matmul and convolutions in TF32 on Ampere and later;
#: bf16: bf16 autocast on CUDA (the layers autocast keeps in fp32 run in TF32).
#: The CPU computes fp32 whatever the setting: TF32 is a CUDA feature and autocast is CUDA-only here.
PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    precision: str = "fp32"

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def autocast_bf16(self):
        """True when the network runs in bf16 autocast (precision bf16 on CUDA)."""
        return self.precision == "bf16" and self.device.type == "cuda"

    @property
    def applied_precision(self):
        """What the computation actually is on this device: the setting on CUDA, fp32 on the CPU."""
        return self.precision if self.device.type == "cuda" else "fp32"

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def describe(self):
        if self.device.type == "cuda":
            names = torch.cuda.get_device_name(self.device)
            where = f"GPU {self.device} ({names}), CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}"
        else:
            where = f"CPU ({torch.get_num_threads()} threads; no CUDA device visible)" if not torch.cuda.is_available() \
                else f"CPU ({torch.get_num_threads()} threads; CUDA present but not requested)"
        where += f", precision {self.applied_precision}"
        return where + (f", DDP rank {self.rank} of {self.world_size}" if self.distributed else "")


def check_precision(precision):
    if precision not in PRECISIONS:
        raise L2GError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    return precision


def apply_precision(precision):
    """Set the process-wide TF32 switches as `precision` says (see PRECISIONS)."""
    tf32 = check_precision(precision) != "fp32"
    # "highest" first: it also keeps the CPU's oneDNN matmul in IEEE fp32 ("high" would allow TF32
    # there too, on CPUs that have it); then the two CUDA switches, which are all TF32 needs.
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def setup_runtime(device="auto", *, precision="fp32", fixed_shapes=False):
    """Pick the device, set the precision; join the process group when launched by torchrun.

    fixed_shapes: every step sees the same input shapes (training on fixed crops), so cuDNN may
    time its algorithms once per shape and keep the fastest (cudnn.benchmark). Inference sees
    many image sizes, scales and partial batches: every new shape would be timed again, so it
    stays off there."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise L2GError("--device cuda: no CUDA device is visible to this process")
    if device not in ("cpu", "cuda"):
        raise L2GError(f"--device {device}: expected auto, cpu or cuda")
    apply_precision(precision)
    torch_device = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    torch.backends.cudnn.benchmark = torch_device.type == "cuda" and fixed_shapes
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    return Runtime(torch_device, rank, world_size, precision)


def to_device(tensor, device):
    """A host tensor on `device` without making the host wait for the device.

    A copy from pageable memory (or with non_blocking=False) waits until the device has run
    everything queued before it; from pinned memory with non_blocking=True it is queued like a
    kernel. The pinned buffer stays reserved until the copy has run (the caching host allocator
    records it), so the caller may drop it at once."""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def seed_everything(seed):
    """Python's, NumPy's and torch's global RNGs (every CUDA device's included), from all 64 bits
    of `seed` (NumPy's legacy seed takes 32 bits at a time)."""
    random.seed(seed)
    np.random.seed(np.array([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], dtype=np.uint32))
    torch.manual_seed(seed)
