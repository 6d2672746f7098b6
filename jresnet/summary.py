"""A per-layer table of a model, built with ``jax.eval_shape``: no FLOPs run, so resnet152 takes a second.

Each row: the layer's path, its input and output (C, H, W), K/S/P, the pixels its window eats, the
shortcut a block chose, parameters and multiply-accumulates per example. Totals come last.
`check_model` uses the same pass to find where a model's feature map collapses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from flax import nnx

from jresnet.blocks import ResidualBlock, ShortcutOptionA
from jresnet.layers import AvgPool2d, BatchNorm2d, Conv2d, Linear, MaxPool2d, NCHWModule
from jresnet.shapes import collapse_message, ksp_text
from jresnet.typing import CallRecord, ShapeError, recording, set_checks

__all__ = ["LayerRow", "Summary", "check_model", "summary"]


@dataclass(frozen=True)
class LayerRow:
    """One module call in the summary; shapes are per example, (C, H, W) or (F,)."""

    path: str
    kind: str
    depth: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    ksp: str = ""
    eaten: str = ""
    shortcut: str = ""
    params: int = 0
    macs: int = 0
    stride: int = 1


@dataclass
class Summary:
    """The rows of a summary and their totals; ``str(summary)`` is the table."""

    name: str
    input_shape: tuple[int, ...]
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def total_macs(self) -> int:
        """Multiply-accumulates of one forward pass of one example (FLOPs ≈ 2·MACs)."""
        return sum(r.macs for r in self.rows)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.rows[0].out_shape if self.rows else ()

    def table(self) -> str:
        """The summary as fixed-width text."""
        headers = ("layer", "type", "input", "output", "K/S/P", "eaten", "shortcut", "params", "MACs")
        body = [
            ("  " * r.depth + r.path, r.kind, _fmt(r.in_shape), _fmt(r.out_shape), r.ksp, r.eaten, r.shortcut,
             f"{r.params:,}" if r.params else "", f"{r.macs:,}" if r.macs else "")
            for r in self.rows
        ]
        body.append(("total", "", _fmt(self.input_shape), _fmt(self.output_shape), "", "", "",
                     f"{self.total_params:,}", f"{self.total_macs:,}"))
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(headers)]
        right = {7, 8}
        lines = [_line(headers, widths, right), "  ".join("-" * w for w in widths)]
        lines += [_line(row, widths, right) for row in body[:-1]]
        lines += ["  ".join("-" * w for w in widths), _line(body[-1], widths, right)]
        return f"{self.name} on input {_fmt(self.input_shape)}\n" + "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _fmt(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def _line(cells: Sequence[str], widths: Sequence[int], right: set[int]) -> str:
    return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()


def _per_example(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(B, H, W, C) -> (C, H, W); (B, F) -> (F,)."""
    if len(shape) == 4:
        return (shape[3], shape[1], shape[2])
    return tuple(shape[1:])


def _own_params(module: object) -> int:
    """Parameters held directly by a leaf layer (blocks count through their layers)."""
    if not isinstance(module, Conv2d | BatchNorm2d | Linear):
        return 0
    total = 0
    for name in ("weight", "bias"):
        p = getattr(module, name, None)
        if p is not None:
            total += int(p[...].size)
    return total


def _row(record: CallRecord) -> LayerRow:
    m = record.module
    ins, outs = _per_example(record.in_shape), _per_example(record.out_shape)
    path = getattr(m, "path", "") or type(m).__name__
    kind = type(m).__name__
    ksp = eaten = shortcut = ""
    macs = 0
    stride = 1
    if isinstance(m, Conv2d | MaxPool2d | AvgPool2d):
        g = m.geometry
        pads = (m if isinstance(m, MaxPool2d | AvgPool2d) else g).pads(record.in_shape[1])  # pools: ceil_mode
        ksp = ksp_text(g.kernel, g.stride, pads)
        eaten = str(g.eaten)
        stride = g.stride
    if isinstance(m, Conv2d):
        c_out, h, w = outs
        macs = c_out * h * w * (m.in_channels // m.groups) * m.geometry.kernel**2
    elif isinstance(m, Linear):
        macs = m.in_features * m.out_features
    elif isinstance(m, ShortcutOptionA):
        ksp, stride = ksp_text(1, m.stride, (0, 0)), m.stride
    if isinstance(m, ResidualBlock):
        shortcut = m.shortcut_name
    return LayerRow(path, kind, record.depth, ins, outs, ksp, eaten, shortcut, _own_params(m), macs, stride)


def _parse_input(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive ints, e.g. (3, 224, 224); got {input_shape!r}")
    return shape  # type: ignore[return-value]


def summary(model: NCHWModule, input_shape: Sequence[int] = (3, 224, 224), *, name: str | None = None,
            print_table: bool = False) -> Summary:
    """Trace ``model`` on one abstract (C, H, W) example with ``jax.eval_shape`` and tabulate every layer.

    Raises `ShapeError` when the input does not fit the model (naming the layer and the arithmetic).
    """
    c, h, w = _parse_input(input_shape)
    graphdef, state = nnx.split(model)
    rows: list[LayerRow] = []

    def trace(state: nnx.State, x: jax.Array) -> jax.Array:
        m = nnx.merge(graphdef, state, copy=True)
        m.eval()
        with recording() as records:
            y = m(x)
        rows.extend(_row(r) for r in records)
        return y

    previous = set_checks(True)  # the rows come from the checked calls
    try:
        jax.eval_shape(trace, state, jax.ShapeDtypeStruct((1, c, h, w), jnp.float32))
    finally:
        set_checks(previous)
    result = Summary(name or type(model).__name__, (c, h, w), rows)
    if print_table:
        print(result.table())
    return result


def check_model(model: NCHWModule, input_shape: Sequence[int], *, name: str | None = None) -> Summary:
    """Check that every layer of ``model`` has a meaningful output for ``input_shape``.

    Fails with `ShapeError` naming the first layer whose output has zero size (raised by the layer
    itself), or the first downsampling layer whose input has already collapsed to a single pixel, so
    that its stride has nothing left to reduce and a K×K kernel sees mostly padding.
    """
    result = summary(model, input_shape, name=name)
    for row in result.rows:
        if row.stride > 1 and len(row.in_shape) == 3 and min(row.in_shape[1:]) == 1:
            last = next((r for r in result.rows if r.ksp and min(r.out_shape[1:]) == 1), row)
            raise ShapeError(collapse_message(row.path, f"{row.kind}, K/S/P={row.ksp}", row.in_shape[1:],
                                              last.path, row.stride, _total_stride(result.rows),
                                              tuple(input_shape[1:])))
    return result


def _total_stride(rows: Sequence[LayerRow]) -> int:
    total = 1
    for r in rows:
        if r.kind != "ShortcutOptionA" and not r.path.split(".")[-2:-1] == ["downsample"]:
            total *= r.stride
    return total
