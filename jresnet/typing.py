"""Array type aliases, the `ShapeError`, and the `shapechecked` decorator every layer uses.

Two kinds of checks guard each module call, and both run while JAX traces, so a jitted step pays
nothing for them:

1. the module's own ``check_input`` (rank, dtype, channels, sizes against `jresnet.shapes`), which
   raises `ShapeError` or `TypeError` with the numbers and the likely cause;
2. jaxtyping's annotation check through beartype, which keeps the annotations honest.

``JAXTYPING_DISABLE=1`` switches off (2); ``JRESNET_CHECKS=0`` or `set_checks(False)` switches off both.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jaxtyping import Array, Float, Int, jaxtyped

__all__ = [
    "Images",
    "ImagesNHWC",
    "Labels",
    "Logits",
    "ShapeError",
    "checks_enabled",
    "fmt_nchw",
    "require_images",
    "set_checks",
    "shapechecked",
]

Images = Float[Array, "B C H W"]
"""A batch of images or feature maps in the public (B, C, H, W) layout."""
ImagesNHWC = Float[Array, "B H W C"]
"""The same maps in the layout the layers compute in internally."""
Logits = Float[Array, "B N"]
Labels = Int[Array, " B"]


class ShapeError(ValueError):
    """A shape that breaks the convolution arithmetic; the message names the module, the expected
    shape with its formula, the seen shape and the likely cause."""


_checks_on = os.environ.get("JRESNET_CHECKS", "1") not in ("0", "false", "False")


def checks_enabled() -> bool:
    """Whether jresnet's trace-time shape checks run."""
    return _checks_on


def set_checks(enabled: bool) -> bool:
    """Switch jresnet's trace-time checks on or off; returns the previous setting."""
    global _checks_on
    previous, _checks_on = _checks_on, bool(enabled)
    return previous


def fmt_nchw(shape_nhwc: tuple[int, ...]) -> str:
    """Format an internal (B, H, W, C) shape in the public (B, C, H, W) order."""
    if len(shape_nhwc) == 4:
        b, h, w, c = shape_nhwc
        return f"(B={b}, C={c}, H={h}, W={w})"
    return str(tuple(shape_nhwc))


def require_images(x: Any, where: str, in_channels: int | None, *, layout: str = "NCHW") -> None:
    """Check that ``x`` is a rank-4 floating array with ``in_channels`` channels.

    ``layout`` says how ``x`` is laid out: "NCHW" at the public boundary, "NHWC" inside the model.
    Raises `ShapeError` for rank and channel mistakes and `TypeError` for dtype mistakes.
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{where}: expected a jax or numpy array of images (B, C, H, W); got {type(x).__name__}")
    shape = tuple(shape)
    if len(shape) != 4:
        hint = ""
        if len(shape) == 3:
            hint = " It looks like a single image without the batch axis: use x[None] to add B=1."
        raise ShapeError(
            f"{where}: expected images of rank 4, (B, C, H, W); got rank {len(shape)}, shape {shape}.{hint}"
        )
    dtype = np.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):  # numpy's own check says no to bfloat16
        raise TypeError(
            f"{where}: expected floating-point images (float32, bfloat16, ...); got dtype {dtype} with shape "
            f"{shape}. Convert and scale first, e.g. x.astype(jnp.float32) / 255."
        )
    channel_axis, last_axis = (1, 3) if layout == "NCHW" else (3, 1)
    if in_channels is not None and shape[channel_axis] != in_channels:
        b = shape[0]
        c = shape[channel_axis]
        h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
        hint = ""
        if layout == "NCHW" and shape[last_axis] == in_channels:
            hint = (" This looks like NHWC (channels last); jresnet takes (B, C, H, W): "
                    "use x.transpose(0, 3, 1, 2).")
        else:
            hint = f" The previous layer outputs {c} channels; set in_channels={c} or fix that layer's out_channels."
        raise ShapeError(
            f"{where}: expected C_in={in_channels} channels, images (B, {in_channels}, H, W); "
            f"got (B={b}, C={c}, H={h}, W={w}).{hint}"
        )


# ---------------------------------------------------------------------------------------------
# Recording calls, for the summary table (jresnet.summary turns these into rows).


@dataclass
class CallRecord:
    """One module call seen while recording: the module and its input/output shapes (NHWC)."""

    module: Any
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    depth: int


_recorder: list[CallRecord] | None = None
_depth = 0


@contextlib.contextmanager
def recording() -> Iterator[list[CallRecord]]:
    """Collect a `CallRecord` for every checked module call made inside the block."""
    global _recorder
    previous, _recorder = _recorder, []
    try:
        yield _recorder
    finally:
        _recorder = previous


F = TypeVar("F", bound=Callable[..., Any])


def shapechecked(method: F | None = None, *, layout: str = "NHWC") -> Any:
    """Decorate a module method ``method(self, x, ...)``; use bare or as ``@shapechecked(layout="NCHW")``.

    Runs ``self.check_input(x, layout)`` first (clear `ShapeError`/`TypeError` messages), then the
    method under ``jaxtyped(typechecker=beartype)``, and records the call when a summary is being
    built (internal NHWC calls only, so a public call is not counted twice).
    Decorate methods, not classes: jaxtyping ignores the decorator on an nnx.Module class.
    """
    if method is None:
        return functools.partial(shapechecked, layout=layout)
    typed = jaxtyped(typechecker=beartype)(method)
    record = layout != "NCHW"

    @functools.wraps(method)
    def wrapper(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        global _depth
        if not _checks_on:
            return method(self, x, *args, **kwargs)
        check = getattr(self, "check_input", None)
        if check is not None:
            check(x, layout)
        if isinstance(x, np.ndarray):  # the annotations say jax.Array; numpy input is fine too
            x = jnp.asarray(x)
        entry = None
        if record and _recorder is not None:
            entry = CallRecord(self, tuple(x.shape), (), _depth)
            _recorder.append(entry)  # appended before the call, so rows come in call (pre-)order
        _depth += record  # public NCHW wrappers add no row, so they add no indentation either
        try:
            y = typed(self, x, *args, **kwargs)
        finally:
            _depth -= record
        if entry is not None:
            entry.out_shape = tuple(getattr(y, "shape", ()))
        return y

    return wrapper
