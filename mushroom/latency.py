"""CPU latency of the formats of one model, measured the one way evaluate.py and the benchmarks share.

Formats are timed **interleaved, round-robin, in one process**: after warm-up rounds, each of
`rounds` rounds times every format once, in an order that rotates from round to round, so that a
change of machine load (the CPU is shared) falls on every format alike instead of on whichever
ran during it. Two measures per format and round:

- `invoke`: the runtime's invoke alone, the input tensor already set (for a Keras model: one call
  of its traced graph on a tensor already made);
- `latency` (end to end): uint8 pixels in -> the input quantized with the file's own scale ->
  invoke -> every output dequantized to float32 out (`TFLiteModel.run` on one image; for Keras:
  pixels cast to float32, the traced call, the outputs as NumPy arrays).

Each thread count is a separate pass with its own interpreters (an interpreter's thread count is
fixed when it is made). Per format and measure: median and p95 (ms), and the ratio to the
reference format (float32) both as a ratio of medians and as the median of the per-round paired
ratios, which a slow drift of the machine's load moves less.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np

MEASURES = ("invoke", "latency")
REFERENCE = "float32"


class Target(Protocol):
    """One format, ready to be timed on one image."""

    def set_input(self, image: np.ndarray) -> None: ...      # untimed: the input tensor of `invoke`
    def invoke(self) -> object: ...                          # timed: the runtime alone
    def end_to_end(self, image: np.ndarray) -> object: ...   # timed: pixels in, dequantized outputs out


class TFLiteTarget:
    """A .tflite file through mushroom.litert.TFLiteModel (one interpreter, its own thread count)."""

    def __init__(self, model):
        self.model = model

    @classmethod
    def from_file(cls, path: str | os.PathLike, threads: int) -> "TFLiteTarget":
        from mushroom.litert import TFLiteModel

        return cls(TFLiteModel(path, num_threads=threads))

    def set_input(self, image: np.ndarray) -> None:
        self.model.set_input(self.model.prepare(image))

    def invoke(self) -> None:
        self.model.invoke()

    def end_to_end(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return self.model.run(image[None])


class CallTarget:
    """A callable taking a float32 batch (1, H, W, 3), e.g. a Keras model's traced call: `invoke` calls
    it on a tensor made once (`to_tensor`, e.g. tf.constant), `end_to_end` on the pixels cast to
    float32 and converts what it returns to NumPy (`to_numpy`)."""

    def __init__(self, fn: Callable, to_tensor: Callable = lambda x: x, to_numpy: Callable = np.asarray):
        self.fn, self.to_tensor, self.to_numpy = fn, to_tensor, to_numpy
        self._x = None

    def set_input(self, image: np.ndarray) -> None:
        self._x = self.to_tensor(np.asarray(image, np.float32)[None])

    def invoke(self) -> object:
        return self.fn(self._x)

    def end_to_end(self, image: np.ndarray) -> object:
        out = self.fn(np.asarray(image, np.float32)[None])
        if isinstance(out, Mapping):
            return {k: self.to_numpy(v) for k, v in out.items()}
        return self.to_numpy(out)


def rotation(names: list[str], r: int) -> list[str]:
    """The order of round r: the formats rotated by r places, so each one leads in turn."""
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


def _percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


@dataclass
class Timings:
    """ms per round, per format and measure, of one interleaved pass at `threads` threads."""

    threads: int
    rounds: int
    warmup: int
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)   # fmt -> measure -> ms per round
    orders: list[list[str]] = field(default_factory=list)                    # the formats' order in each round

    @property
    def formats(self) -> list[str]:
        return list(self.times)

    def median(self, fmt: str, measure: str) -> float:
        return float(np.median(self.times[fmt][measure]))

    def p95(self, fmt: str, measure: str) -> float:
        return _percentile(self.times[fmt][measure], 95)

    def ratio(self, fmt: str, measure: str, reference: str = REFERENCE) -> float | None:
        """median(fmt) / median(reference); None without the reference."""
        if reference not in self.times:
            return None
        return self.median(fmt, measure) / self.median(reference, measure)

    def paired_ratio(self, fmt: str, measure: str, reference: str = REFERENCE) -> float | None:
        """The median over rounds of fmt's time / the reference's time in the same round."""
        if reference not in self.times:
            return None
        a, b = np.asarray(self.times[fmt][measure]), np.asarray(self.times[reference][measure])
        return float(np.median(a / b))

    def summary(self, fmt: str, reference: str = REFERENCE) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for m in MEASURES:
            out[f"{m}_ms_median"] = self.median(fmt, m)
            out[f"{m}_ms_p95"] = self.p95(fmt, m)
            out[f"{m}_ratio_{reference}"] = self.ratio(fmt, m, reference)
            out[f"{m}_ratio_{reference}_paired"] = self.paired_ratio(fmt, m, reference)
        return out

    def table(self, reference: str = REFERENCE) -> str:
        """A plain-text table: median / p95 ms of invoke and end to end, and the ratios to the reference."""
        head = (f"{'format':<10} {'invoke med':>10} {'p95':>7} {'e2e med':>8} {'p95':>7} "
                f"{'invoke/' + reference:>15} {'paired':>7} {'e2e/' + reference:>12} {'paired':>7}")
        lines = [f"{self.threads} thread{'s' if self.threads != 1 else ''}, {self.rounds} interleaved rounds "
                 f"after {self.warmup} warm-up (ms)", head]

        def r(x):
            return "–" if x is None else f"{x:.2f}"

        for fmt in self.formats:
            s = self.summary(fmt, reference)
            lines.append(f"{fmt:<10} {s['invoke_ms_median']:>10.2f} {s['invoke_ms_p95']:>7.2f} "
                         f"{s['latency_ms_median']:>8.2f} {s['latency_ms_p95']:>7.2f} "
                         f"{r(s[f'invoke_ratio_{reference}']):>15} {r(s[f'invoke_ratio_{reference}_paired']):>7} "
                         f"{r(s[f'latency_ratio_{reference}']):>12} {r(s[f'latency_ratio_{reference}_paired']):>7}")
        return "\n".join(lines)


def interleaved(targets: Mapping[str, Target], image: np.ndarray, rounds: int, warmup: int,
                threads: int) -> Timings:
    """Time every target round-robin: `warmup` untimed rounds, then `rounds` timed ones; in each, every
    target in turn (the order rotating by one per round) runs end to end once, then invoke alone once
    (on the input the end-to-end call just set). The garbage collector is paused meanwhile."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    image = np.asarray(image)
    names = list(targets)
    result = Timings(threads=threads, rounds=rounds, warmup=warmup,
                     times={n: {m: [] for m in MEASURES} for n in names})
    for t in targets.values():
        t.set_input(image)
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmup + rounds):
            order = rotation(names, r)
            for name in order:
                t = targets[name]
                t0 = time.perf_counter()
                t.end_to_end(image)
                t1 = time.perf_counter()
                t.invoke()
                t2 = time.perf_counter()
                if r >= warmup:
                    result.times[name]["latency"].append((t1 - t0) * 1000.0)
                    result.times[name]["invoke"].append((t2 - t1) * 1000.0)
            if r >= warmup:
                result.orders.append(order)
    finally:
        if enabled:
            gc.enable()
    return result


