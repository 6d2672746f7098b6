"""A process-wide choice among named compute cores, as `set_conv_core` and `set_norm_core` make it.

The choice is read when a function is traced, so it takes effect at the next trace; jit caches keep what
they traced before. Choosing "onednn" where jresnet's oneDNN kernels cannot load raises, and says why.
"""

from __future__ import annotations

from jresnet import native

__all__ = ["CoreChoice"]


class CoreChoice:
    """One of ``cores`` (the first is the default), set through the public function named ``setter``."""

    def __init__(self, setter: str, cores: tuple[str, ...]) -> None:
        self.setter = setter
        self.cores = cores
        self.name = cores[0]

    def set(self, name: str) -> str:
        """Choose ``name``; returns the previous choice. Rejects an unknown name, or "onednn" without its kernels."""
        if name not in self.cores:
            raise ValueError(f"{self.setter}: name must be one of {self.cores}; got {name!r}")
        if name == "onednn" and not native.available():
            raise RuntimeError(f"{self.setter}('onednn'): the oneDNN kernels are not available: "
                               f"{native.unavailable_reason()}")
        previous, self.name = self.name, name
        return previous
