"""The arithmetic of convolutions, in pure Python.

Every rule the library checks lives here, so error messages, the summary table and the ``jresnet
shapes`` command all speak the same language:

- a K×K kernel with dilation D covers ``D*(K-1)+1`` pixels and so eats ``D*(K-1)`` of them;
- padding (lo, hi) adds lo pixels before and hi after;
- ``out = floor((n + lo + hi - D*(K-1) - 1) / S) + 1``;
- "same" padding matches ``lax``'s SAME: the total ``max((ceil(n/S)-1)*S + D*(K-1) + 1 - n, 0)`` is
  split as ``total // 2`` before and the rest after, so an even kernel puts its extra pixel *after*
  (bottom/right).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PaddingSpec = int | Literal["same", "valid"] | tuple[int, int]


def _check_positive_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {name}={value}")
    return value


def _check_padding(padding: object) -> PaddingSpec:
    if isinstance(padding, str):
        if padding.lower() not in ("same", "valid"):
            raise ValueError(f"padding must be an int >= 0, 'same', 'valid' or a (lo, hi) pair; got {padding!r}")
        return padding.lower()  # type: ignore[return-value]
    if isinstance(padding, tuple | list):
        if len(padding) != 2:
            raise ValueError(f"padding as a pair must be (lo, hi); got {padding!r} with {len(padding)} items")
        lo = _check_positive_int("padding[0] (lo)", padding[0], 0)
        hi = _check_positive_int("padding[1] (hi)", padding[1], 0)
        return (lo, hi)
    return _check_positive_int("padding", padding, 0)


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel size K, stride S, padding P and dilation D of one sliding window along one axis.

    ``padding`` is an int P (P pixels on each side), ``"valid"`` (no padding), ``"same"`` (lax's
    SAME convention) or an explicit ``(lo, hi)`` pair.
    """

    kernel: int
    stride: int = 1
    padding: PaddingSpec = 0
    dilation: int = 1

    def __post_init__(self) -> None:
        _check_positive_int("kernel", self.kernel, 1)
        _check_positive_int("stride", self.stride, 1)
        _check_positive_int("dilation", self.dilation, 1)
        object.__setattr__(self, "padding", _check_padding(self.padding))

    @property
    def span(self) -> int:
        """Pixels one window covers: ``D*(K-1) + 1``."""
        return self.dilation * (self.kernel - 1) + 1

    @property
    def eaten(self) -> int:
        """Pixels the window eats with no padding: ``D*(K-1)``."""
        return self.dilation * (self.kernel - 1)

    def pads(self, n: int) -> tuple[int, int]:
        """The (lo, hi) padding this geometry applies to an input of ``n`` pixels."""
        _check_positive_int("input size", n, 1)
        if self.padding == "valid":
            return (0, 0)
        if self.padding == "same":
            out = -(-n // self.stride)
            total = max((out - 1) * self.stride + self.span - n, 0)
            return (total // 2, total - total // 2)
        if isinstance(self.padding, tuple):
            return self.padding
        return (self.padding, self.padding)

    def out_size(self, n: int) -> int:
        """``floor((n + lo + hi - D*(K-1) - 1) / S) + 1``; ValueError when the window does not fit."""
        lo, hi = self.pads(n)
        padded = n + lo + hi
        if padded < self.span:
            raise ValueError(
                f"the window does not fit: input {n} padded to {n}+{lo}+{hi}={padded} pixels, but a kernel "
                f"K={self.kernel} with dilation D={self.dilation} spans D*(K-1)+1={self.span} pixels"
            )
        return (padded - self.span) // self.stride + 1

    def unused_pixels(self, n: int) -> int:
        """Trailing padded pixels no window reaches when the stride does not divide evenly."""
        lo, hi = self.pads(n)
        return (n + lo + hi - self.span) % self.stride

    def explain(self, n: int) -> str:
        """A short text with the output-size formula and this geometry's numbers filled in."""
        lo, hi = self.pads(n)
        out = self.out_size(n)
        d_part = f"{self.dilation}*({self.kernel}-1)" if self.dilation != 1 else f"({self.kernel}-1)"
        lines = [
            f"in={n}, K={self.kernel}, S={self.stride}, P=({lo}, {hi}), D={self.dilation}",
            f"out = floor((in + lo + hi - D*(K-1) - 1) / S) + 1"
            f" = floor(({n} + {lo} + {hi} - {d_part} - 1) / {self.stride}) + 1 = {out}",
            f"the kernel eats D*(K-1) = {self.eaten} pixels; padding adds {lo + hi}",
        ]
        if self.padding == "same" and lo != hi:
            lines.append(f"'same' padding is uneven: {lo} before and {hi} after, so the extra pixel goes after "
                         "(bottom/right), as lax's SAME does")
        unused = self.unused_pixels(n)
        if self.stride > 1:
            naive = n / self.stride
            note = f"stride {self.stride} does not simply divide: {n}/{self.stride} = {naive:g}, but out = {out}"
            if unused:
                note += f"; the last {unused} padded pixel{'s are' if unused != 1 else ' is'} read by no window"
            lines.append(note)
        return "\n".join(lines)


def ksp_text(kernel: int, stride: int, pads: tuple[int, int]) -> str:
    """"K/S/P" as the summary and the error messages print it: P is one number, or (lo,hi) when uneven."""
    lo, hi = pads
    return f"{kernel}/{stride}/{lo if lo == hi else f'({lo},{hi})'}"


def collapse_message(layer: str, geometry_text: str, seen_hw: tuple[int, int], collapsed_at: str, stride: int,
                     total_stride: int, input_hw: tuple[int, int]) -> str:
    """The words for a downsampling layer that receives a map already collapsed to one pixel."""
    return (f"{layer} ({geometry_text}) receives a {seen_hw[0]}×{seen_hw[1]} map: the feature map collapsed to a "
            f"single pixel at {collapsed_at}, so this stride-{stride} layer has nothing left to downsample. "
            f"out = floor((in - K + 2P)/S) + 1 stays 1 from here on. The model's total stride is {total_stride}: "
            f"feed at least {total_stride}×{total_stride} images (got {input_hw[0]}×{input_hw[1]}).")


def out_size(n: int, kernel: int, stride: int = 1, padding: PaddingSpec = 0, dilation: int = 1) -> int:
    """Output size of a convolution or pooling window along one axis."""
    return ConvGeometry(kernel, stride, padding, dilation).out_size(n)


def same_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """The (lo, hi) padding that keeps the size at stride 1, as lax's SAME does.

    Odd K gives ((K-1)/2, (K-1)/2). Even K needs K-1 pixels in total and puts the extra one after:
    ((K-1)//2, K//2) for D=1.
    """
    return ConvGeometry(kernel, 1, "same", dilation).pads(max(kernel * dilation, 1))


def extra_pixel_side(kernel: int, dilation: int = 1) -> str:
    """Which side gets the extra pixel of 'same' padding: 'none', or 'after (bottom/right)'."""
    lo, hi = same_padding(kernel, dilation)
    return "none" if lo == hi else "after (bottom/right)"


def explain(n: int, kernel: int, stride: int = 1, padding: PaddingSpec = 0, dilation: int = 1) -> str:
    """The output-size formula for one axis with the numbers filled in."""
    return ConvGeometry(kernel, stride, padding, dilation).explain(n)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a stack: ``size`` input pixels per output pixel, ``jump`` input pixels between
    neighbouring outputs, and ``start`` the centre of the first output in input coordinates."""

    size: int
    jump: int
    start: float


def receptive_field(layers: Sequence[ConvGeometry]) -> ReceptiveField:
    """Receptive field of a stack of windows applied in order (first layer first).

    Uses r_out = r_in + (span-1)*j_in, j_out = j_in*S, start_out = start_in + ((span-1)/2 - lo)*j_in.
    Padding depends on the input size only for 'same'; its `lo` at stride 1 is input-independent,
    and at stride > 1 we take the lo of a large input, which is what deep stacks see.
    """
    size, jump, start = 1, 1, 0.5
    for i, g in enumerate(layers):
        if not isinstance(g, ConvGeometry):
            raise ValueError(f"layers[{i}] must be a ConvGeometry; got {type(g).__name__}")
        lo = g.pads(max(g.span * g.stride * 8, 1))[0]
        size += (g.span - 1) * jump
        start += ((g.span - 1) / 2 - lo) * jump
        jump *= g.stride
    return ReceptiveField(size=size, jump=jump, start=start)


def output_hw(hw: tuple[int, int], geometry: ConvGeometry) -> tuple[int, int]:
    """(H, W) after a square window applied along both axes."""
    return geometry.out_size(hw[0]), geometry.out_size(hw[1])


__all__ = [
    "ConvGeometry",
    "collapse_message",
    "ksp_text",
    "PaddingSpec",
    "ReceptiveField",
    "explain",
    "extra_pixel_side",
    "out_size",
    "output_hw",
    "receptive_field",
    "same_padding",
]