def all_cores() -> int:
    return os.cpu_count() or 1


def thread_counts(threads: int | None) -> list[int]:
    """The passes to run: `threads` (None = all cores), then all cores when that differs."""
    main = threads or all_cores()
    return [main] if main == all_cores() else [main, all_cores()]


def time_files(files: Mapping[str, str | os.PathLike], image: np.ndarray, rounds: int, warmup: int,
               threads: list[int] | None = None) -> dict[int, Timings]:
    """{thread count: Timings} of .tflite files (name -> path), one interpreter per file and thread
    count, each pass interleaved (default: 1 thread, then all cores)."""
    out = {}
    for n in threads or thread_counts(1):
        targets = {name: TFLiteTarget.from_file(Path(p), n) for name, p in files.items()}
        out[n] = interleaved(targets, image, rounds, warmup, n)
        del targets
    return out


def metrics_keys(fmt: str, main: Timings, cores: Timings | None, reference: str = REFERENCE) -> dict:
    """The latency keys of one metrics.json entry: end to end (`latency_ms_*`) and invoke alone
    (`invoke_ms_*`) at `main.threads`, their ratios to the reference measured in the same rounds, and
    the medians at all cores (`*_all_cores`; None for a format not timed there, e.g. Keras, whose
    thread pool is fixed once per process)."""
    s = main.summary(fmt, reference)
    keys = {
        "latency_ms_median": s["latency_ms_median"], "latency_ms_p95": s["latency_ms_p95"],
        "invoke_ms_median": s["invoke_ms_median"], "invoke_ms_p95": s["invoke_ms_p95"],
        "latency_ratio_float32": s[f"latency_ratio_{reference}"],
        "invoke_ratio_float32": s[f"invoke_ratio_{reference}"],
        "latency_ratio_float32_paired": s[f"latency_ratio_{reference}_paired"],
        "invoke_ratio_float32_paired": s[f"invoke_ratio_{reference}_paired"],
        "latency_rounds": main.rounds,
    }
    c = cores.summary(fmt, reference) if cores is not None and fmt in cores.times else None
    keys.update({
        "threads_all_cores": cores.threads if c else None,
        "latency_ms_median_all_cores": c["latency_ms_median"] if c else None,
        "invoke_ms_median_all_cores": c["invoke_ms_median"] if c else None,
        "invoke_ratio_float32_all_cores": c[f"invoke_ratio_{reference}"] if c else None,
        "latency_ratio_float32_all_cores": c[f"latency_ratio_{reference}"] if c else None,
    })
    return keys
