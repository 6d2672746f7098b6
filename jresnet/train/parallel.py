"""Data parallelism with jax.sharding: a one-axis ``data`` mesh over every device, replicated
parameters, batches split along B, and a prefetcher that puts the next host batches on the devices
while the current step runs.

On one CPU the mesh has one device. Several hosts: call ``jax.distributed.initialize()`` first; each
process then loads its own share of each batch and `put_batch` assembles the global array.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DataParallel", "prefetch"]


class DataParallel:
    """The mesh and the two shardings a data-parallel step needs."""

    def __init__(self, devices: list[Any] | None = None) -> None:
        devices = list(devices if devices is not None else jax.devices())
        self.mesh = Mesh(np.array(devices), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def shardings(self) -> tuple[NamedSharding, NamedSharding]:
        """(replicated, batch-sharded), as `jresnet.train.step` takes them."""
        return self.replicated, self.batch

    def check_batch_size(self, batch_size: int) -> None:
        """The global batch must split evenly over the devices."""
        if batch_size % self.num_devices:
            raise ValueError(
                f"train.batch_size={batch_size} must be divisible by the {self.num_devices} devices of the "
                f"data mesh; use a multiple of {self.num_devices}"
            )

    def replicate(self, tree: Any) -> Any:
        """Place a pytree (the train state) on every device."""
        return jax.device_put(tree, self.replicated)

    def put_batch(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        """Put this process's rows of a batch on the devices, split along B."""
        return tuple(jax.make_array_from_process_local_data(self.batch, a) for a in arrays)


def prefetch(batches: Iterator[Any], put: Callable[[Any], Any], size: int = 2) -> Iterator[Any]:
    """Yield ``put(batch)`` for each batch, computed ``size`` batches ahead in a background thread,
    so host-to-device copies overlap the running step."""
    q: queue.Queue[Any] = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                q.put(put(batch))
            q.put(done)
        except BaseException as err:  # re-raised in the consumer, where the user can see it
            q.put(err)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
