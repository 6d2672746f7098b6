"""Typed, checked layers: Conv2d, BatchNorm2d, pooling, ReLU and a Linear head.

Every layer takes and returns (B, C, H, W) through ``__call__``. Inside a model the layers talk to each
other through ``forward_nhwc`` in (B, H, W, C), which XLA's CPU convolutions run fastest, so a whole
model transposes only once, at its boundary. Parameters keep PyTorch's layouts and names: a conv
kernel ``weight`` is (C_out, C_in/groups, K, K); BatchNorm has ``weight``, ``bias``, ``running_mean``
and ``running_var``.

Mixed precision: a layer computes in the dtype of its input, casting its f32 parameters to it, so
feeding bf16 images gives bf16 compute with f32 parameters; BatchNorm statistics stay f32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jaxtyping import Array, Float

from jresnet.conv_core import conv2d_nhwc
from jresnet.norm_core import batch_norm_train_with_stats, normalize
from jresnet.shapes import ConvGeometry, PaddingSpec
from jresnet.typing import ShapeError, fmt_nchw, require_images, shapechecked

__all__ = [
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "DropPath",
    "GlobalAvgPool",
    "Identity",
    "Linear",
    "MaxPool2d",
    "NCHWModule",
    "ReLU",
    "to_nchw",
    "to_nhwc",
]


def to_nhwc(x: jax.Array) -> jax.Array:
    """(B, C, H, W) -> (B, H, W, C)."""
    return jnp.transpose(x, (0, 2, 3, 1))


def to_nchw(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C, H, W)."""
    return jnp.transpose(x, (0, 3, 1, 2))


class NCHWModule(nnx.Module):
    """Base of every jresnet layer and block: a public (B, C, H, W) ``__call__`` around an internal
    (B, H, W, C) ``forward_nhwc``.

    ``path`` is the module's place in its model (``layer2.0.conv1``), set by the model so that error
    messages can name it; ``in_channels`` is checked against every input.
    """

    in_channels: int | None = None
    path: str = ""

    @property
    def where(self) -> str:
        """How error messages name this module: its path in the model and its type."""
        name = type(self).__name__
        return f"{self.path} ({name})" if self.path else name

    def check_input(self, x: Any, layout: str = "NHWC") -> None:
        """Trace-time checks of rank, dtype and channels; layers add their own arithmetic."""
        require_images(x, self.where, self.in_channels, layout=layout)

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 C2"]:
        raise NotImplementedError

    def __call__(self, x: Float[Array, "B C H W"]) -> Float[Array, "B C2 H2 W2"]:
        """Apply the module to (B, C, H, W) images; returns (B, C_out, H_out, W_out)."""
        return self._call_nchw(x)

    @shapechecked(layout="NCHW")
    def _call_nchw(self, x: Float[Array, "B C H W"]) -> Float[Array, "B C2 H2 W2"]:
        return to_nchw(self.forward_nhwc(to_nhwc(x)))


def _draw(rngs: nnx.Rngs, shape: tuple[int, ...], kind: str, scale: float) -> jax.Array:
    """Draw an initial value: ``scale * N(0, 1)`` or ``U(-scale, scale)``, f32.

    Concrete values are drawn on the host by numpy, seeded from the next ``params`` key: with
    jax.random every new kernel shape is a new XLA compile (~0.6 s each on CPU), which made building
    resnet20 take 10 s. Under tracing (``nnx.eval_shape``, ``jax.jit``) jax.random is used instead.
    Either way the value is a pure function of the seed.
    """
    key = rngs.params()
    if isinstance(key, jax.core.Tracer):
        if kind == "normal":
            return jax.random.normal(key, shape) * scale
        return jax.random.uniform(key, shape, minval=-scale, maxval=scale)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    value = rng.standard_normal(shape) * scale if kind == "normal" else rng.uniform(-scale, scale, shape)
    return jnp.asarray(value, jnp.float32)


