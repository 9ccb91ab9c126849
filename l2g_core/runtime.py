"""Where a stage runs: device choice, DDP under torchrun, seeds and random states."""

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from l2g_core.errors import L2GError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1

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
        return where + (f", DDP rank {self.rank} of {self.world_size}" if self.distributed else "")


def setup_runtime(device="auto"):
    """Pick the device; join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise L2GError("--device cuda: no CUDA device is visible to this process")
    if device not in ("cpu", "cuda"):
        raise L2GError(f"--device {device}: expected auto, cpu or cuda")
    torch_device = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
        torch.backends.cudnn.benchmark = True  # fixed training shapes: pick the fastest kernels once
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    return Runtime(torch_device, rank, world_size)


def seed_everything(seed):
    """Python's, NumPy's and torch's global RNGs (every CUDA device's included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
