"""Benchmark: linear CKA at n = 10,000 sentences x 384 dims, feature-space form against the Gram-matrix form.

:func:`lnsr_viz.analysis.drift.linear_cka` works in feature space (O(n d^2): three d x d products) and centres
first; the Gram-matrix form builds two n x n kernels (O(n^2 d) time, 2 x 800 MB in float64 at n = 10,000).
The script times both (best of ``--reps``), in float32 and float64, and reports how far each is from the
float64 feature-space value, plus debiased CKA. Data: random features with a known relation (Y = 0.1 X W +
noise), seeded.

Run: ``python benchmarks/bench_drift.py [--n 10000] [--d 384] [--reps 3] [--no-gram] [--json out.json]``.
Prints the figures and the machine; never used as a test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import machine  # benchmarks/machine.py (scripts run from this folder)


def gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """The Gram-matrix form: HSIC = <HKH, HLH>_F with K = X X^T (centred via the column and row means)."""
    k = x @ x.T
    l_ = y @ y.T
    for g in (k, l_):
        means = g.mean(dim=0, dtype=torch.float64).to(g.dtype)
        g -= means[:, None]
        g -= means[None, :] - means.mean()
    hsic = (k * l_).sum(dtype=torch.float64)
    return float(hsic / (k.norm().double() * l_.norm().double()))


def best_of(fn, reps: int) -> tuple[float, float]:
    times, value = [], float("nan")
    for _ in range(reps):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


def main(argv: list[str] | None = None) -> dict[str, object]:
    from lnsr_viz.analysis.drift import linear_cka

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-gram", action="store_true", help="skip the slow Gram-matrix form")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d, generator=gen)
    y = 0.1 * x @ torch.randn(args.d, args.d, generator=gen) + torch.randn(args.n, args.d, generator=gen)
    reference = linear_cka(x, y, dtype=torch.float64)
    rows = []
    for dtype in (torch.float32, torch.float64):
        seconds, value = best_of(lambda dtype=dtype: linear_cka(x, y, dtype=dtype), args.reps)
        rows.append({"form": "feature space", "dtype": str(dtype), "seconds": seconds, "cka": value,
                     "abs_error": abs(value - reference)})
    seconds, value = best_of(lambda: linear_cka(x, y, debiased=True), args.reps)
    rows.append({"form": "feature space, debiased", "dtype": "torch.float64", "seconds": seconds, "cka": value,
                 "abs_error": float("nan")})
    if not args.no_gram:
        for dtype in (torch.float32, torch.float64):
            seconds, value = best_of(lambda dtype=dtype: gram_cka(x.to(dtype), y.to(dtype)), 1)
            rows.append({"form": "Gram matrix", "dtype": str(dtype), "seconds": seconds, "cka": value,
                         "abs_error": abs(value - reference)})
    result = {"n": args.n, "d": args.d, "reference_cka_float64": reference, "rows": rows, "machine": machine()}
    print(f"linear CKA, n = {args.n:,} x d = {args.d} (best of {args.reps}; Gram form: one run)")
    for r in rows:
        print(f"  {r['form']:<26} {r['dtype']:<14} {r['seconds']:8.3f} s   CKA {r['cka']:.10f}   "
              f"|error| vs float64 feature space {r['abs_error']:.2e}")
    print(f"machine: {result['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