def kaiming_normal_fan_out(rngs: nnx.Rngs, shape: tuple[int, ...]) -> jax.Array:
    """torchvision's ResNet conv init: N(0, 2/fan_out) with fan_out = C_out * K * K."""
    return _draw(rngs, shape, "normal", math.sqrt(2.0 / (shape[0] * math.prod(shape[2:]))))


class Conv2d(NCHWModule):
    """2-D convolution with a (C_out, C_in/groups, K, K) kernel.

    ``padding`` is an int P (P pixels each side; P=(K-1)/2 keeps the size for odd K), ``"same"``
    (lax's SAME: an even kernel's extra pixel goes after, bottom/right), ``"valid"`` or a (lo, hi)
    pair applied to both H and W. ``bias`` defaults to True as in PyTorch; ResNets pass False.
    Weights use kaiming-normal fan_out, as torchvision's ResNets do.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: PaddingSpec = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Conv2d: {name} must be an int >= 1; got {name}={value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels={in_channels} and out_channels={out_channels} must both be divisible "
                f"by groups={groups}"
            )
        self.geometry = ConvGeometry(kernel_size, stride, padding, dilation)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        self.weight = nnx.Param(kaiming_normal_fan_out(rngs, shape))
        self.bias = nnx.Param(jnp.zeros((out_channels,))) if bias else None

    def check_input(self, x: Any, layout: str = "NHWC") -> None:
        super().check_input(x, layout)
        h, w = (x.shape[1], x.shape[2]) if layout == "NHWC" else (x.shape[2], x.shape[3])
        for axis, n in (("H", h), ("W", w)):
            try:
                self.geometry.out_size(n)
            except ValueError as err:
                g = self.geometry
                raise ShapeError(
                    f"{self.where}: output {axis} collapses to zero size. Input {axis}={n}, kernel K={g.kernel}, "
                    f"stride S={g.stride}, padding P={g.padding!r}: {err}. Feed larger images or remove a "
                    "downsampling layer."
                ) from None

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """(H_out, W_out) by the seed's formula."""
        return self.geometry.out_size(h), self.geometry.out_size(w)

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 {self.out_channels}"]:
        g = self.geometry
        pads = [g.pads(x.shape[1]), g.pads(x.shape[2])]
        y = conv2d_nhwc(x, self.weight[...].astype(x.dtype), stride=g.stride, padding=pads, dilation=g.dilation,
                        groups=self.groups)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        expected = (x.shape[0], *self.output_hw(x.shape[1], x.shape[2]), self.out_channels)
        if y.shape != expected:  # guards our own arithmetic against lax's
            raise ShapeError(f"{self.where}: lax produced {fmt_nchw(y.shape)}, the formula {fmt_nchw(expected)}")
        return y


