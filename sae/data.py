"""Where training and evaluation get their vectors: the activation cache, or any batch source.

The trainer only needs `batches(start_batch)`, so tests and benchmarks can
feed in-memory data through exactly the code path the cache uses.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor

from sae.errors import DictionaryError


class BatchSource(Protocol):
    d_in: int
    n_tokens: int  # vectors available per epoch
    model_id: str
    info: dict  # what identifies the data (stored in each dictionary's config)

    def batches(self, batch_size: int, n_tokens: int, seed: int, start_batch: int = 0) -> Iterator[Tensor]: ...


@dataclass
class CacheSource:
    """Shuffled token batches of one hook of an activation cache file."""

    path: Path
    hook: str
    d_in: int = 0
    n_tokens: int = 0
    model_id: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from activations.reader import ActivationCache

        self.path = Path(self.path)
        with ActivationCache(self.path) as cache:
            self.d_in = cache.width(self.hook)
            self.n_tokens = int(cache.n_tokens())
            self.model_id = cache.model_id
            self.info = {"cache": str(self.path.resolve()), "cache_tokens": int(cache.n_tokens()),
                         "cache_dtype": str(cache.attrs.get("dtype", "")), "context_length": cache.context_length,
                         "bos_prepended": bool(cache.bos_prepended)}

    def batches(self, batch_size: int, n_tokens: int, seed: int, start_batch: int = 0) -> Iterator[Tensor]:
        from activations.reader import ActivationCache

        with ActivationCache(self.path) as cache:
            yield from cache.iter_batches(self.hook, batch_size, n_tokens=n_tokens, seed=seed, start_batch=start_batch)


@dataclass
class TensorSource:
    """In-memory data with the same batching contract (deterministic, resumable, loops epochs)."""

    data: Tensor
    model_id: str = "synthetic"
    info: dict = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return int(self.data.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.data.shape[0])

    def batches(self, batch_size: int, n_tokens: int, seed: int, start_batch: int = 0) -> Iterator[Tensor]:
        n = self.data.shape[0]
        per_epoch = n // batch_size
        if per_epoch == 0:
            raise DictionaryError(f"{n} vectors are fewer than one batch of {batch_size}: lower the batch size")
        total = max(1, n_tokens // batch_size)
        for step in range(start_batch, total):
            epoch, i = divmod(step, per_epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            yield self.data[order[i * batch_size:(i + 1) * batch_size]]


def prefetch(make: Callable[[], Iterator[Tensor]], depth: int = 4) -> Iterator[Tensor]:
    """Run an iterator in a background thread so reading overlaps compute; order is unchanged.

    Errors in the reader are re-raised in the consumer, never dropped.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        source = make()
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as err:  # handed to the consumer, which re-raises it
            q.put(err)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, daemon=True)
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
        thread.join(timeout=5)


def check_fits(dictionary, d_in: int, hook: str, model_id: str, where: str) -> None:
    """A dictionary used on data it was not made for fails here, with the fix in the message."""
    if dictionary.d_in != d_in:
        raise DictionaryError(
            f"dictionary {dictionary.name!r} has d_in={dictionary.d_in} but {where} has width {d_in} at {hook!r}: "
            "use a dictionary trained on this model and hook, or a cache of the model and hook it was trained on")
    dict_model = str(dictionary.config.get("model_id", ""))
    if dict_model and model_id and dict_model != model_id:
        raise DictionaryError(
            f"dictionary {dictionary.name!r} was made from model {dict_model!r} but {where} is from {model_id!r}: "
            "use a cache of the same model")
