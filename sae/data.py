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
from sae.settings import TrainSettings

SINK_SAMPLE_SEED = 7  # the draw the median norm is taken on (fixed: the limit is part of a run's identity)


class BatchSource(Protocol):
    d_in: int
    n_tokens: int  # vectors available per epoch
    model_id: str
    info: dict  # what identifies the data (stored in each dictionary's config)
    model: dict  # the model record (activations.provenance) each dictionary copies: how commands tell its model

    def batches(self, batch_size: int, n_tokens: int, seed: int, start_batch: int = 0) -> Iterator[Tensor]: ...


@dataclass
class CacheSource:
    """Shuffled token batches of one hook of an activation cache file, from a range of its contexts.

    `contexts` = [lo, hi) is the part drawn from (a train / held-out split);
    `skip_first` drops position 0 of every context: with no BOS it is the
    attention sink, whose norm (~8x the rest on SmolLM2) would dominate both
    the loss and every metric. `max_norm` drops the other massive-activation
    tokens (at SmolLM2's layer 23, position 1 of some contexts has ~75x the
    median norm: 0.007 % of the tokens, 23 % of the variance) from every batch.
    Dropping within a batch rather than before batching keeps the batch
    numbering, so resuming is unchanged; a batch is then a few rows short.
    """

    path: Path
    hook: str
    contexts: tuple[int, int] | None = None
    skip_first: bool = False
    max_norm: float | None = None
    d_in: int = 0
    n_tokens: int = 0
    model_id: str = ""
    info: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from activations.provenance import record_of
        from activations.reader import ActivationCache

        self.path = Path(self.path)
        with ActivationCache(self.path) as cache:
            self.d_in = cache.width(self.hook)
            lo, hi = cache.context_range(self.contexts)
            self.contexts = (lo, hi)
            self.n_tokens = int(cache.n_tokens(contexts=self.contexts, skip_first=self.skip_first))
            self.model_id = cache.model_id
            self.model = record_of(cache.attrs)
            self.info = {"cache": str(self.path.resolve()), "cache_tokens": int(cache.n_tokens()),
                         "cache_dtype": str(cache.attrs.get("dtype", "")), "context_length": cache.context_length,
                         "bos_prepended": bool(cache.bos_prepended), "contexts": [lo, hi],
                         "tokens": self.n_tokens, "position_0": "excluded" if (
                             self.skip_first or cache.bos_prepended) else "kept"}
            if self.max_norm is not None:
                self.info["sink_norm_limit"] = float(self.max_norm)

    def batches(self, batch_size: int, n_tokens: int, seed: int, start_batch: int = 0) -> Iterator[Tensor]:
        from activations.reader import ActivationCache

        with ActivationCache(self.path) as cache:
            for batch in cache.iter_batches(self.hook, batch_size, n_tokens=n_tokens, seed=seed,
                                            start_batch=start_batch, contexts=self.contexts,
                                            skip_first=self.skip_first):
                if self.max_norm is not None:
                    keep = batch.norm(dim=1) <= self.max_norm
                    # a batch of nothing but sinks (never seen: they are ~1 in 10^4) stays whole, so a step is a step
                    batch = batch[keep] if bool(keep.any()) else batch
                yield batch


def sink_norm_limit(path: str | Path, hook: str, contexts: tuple[int, int], skip_first: bool, factor: float,
                    sample_tokens: int = 32_768) -> float | None:
    """`factor` x the median token norm of a seeded sample of `contexts` (the training split), or None for 0.

    The median, not the mean, because the tokens it is meant to find are the
    ones that drag the mean; computed on training contexts only, so held-out
    tokens never decide their own exclusion.
    """
    from activations.reader import ActivationCache

    if factor == 0:
        return None
    with ActivationCache(Path(path)) as cache:
        n = cache.n_tokens(contexts=contexts, skip_first=skip_first)
        take = max(1, min(sample_tokens, n))
        norms = torch.cat([b.norm(dim=1) for b in cache.iter_batches(
            hook, min(1024, take), n_tokens=take, seed=SINK_SAMPLE_SEED, contexts=contexts, skip_first=skip_first)])
    return factor * float(norms.median())


