#!/usr/bin/env python3
"""Fits the polynomial of the CUDA scan's softplus (kernels/src/scan/scan.cu).

softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1], is taken as e * q(e) with q a
polynomial of DEGREE, minimax in relative error against log1p(e) / e over [0, 1]
(Lawson's iteratively reweighted least squares). Prints the f64 error, the coefficients
rounded to f32, and the largest relative error of the whole softplus evaluated as the
kernel does (f32 exp2 of the f32 product, Horner by fmas, the final fma) over [-20, 20]
against the f64 value.

Needs numpy: `python3 scripts/fit_softplus.py [DEGREE]` (default 7).
"""

import sys

import numpy as np

DEGREE = int(sys.argv[1]) if len(sys.argv) > 1 else 7
LOG2E = np.float32(1.4426950408889634)


def fit(degree: int) -> np.ndarray:
    e = np.concatenate([np.linspace(0.0, 1.0, 20001), [1e-8, 1e-6, 1e-4]])
    safe = np.where(e > 0, e, 1.0)
    target = np.where(e > 0, np.log1p(e) / safe, 1.0)
    powers = np.vander(e, degree + 1, increasing=True)
    weights = np.ones_like(e)
    for _ in range(300):
        scale = np.sqrt(weights) / target
        coefficients, *_ = np.linalg.lstsq(powers * scale[:, None], target * scale, rcond=None)
        error = np.abs(powers @ coefficients - target) / target
        weights *= error
        weights /= weights.sum()
    print(f"degree {degree}: q within {error.max():.2e} (relative, f64)")
    return coefficients.astype(np.float32)


def fma32(a, b, c):
    # One rounding: a product of two f32 is exact in f64.
    return (a.astype(np.float64) * b.astype(np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def softplus32(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    product = (-np.abs(x).astype(np.float64) * np.float64(LOG2E)).astype(np.float32)
    e = np.exp2(product.astype(np.float64)).astype(np.float32)
    q = np.full_like(e, coefficients[-1])
    for c in coefficients[-2::-1]:
        q = fma32(q, e, c)
    return fma32(q, e, np.maximum(x, 0))


def main() -> None:
    coefficients = fit(DEGREE)
    print("coefficients (q_0 first):", ", ".join(f"{c:.9e}f" for c in coefficients))
    x = np.linspace(-20.0, 20.0, 400001).astype(np.float32)
    exact = np.logaddexp(0.0, x.astype(np.float64))
    error = np.abs(softplus32(coefficients, x) - exact) / exact
    print(f"softplus over [-20, 20] within {error.max():.2e} (relative, at x = {x[error.argmax()]:.4f})")


if __name__ == "__main__":
    main()