class BatchNorm2d(NCHWModule):
    """Batch normalisation over (B, H, W) per channel, with PyTorch's names and defaults.

    ``momentum`` is in Flax's convention (0.9 keeps 90% of the running value), which is PyTorch's 0.1.
    Like PyTorch, the running variance is updated with the unbiased batch variance, while the batch
    itself is normalised with the biased one. ``model.train()`` / ``model.eval()`` switch
    ``use_running_average``.
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.9,
        zero_init: bool = False,
        use_running_average: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"BatchNorm2d: num_features must be an int >= 1; got {num_features!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BatchNorm2d: momentum (Flax convention) must be in [0, 1); got {momentum}")
        self.in_channels = num_features
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = use_running_average
        self.weight = nnx.Param(jnp.zeros((num_features,)) if zero_init else jnp.ones((num_features,)))
        self.bias = nnx.Param(jnp.zeros((num_features,)))
        self.running_mean = nnx.BatchStat(jnp.zeros((num_features,)))
        self.running_var = nnx.BatchStat(jnp.ones((num_features,)))

    @shapechecked
    def forward_nhwc(
        self, x: Float[Array, "B H W {self.num_features}"], *, relu: bool = False
    ) -> Float[Array, "B H W {self.num_features}"]:
        """Normalise x; with ``relu=True`` also apply the ReLU that follows, in the same kernels where it can.

        jresnet's blocks pass ``relu=True`` for every norm that a ReLU follows: on CPU the oneDNN norm core
        (`jresnet.norm_core`) fuses it, elsewhere it is the same ``jax.nn.relu`` after the norm.
        """
        if self.use_running_average:
            y = normalize(x.astype(jnp.float32), self.running_mean[...], self.running_var[...], self.weight[...],
                          self.bias[...], self.eps)
            return (jax.nn.relu(y) if relu else y).astype(x.dtype)
        # x in its own dtype: the norm core computes in float32 but picks its kernels by x's dtype
        y, mean, var = batch_norm_train_with_stats(x, self.weight[...], self.bias[...], self.eps, relu=relu)
        n = x.shape[0] * x.shape[1] * x.shape[2]
        unbiased = var * (n / max(n - 1, 1))
        m = self.momentum
        self.running_mean[...] = m * self.running_mean[...] + (1 - m) * mean
        self.running_var[...] = m * self.running_var[...] + (1 - m) * unbiased
        return y.astype(x.dtype)


class ReLU(NCHWModule):
    """max(x, 0); a module so that it can sit in a list, as in PyTorch's nn.Sequential."""

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        return jax.nn.relu(x)


class Identity(NCHWModule):
    """Returns its input."""

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        return x


