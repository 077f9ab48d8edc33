"""How the benchmark measures: wall time with device synchronization, peak memory, and the three workloads.

Peak memory is reported the same way on both devices: the bytes a model keeps between steps (parameters and
optimizer state) plus the largest growth of memory during one step or call. Every model of a run is resident
at once (so that their timings can be interleaved), and this formula leaves the other models out.

* CUDA: growth = ``torch.cuda.max_memory_allocated`` during the step minus ``memory_allocated`` before it
  (tensors only, not the caching allocator's reserve).
* CPU: growth = the process's resident-set high-water mark during the step minus the resident set before it.
  The high-water mark (``VmHWM`` in /proc/self/status) is reset before the step by writing 5 to
  /proc/self/clear_refs (Linux). Where that is not possible it falls back to ``resource.ru_maxrss``, which
  only ever grows, so later models may read 0 growth; the record's ``memory_method`` says which was used.
  ``tracemalloc`` does not see torch's allocations, so it is not used. RSS counts the allocator's cached
  pages too: read CPU figures as approximate.
"""

from __future__ import annotations

import re
import resource
import statistics
import time

import torch

from ..train.step import build_optimizer, optimizer_step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", status.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_rss_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the largest memory growth inside it; ``growth_bytes`` and ``method`` after."""

    def __init__(self, device: torch.device):
        self.device = device
        self.growth_bytes: int | None = None
        self.method = ""

    def __enter__(self):
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda_max_memory_allocated"
        else:
            rss = _proc_status_kib("VmRSS")
            if rss is not None and _reset_rss_high_water_mark():
                self.base = rss * 1024
                self.method = "cpu_rss_high_water_mark"
            else:
                self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
                self.method = "cpu_ru_maxrss"
        return self

    def __exit__(self, *exc_info):
        synchronize(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "cpu_rss_high_water_mark":
            peak = (_proc_status_kib("VmHWM") or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.growth_bytes = max(0, peak - self.base)
        return False


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(tensor_bytes(state.values()) for state in optimizer.state.values())


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def random_tokens(batch: int, length: int, vocab_size: int, device: torch.device, seed: int) -> torch.LongTensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (batch, length), generator=generator).to(device)


class TrainJob:
    """One training step (forward, backward, AdamW step) of one model on a fixed random batch."""

    kind = "train"

    def __init__(self, model, batch: int, seq_len: int, device: torch.device, compiled: bool, seed: int = 0):
        self.model = model.train()
        self.device = device
        self.compiled = compiled
        # fused AdamW on GPU (as the reference figures), the multi-tensor one on CPU
        self.optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")
        self.input_ids = random_tokens(batch, seq_len, model.config.vocab_size, device, seed)
        self.forward = torch.compile(model) if compiled else model
        self.last_loss = None

    def run(self) -> None:
        batch = {"input_ids": self.input_ids, "labels": self.input_ids}
        self.last_loss, _ = optimizer_step(self.model, [batch], self.optimizer, forward=self.forward)

    def persistent_bytes(self) -> int:
        return tensor_bytes(self.model.parameters()) + optimizer_state_bytes(self.optimizer)


class DecodeJob:
    """``generate`` with the cache: greedy, a fixed number of new tokens, from a random prompt."""

    kind = "decode"

    def __init__(
        self,
        model,
        batch: int,
        prompt_len: int,
        new_tokens: int,
        cache: str,
        device: torch.device,
        compiled: bool,
        seed: int = 0,
    ):
        self.model = model.eval()
        self.device = device
        self.cache = cache
        # transformers compiles the decoding step itself for a static cache on CUDA; elsewhere nothing compiles
        self.compiled = compiled and cache == "static" and device.type == "cuda"
        self.input_ids = random_tokens(batch, prompt_len, model.config.vocab_size, device, seed)
        self.kwargs = dict(
            attention_mask=torch.ones_like(self.input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # never stop early at EOS: every call makes the same number of tokens
            do_sample=False,
            pad_token_id=0,
        )
        if cache == "static":
            self.kwargs.update(cache_implementation="static", disable_compile=not self.compiled)
        self.new_tokens = new_tokens

    @torch.no_grad()
    def run(self) -> None:
        output = self.model.generate(self.input_ids, **self.kwargs)
        expected = self.input_ids.shape[1] + self.new_tokens
        if output.shape[1] != expected:
            raise RuntimeError(f"generate returned {output.shape[1]} tokens per row, expected {expected}")

    def persistent_bytes(self) -> int:
        return tensor_bytes(self.model.parameters())


def time_once(job, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    job.run()
    synchronize(device)
    return time.perf_counter() - start


def measure_peak(job, device: torch.device) -> tuple[int, str]:
    with PeakMemory(device) as meter:
        job.run()
    return job.persistent_bytes() + meter.growth_bytes, meter.method


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_device_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 10) -> float:
    """Dense matmul throughput (TFLOP/s) of ``size``^3 products: the measured ceiling MFU can be quoted against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12
