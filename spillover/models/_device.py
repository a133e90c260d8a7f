"""Automatic device and dtype: CUDA -> bf16 (fp16 where bf16 is unsupported), else CPU fp32."""

from __future__ import annotations

import torch

from spillover.errors import SpilloverError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpilloverError(f"device {device!r} asked for, but CUDA is not available",
                             fix="use --device cpu (or auto), or install a CUDA build of torch")
    return dev


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise SpilloverError(f"unknown dtype {dtype!r}", fix=f"use auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