class _Pool2d(NCHWModule):
    """Shared arithmetic of square pooling windows."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: PaddingSpec = 0) -> None:
        self.geometry = ConvGeometry(kernel_size, kernel_size if stride is None else stride, padding)
        if not isinstance(padding, str) and max(self.geometry.pads(kernel_size)) > kernel_size // 2:
            # A window lying wholly in the padding would pool nothing: -inf for max, 0/0 for mean.
            raise ValueError(f"{type(self).__name__}: padding must be at most half the kernel "
                             f"({kernel_size // 2}); got padding={padding!r}")

    def check_input(self, x: Any, layout: str = "NHWC") -> None:
        super().check_input(x, layout)
        h, w = (x.shape[1], x.shape[2]) if layout == "NHWC" else (x.shape[2], x.shape[3])
        for axis, n in (("H", h), ("W", w)):
            try:
                self._out_size(n)
            except ValueError as err:
                raise ShapeError(f"{self.where}: output {axis} collapses to zero size at {axis}={n}: {err}") from None

    def _out_size(self, n: int) -> int:
        return self.geometry.out_size(n)

    def pads(self, n: int) -> tuple[int, int]:
        """The (lo, hi) padding of an input of ``n`` pixels."""
        return self.geometry.pads(n)

    def _window(self, x: jax.Array, init: float, op: Any) -> jax.Array:
        g = self.geometry
        pads = ((0, 0), self.pads(x.shape[1]), self.pads(x.shape[2]), (0, 0))
        # a numpy scalar, not a jnp one: JAX recognises (lax.max, -inf) and (lax.add, 0) as its differentiable
        # max- and sum-pool only when the initial value is a concrete constant; a traced one has no gradient
        return lax.reduce_window(x, np.array(init, x.dtype), op, (1, g.kernel, g.kernel, 1),
                                 (1, g.stride, g.stride, 1), pads)


class MaxPool2d(_Pool2d):
    """Max pooling; padded pixels never win (they are -inf), as in PyTorch."""

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 C"]:
        return self._window(x, -jnp.inf, lax.max)


class AvgPool2d(_Pool2d):
    """Average pooling with PyTorch's ``ceil_mode`` and ``count_include_pad`` options.

    ResNet-D's shortcut uses ``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)`` so that an odd
    input gives ceil(n/2), the same as the strided 3×3 conv beside it.
    """

    def __init__(
        self,
        kernel_size: int,
        stride: int | None = None,
        padding: int = 0,
        *,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding)
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad

    def pads(self, n: int) -> tuple[int, int]:
        lo, hi = self.geometry.pads(n)
        if self.ceil_mode:
            g = self.geometry
            out = -(-(n + lo + hi - g.kernel) // g.stride) + 1
            if (out - 1) * g.stride >= n + lo:  # PyTorch: the last window must start inside the input
                out -= 1
            hi = max(hi, (out - 1) * g.stride + g.kernel - n - lo)
        return lo, hi

    def _out_size(self, n: int) -> int:
        lo, hi = self.pads(n)
        return ConvGeometry(self.geometry.kernel, self.geometry.stride, (lo, hi)).out_size(n)

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 C"]:
        sums = self._window(x, 0.0, lax.add)
        if self.count_include_pad and not self.ceil_mode:
            return sums / (self.geometry.kernel**2)
        # Divide by the pixels each window really covers: explicit padding counts only when asked for,
        # the ceil-mode overhang never does (PyTorch's rule).
        g = self.geometry
        ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
        (lo_h, hi_h), (lo_w, hi_w) = self.pads(x.shape[1]), self.pads(x.shape[2])
        p = g.pads(x.shape[1])[0] if self.count_include_pad else 0
        ones = jnp.pad(ones, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=1)
        counts = lax.reduce_window(ones, jnp.asarray(0, x.dtype), lax.add, (1, g.kernel, g.kernel, 1),
                                   (1, g.stride, g.stride, 1),
                                   ((0, 0), (lo_h - p, hi_h - p), (lo_w - p, hi_w - p), (0, 0)))
        return sums / counts


class GlobalAvgPool(NCHWModule):
    """Mean over H and W: (B, C, H, W) -> (B, C)."""

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B C"]:
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: Float[Array, "B C H W"]) -> Float[Array, "B C"]:  # type: ignore[override]
        """(B, C, H, W) -> (B, C)."""
        return self._pool_nchw(x)

    @shapechecked(layout="NCHW")
    def _pool_nchw(self, x: Float[Array, "B C H W"]) -> Float[Array, "B C"]:
        return jnp.mean(x, axis=(2, 3))


class Linear(nnx.Module):
    """Fully connected head: (B, in_features) -> (B, out_features), PyTorch's layout and init.

    ``weight`` is (out_features, in_features); both it and ``bias`` start as U(-1/sqrt(in), 1/sqrt(in)),
    PyTorch's nn.Linear default, which torchvision's ResNets keep for ``fc``.
    """

    path: str = ""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, rngs: nnx.Rngs) -> None:
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Linear: {name} must be an int >= 1; got {name}={value!r}")
        self.in_features = in_features
        self.out_features = out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nnx.Param(_draw(rngs, (out_features, in_features), "uniform", bound))
        self.bias = nnx.Param(_draw(rngs, (out_features,), "uniform", bound)) if bias else None

    @property
    def where(self) -> str:
        return f"{self.path} (Linear)" if self.path else "Linear"

    def check_input(self, x: Any, layout: str = "") -> None:
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 2 or shape[1] != self.in_features:
            raise ShapeError(
                f"{self.where}: expected features (B, {self.in_features}); got shape {shape}"
            )

    @shapechecked
    def __call__(self, x: Float[Array, "B {self.in_features}"]) -> Float[Array, "B {self.out_features}"]:
        """(B, in_features) -> (B, out_features)."""
        y = x @ self.weight[...].astype(x.dtype).T
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class DropPath(nnx.Module):
    """Stochastic depth: drops a residual branch for whole examples, scaling survivors by 1/(1-rate).

    It is ``nnx.Dropout`` with the mask shared over H, W and C, so ``model.eval()`` turns it off.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath: rate must be in [0, 1); got {rate}")
        self.dropout = nnx.Dropout(rate, broadcast_dims=(1, 2, 3), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Drop each example's branch with probability ``rate`` in train mode."""
        return self.dropout(x)
