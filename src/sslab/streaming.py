"""Where the training images live: on the device (resident) or streamed from the memory-mapped cache.

Resident (today's fast path): the uint8 images sit on the device and each step indexes them there. Streamed:
they stay in the host's memory-mapped cache (data/cache.py; file-backed pages, reclaimable, shared by the
processes of a machine) and a `StreamingFeed` thread gathers the next batch's rows into pinned host memory
and copies them to the device with `non_blocking` on its own CUDA stream while the current step runs. Either
way the batch is the same uint8 tensor, so the batched augmentation on the device, the sample order
(`BatchSource`) and the results are the same.

`decide_placement` chooses by size: resident when the images fit the device's free memory less a margin
for the model and activations, else streamed; `--data-on-device {auto,always,never}` overrides it.

Host memory of a streamed run: the feed gathers into a ring of host buffers allocated once (`depth + 1`
pinned ones on a GPU machine; on the CPU `depth + 2`, handed out as the batches themselves), so its anonymous
memory is a few batches, whatever the size of the dataset, and does not grow with the allocator's
fragmentation: see `feed_memory_bound`.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import torch

from sslab.data.base import Images, gather

PLACEMENTS = ("auto", "always", "never")
PLACEMENT_HELP = ("where the training images live: auto decides by size (resident when they fit the device's "
                  "free memory less a margin for the model); always copies them to the device (the fastest steps, "
                  "but device memory for the whole dataset); never streams them from the memory-mapped cache in "
                  "host memory, a batch ahead of the step (device memory for a few batches; each batch crosses "
                  "PCIe)")
MARGIN_FRACTION = 0.25  # of the device's total memory, kept for the model, optimiser and activations
MARGIN_MIN_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Placement:
    resident: bool  # True: the images are copied to the device; False: streamed from host memory
    reason: str  # for the start-up line: "streaming the data: it needs 19.1 GiB, the GPU has 12.0 GiB free ..."


def decide_placement(mode: str, data_bytes: int, device: torch.device, free_and_total: tuple[int, int] | None = None,
                     rows_of_cache: bool = False) -> Placement:
    """Resident or streamed, and why. `mode`: --data-on-device. `data_bytes`: what the images (and labels) take
    on the device. `free_and_total`: the device's (free, total) bytes (default: `torch.cuda.mem_get_info`).
    `rows_of_cache`: the images are a selection of the cache too large to copy (`ImageRows`); on the CPU,
    where a whole cache is used in place, such a selection is streamed rather than copied."""
    if mode not in PLACEMENTS:
        from sslab.errors import ConfigError

        raise ConfigError(f"--data-on-device must be one of {', '.join(PLACEMENTS)}, got {mode!r}")
    size = _gib(data_bytes)
    if mode == "always":
        return Placement(True, f"data on the device ({size}), as --data-on-device always asks")
    if mode == "never":
        return Placement(False, f"data streamed from the memory-mapped cache ({size}), as --data-on-device never asks")
    if device.type != "cuda":
        if rows_of_cache:
            return Placement(False, f"data streamed from the memory-mapped cache: a selection of {size}, too large to "
                                    "copy in memory (--data-on-device always copies it)")
        return Placement(True, f"data in host memory ({size}; the {device.type} is the device)")
    free, total = free_and_total if free_and_total is not None else torch.cuda.mem_get_info(device)
    margin = max(MARGIN_MIN_BYTES, int(MARGIN_FRACTION * total))
    room = f"the GPU has {_gib(free)} free and {_gib(margin)} is kept for the model and activations"
    if data_bytes <= free - margin:
        return Placement(True, f"data on the device: it needs {size}, {room} (--data-on-device never streams it)")
    return Placement(False, f"data streamed from the memory-mapped cache: it needs {size}, {room} "
                            "(--data-on-device always would copy it anyway)")


def _gib(n: int) -> str:
    if n >= 2**27:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def feed_memory_bound(batch: int, image: tuple[int, ...] | torch.Size, depth: int = 2) -> int:
    """Anonymous host memory a feed holds at most: its `depth + 2` host buffers of a batch each (a GPU feed uses
    `depth + 1`, pinned), allocated once, plus the indices of the batches in flight."""
    per_batch = batch * int(torch.Size(image).numel()) + 8 * batch
    return (depth + 2) * per_batch


class StreamingFeed:
    """Batches of `images` (uint8 (N, C, H, W) on the host: a memory-mapped tensor or `ImageRows`) on `device`.

    `feed.batch(indices)` returns `images[indices]` on the device, like indexing the resident tensor;
    `feed.prefetch(indices)` starts gathering a later batch in the background (call it with the next step's
    indices before running the current step). Batches are handed out in the order they were prefetched; a
    `batch()` whose indices were not prefetched next is gathered at once. Indices are CPU int64 (N,).
    `depth`: how many batches may be gathered ahead. On the CPU a batch is one of the feed's buffers: it stays
    valid until the next `batch()` call (use it in the step, or clone it). Use as a context manager, or
    call `close()`."""

    def __init__(self, images: Images, device: torch.device | str, depth: int = 2, pin: bool | None = None):
        self.images, self.device, self.depth = images, torch.device(device), depth
        self.pin = torch.cuda.is_available() and self.device.type == "cuda" if pin is None else pin
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._todo: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._expected: list[torch.Tensor] = []  # prefetched indices, in order, not yet handed out
        self._buffers: list[tuple[torch.Tensor, Any]] = []  # pinned host buffers and the copy that last used each
        self._next_buffer = 0
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="sslab-streaming-feed", daemon=True)
        self._thread.start()

    # ---- the step's side --------------------------------------------------------------------------------
    def prefetch(self, indices: torch.Tensor) -> None:
        """Start gathering `images[indices]` in the background."""
        indices = _cpu_indices(indices)
        self._expected.append(indices)
        self._todo.put(indices)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """`images[indices]` on the device (uint8 (B, C, H, W)): the prefetched batch when these indices were
        prefetched next, else gathered now (and every batch prefetched before it is dropped)."""
        indices = _cpu_indices(indices)
        if self._expected and torch.equal(self._expected[0], indices):
            self._expected.pop(0)
            return self._take()
        self._drop_prefetched()
        return self._finish(self._to_device(indices))

    def _take(self) -> torch.Tensor:
        item = self._ready.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return self._finish(item)

    def _finish(self, item: tuple[torch.Tensor, Any]) -> torch.Tensor:
        x, copied = item
        if copied is not None:  # the copy ran on the feed's stream: the step's stream waits for it, not the host
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(copied)
            x.record_stream(stream)  # the allocator must not reuse x's memory before the step's work is done
        return x

    def _drop_prefetched(self) -> None:
        while self._expected:
            self._expected.pop(0)
            item = self._ready.get()
            if isinstance(item, BaseException):
                raise item

    # ---- the background thread ----------------------------------------------------------------------------
    def _work(self) -> None:
        if self._cuda and self.device.index is not None:
            torch.cuda.set_device(self.device)  # a new thread's current GPU is 0: under torchrun, every rank's pinned
            # buffers would open a CUDA context there
        while True:
            indices = self._todo.get()
            if indices is None:
                return
            try:
                item: Any = self._to_device(indices)
            except BaseException as e:  # handed to the step, which raises it
                item = e
            self._ready.put(item)

    def _to_device(self, indices: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Gather the rows (into a pinned buffer on a GPU machine) and copy them to the device on the feed's
        stream; (device tensor, the CUDA event that marks the copy done, or None on the CPU)."""
        if self._cuda and self.images.device == self.device:  # rows of a tensor already on the GPU: gathered there
            return gather(self.images, indices), None
        slot, host = self._host_buffer(len(indices))
        gather(self.images, indices, out=host)
        if not self._cuda:  # on the CPU the buffer is the batch (no allocation per step: RssAnon stays flat)
            return host, None
        with torch.cuda.stream(self._stream):
            x = host.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._stream)
        self._buffers[slot] = (self._buffers[slot][0], copied)
        return x, copied

    def _host_buffer(self, n: int) -> tuple[int, torch.Tensor]:
        """(slot, buffer): the next of the host buffers (pinned where a GPU is), once the copy that last read it
        has finished; its first `n` rows. A GPU feed needs `depth + 1` (one copying, `depth` gathered ahead); a
        CPU feed hands the buffer itself out, so it needs `depth + 2`: the one the step uses, `depth` waiting in
        the queue and one being gathered; a batch stays valid until the step takes the next one."""
        slots = self.depth + (1 if self._cuda else 2)
        if len(self._buffers) < slots:
            self._buffers.append((torch.empty((0, *self.images.shape[1:]), dtype=torch.uint8), None))
        slot = self._next_buffer
        self._next_buffer = (slot + 1) % slots
        buffer, last_copy = self._buffers[slot]
        if last_copy is not None:
            last_copy.synchronize()
        if len(buffer) < n:
            buffer = torch.empty((n, *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)
            self._buffers[slot] = (buffer, None)
        return slot, buffer[:n]

    # ---- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._todo.put(None)
        while self._thread.is_alive():  # unblock a worker waiting to hand over a batch
            try:
                self._ready.get(timeout=0.05)
            except queue.Empty:
                pass
        self._expected = []

    def __enter__(self) -> "StreamingFeed":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class StreamedImages:
    """The training images as the train step indexes them (`images[indices]`), streamed a batch ahead.

    The epoch loop announces each epoch's sample order (`start_epoch(order, first_step)`, also after a resume in
    the middle of an epoch); every `images[indices]` is then the next step's batch, and the batch of the step after
    it is prefetched while this one runs. `indices_of(order, step) -> indices` is `BatchSource.indices`: the
    batch's indices are taken from the CPU order, so reading them never waits for the GPU."""

    def __init__(self, feed: StreamingFeed, indices_of: Any, steps_per_epoch: int):
        self.feed, self.indices_of, self.steps_per_epoch = feed, indices_of, steps_per_epoch
        self.order: torch.Tensor | None = None
        self.step = 0
        self.shape = feed.images.shape

    def __len__(self) -> int:
        return len(self.feed.images)

    def start_epoch(self, order: torch.Tensor, first_step: int) -> None:
        self.order, self.step = order.cpu(), first_step
        if first_step < self.steps_per_epoch:
            self.feed.prefetch(self.indices_of(self.order, first_step))

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        if self.order is None:  # no order announced: gather what was asked, now
            return self.feed.batch(indices)
        if self.step + 1 < self.steps_per_epoch:
            self.feed.prefetch(self.indices_of(self.order, self.step + 1))  # gathered while this step runs
        self.step += 1
        return self.feed.batch(self.indices_of(self.order, self.step - 1))  # = `indices`, from the CPU order


def _cpu_indices(indices: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(indices, dtype=torch.int64).cpu()


__all__ = ["PLACEMENTS", "PLACEMENT_HELP", "Placement", "decide_placement", "StreamingFeed", "StreamedImages",
           "feed_memory_bound"]
