"""Measure the peak tensor memory of real `llmtune.training.run.run` calls on CPU (a script run by test_plan.py).

usage: python tests/memprobe.py OUT.json RECIPE.yaml [RECIPE.yaml ...]
       accelerate launch ... tests/memprobe.py OUT.json RECIPE.yaml   (each process writes OUT.json.rank<R>)

A TorchDispatchMode sees every tensor an aten op creates (forward, backward, optimizer, data collation); each new
storage is counted until it is freed (a weakref finalizer), so `peak` is the most tensor bytes alive at once while
`Trainer.train` runs, parameters and buffers included. That is what torch.cuda.max_memory_allocated reports on a
GPU; process RSS is not used because the allocator keeps freed pages and the libraries' own memory hides the signal.
"""

from __future__ import annotations

import json
import resource
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live tensor storages created by aten ops (plus those registered), and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def add(self, tensor: torch.Tensor) -> None:
        tensor = getattr(tensor, "_local_tensor", tensor)  # a DTensor (FSDP2): this process's shard
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live or tensor.device.type != "cpu":
            return
        self.live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self.add(item)
        return out


def measure(recipe_path: str) -> dict[str, float]:
    """Run one recipe through llmtune.training.run.run with the tracker around Trainer.train."""
    from transformers import Trainer

    from llmtune.recipe import load_recipe
    from llmtune.training.run import run

    tracker = LiveTensorBytes()
    original = Trainer.train

    def tracked_train(self, *args, **kwargs):
        for tensor in (*self.model.parameters(), *self.model.buffers()):
            tracker.add(tensor)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with tracker:
            output = original(self, *args, **kwargs)
        tracker.rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
        return output

    Trainer.train = tracked_train
    try:
        result = run(load_recipe(recipe_path))
    finally:
        Trainer.train = original
    return {"peak": tracker.peak, "rss_growth": tracker.rss_growth, "final_loss": result.final_loss}


if __name__ == "__main__":
    import os

    torch.set_num_threads(2 if "RANK" not in os.environ else 1)
    results = {path: measure(path) for path in sys.argv[2:]}
    out = sys.argv[1] + (f".rank{os.environ['RANK']}" if "RANK" in os.environ else "")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