def split_cache(path: str | Path, hook: str, eval_fraction: float, skip_first: bool,
                sink_factor: float = TrainSettings.sink_factor) -> tuple[CacheSource, CacheSource | None]:
    """(train, held-out) sources: the last `eval_fraction` of the contexts is never trained on.

    Whole contexts, at the end, so no token of a held-out context was seen
    in training and the split does not depend on the batch size or seed.
    `sink_factor` > 0 leaves out of both every token whose norm exceeds that
    many times the training split's median norm (see `sink_norm_limit`); its
    default is `train-sae`'s, so a Python caller gets what the command does.
    """
    from common.errors import UserError
    from activations.reader import ActivationCache

    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"--eval-fraction {eval_fraction} must be in [0, 1): e.g. 0.1 holds out the last 10% of contexts")
    with ActivationCache(Path(path)) as cache:
        n = cache.n_contexts
    n_eval = 0 if eval_fraction == 0 else max(1, int(round(n * eval_fraction)))
    if n_eval >= n:
        raise UserError(f"{path} has {n} contexts, too few to hold out {eval_fraction:.0%} and still train: "
                        "cache more or lower --eval-fraction")
    if not (sink_factor == 0 or sink_factor >= 1):  # NaN fails both
        raise UserError(f"--sink-factor {sink_factor} must be 0 (keep every token) or at least 1 (e.g. 20: leave out "
                        "tokens with over 20x the median norm)")
    limit = sink_norm_limit(path, hook, (0, n - n_eval), skip_first, sink_factor)
    train = CacheSource(Path(path), hook, contexts=(0, n - n_eval), skip_first=skip_first, max_norm=limit)
    held_out = CacheSource(Path(path), hook, contexts=(n - n_eval, n), skip_first=skip_first,
                           max_norm=limit) if n_eval else None
    return train, held_out


@dataclass
class TensorSource:
    """In-memory data with the same batching contract (deterministic, resumable, loops epochs)."""

    data: Tensor
    model_id: str = "synthetic"
    info: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)

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


def passes(tokens: int, available: int) -> float:
    """How many times `tokens` draws go over `available` vectors (each epoch reshuffled)."""
    return tokens / max(1, available)


def passes_line(tokens: int, available: int) -> str:
    """The one line train-sae prints when --tokens exceeds the training tokens, e.g. "1,000,000 tokens over a
    14,490-token cache = 69 passes": repeating data silently would look like training on fresh tokens."""
    n = passes(tokens, available)
    shown = f"{n:.0f}" if n >= 10 else f"{n:.1f}"
    return (f"note: --tokens {tokens:,} over a {available:,}-token cache (its training contexts) = {shown} passes over "
            "the same tokens; cache more text for fresh data, or lower --tokens")


def dead_tokens_line(settings: TrainSettings) -> str | None:
    """The note train-sae prints when the dead-latent window is not shorter than the run: no latent can be counted
    dead, so the loss that revives dead latents (AuxK, or JumpReLU's pre-activation loss) never acts, and a run
    with many dead latents would not say why."""
    own = settings.own_settings
    if not hasattr(own, "dead_latent_loss"):
        return None
    flag, window, weight = own.dead_latent_loss()
    if weight <= 0 or window < settings.tokens:
        return None
    return (f"note: the dead-latent window ({flag} {window:,}) is not shorter than --tokens {settings.tokens:,}: "
            "no latent can count as dead, so the loss that revives dead latents never acts; lower " + flag)


def check_fits(dictionary, d_in: int, hook: str, used_on: dict | str, where: str, allow: bool = False) -> dict:
    """A dictionary used on data it was not made for fails here, with the fix in the message.

    `used_on` is the data's model record (`activations.provenance.record_of(cache.attrs)`; a bare model id is
    accepted too). Returns the pairing entry the command records (see `activations.provenance.check_pairing`).
    """
    from activations.provenance import check_pairing

    if dictionary.d_in != d_in:
        raise DictionaryError(
            f"dictionary {dictionary.name!r} has d_in={dictionary.d_in} but {where} has width {d_in} at {hook!r}: "
            "use a dictionary trained on this model and hook, or a cache of the model and hook it was trained on")
    record = {"model_id": used_on} if isinstance(used_on, str) else used_on
    return check_pairing(dictionary, record, where, allow=allow)
