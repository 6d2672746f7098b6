"""PyTorch (torchvision / timm) state dicts <-> jresnet parameters.

jresnet's parameter paths and layouts are torchvision's, so conversion is a table that maps every key
to itself: ``conv1.weight`` is (C_out, C_in, K, K) in both, BatchNorm has ``weight``, ``bias``,
``running_mean`` and ``running_var``, ``fc.weight`` is (out, in). Only PyTorch's
``num_batches_tracked`` counters have no counterpart; they are ignored on load and written as 0.

Files: ``.safetensors`` is read and written with safetensors (no torch needed). A ``.pt``/``.pth`` file
is read with ``torch.load(weights_only=True)``, which runs no pickle code, when torch is installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jresnet.typing import ShapeError

__all__ = ["load_state_dict", "load_weights_file", "save_safetensors", "state_dict"]

_IGNORED_SUFFIX = "num_batches_tracked"


def _variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    """Every Param and BatchStat of ``model`` by its dotted, torchvision-style key."""
    out = {}
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param | nnx.BatchStat):
            out[".".join(str(p) for p in path)] = var
    return out


def state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics as a torchvision-style state dict of numpy arrays."""
    return {key: np.asarray(var[...]) for key, var in _variables(model).items()}


def load_state_dict(model: nnx.Module, weights: Mapping[str, Any], *, strict: bool = True) -> None:
    """Copy ``weights`` (a torchvision/timm-style state dict of arrays) into ``model`` in place.

    Every key must exist in the model with the same shape; with ``strict`` every model key must be
    given too. Mismatches raise `ShapeError` (shapes) or `KeyError`-like `ValueError` (keys) naming them.
    """
    variables = _variables(model)
    given = {k: v for k, v in weights.items() if not k.endswith(_IGNORED_SUFFIX)}
    unexpected = sorted(set(given) - set(variables))
    missing = sorted(set(variables) - set(given))
    if unexpected or (strict and missing):
        parts = []
        if missing and strict:
            parts.append(f"missing {len(missing)} key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:3]}")
        raise ValueError(f"load_state_dict: the weights do not match the model: {'; '.join(parts)}. "
                         "Check that the model name and num_classes match the checkpoint.")
    for key, value in given.items():
        array = np.asarray(value)
        target = variables[key]
        if array.shape != target[...].shape:
            what = "(C_out, C_in, K, K)" if array.ndim == 4 else "shape"
            raise ShapeError(f"load_state_dict: {key} is {what} {tuple(target[...].shape)} in the model but "
                             f"{array.shape} in the weights")
        target[...] = jnp.asarray(array, dtype=target[...].dtype)


def save_safetensors(model: nnx.Module, path: str | Path) -> Path:
    """Write the model's state dict to a ``.safetensors`` file that PyTorch can load too."""
    from safetensors.numpy import save_file

    path = Path(path)
    tensors = {k: np.ascontiguousarray(v) for k, v in state_dict(model).items()}
    save_file(tensors, str(path))
    return path


def load_weights_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a state dict from ``.safetensors`` (no torch needed) or ``.pt``/``.pth`` (torch, weights only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path} is a PyTorch file and torch is not installed; convert it to .safetensors "
                         "(safetensors.torch.save_file) or install torch") from None
    loaded = torch.load(str(path), map_location="cpu", weights_only=True)  # runs no pickle code
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return {k: v.detach().cpu().numpy() for k, v in loaded.items() if hasattr(v, "detach")}
