"""Loading model folders as untrusted input: a shared captioner (``clipmemcap caption --checkpoint``)
comes from anyone, so its configs and weights are checked before anything is allocated.

- Configs are JSON files of bounded size with finite numbers (:func:`read_config`); each model
  class then bounds its own fields (``MapperConfig``, :func:`clipmemcap.model.prefix_lm.gpt2_config`).
- A model is first built on the ``meta`` device (no memory) and its parameter count bounded
  (:func:`check_size`); then the safetensors file's header must list exactly that model's tensors,
  names, shapes and dtypes (:func:`check_weights`; for GPT-2, whose files name their tensors in
  several ways, at least as many numbers: :func:`stored_elements`): a config that claims more than
  its file holds never reaches an allocation, and a truncated file, a pickle or any other bytes are
  refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from clipmemcap.core.jsonio import read_json

MAX_CONFIG_BYTES = 1_000_000
MAX_PARAMETERS = 2_000_000_000  # a model (mapper or GPT-2) beyond GPT-2 XL's 1.5 billion is no captioner here
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool, "U8": torch.uint8}


def read_config(path: Path, what: str = "config") -> dict:
    """A JSON object of bounded size, finite numbers and short integers (errors name the file)."""
    return read_json(path, MAX_CONFIG_BYTES, what)


def check_size(build: Callable[[], nn.Module], max_parameters: int, what: str) -> int:
    """The parameters of the model ``build`` makes (tied ones once), counted on the meta device
    without allocating them; more than ``max_parameters`` is an error."""
    with torch.device("meta"):
        count = sum(p.numel() for p in build().parameters())
    if count > max_parameters:
        raise ValueError(f"{what} would have {count:,} parameters, more than the {max_parameters:,} allowed")
    return count


def expected_tensors(build: Callable[[], nn.Module]) -> dict[str, tuple]:
    """The (shape, dtype) of every tensor of the state dict ``build`` makes, built on the meta device."""
    with torch.device("meta"):
        state = build().state_dict()
    return {name: (tuple(t.shape), t.dtype) for name, t in state.items()}


def read_header(file: Path) -> dict[str, tuple]:
    """The (shape, dtype) of each tensor a safetensors file holds, from its header alone; the
    library checks that the tensors cover the file exactly (a truncated file fails here)."""
    if not file.is_file():
        raise ValueError(f"{file} is missing or not a regular file (weights are read from safetensors only)")
    try:
        with safe_open(str(file), "pt") as weights:
            found = {}
            for name in weights.keys():
                view = weights.get_slice(name)
                found[name] = (tuple(view.get_shape()), SAFETENSORS_DTYPES.get(view.get_dtype(), view.get_dtype()))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file} is not a readable safetensors file ({' '.join(str(err).split())})") from None
    return found


def stored_elements(file: Path) -> int:
    """How many numbers a safetensors file holds."""
    return sum(math.prod(shape) for shape, _ in read_header(file).values())


def check_weights(file: Path, expected: dict[str, tuple]) -> None:
    """``file`` is a safetensors file holding exactly ``expected`` (see :func:`expected_tensors`)."""
    found = read_header(file)
    if found != expected:
        missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
        other = sorted(name for name in expected.keys() & found.keys() if expected[name] != found[name])
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(extra[:3])}" if extra else "",
            f"{other[0]} is {found[other[0]]}, its config wants {expected[other[0]]}" if other else "") if part)
        raise ValueError(f"{file} does not hold the model its config describes: {detail}")
