"""Write ``divergences.json``: divergence values on fixed small inputs, an independent float64 reference.

Nothing here uses torch or lmdistill: logits come from a seeded numpy generator (rounded to float32-representable
values, so float32 and float64 inputs are the very same numbers), and every divergence is written out with explicit
loops over positions and vocabulary entries in Python floats (IEEE float64), straight from its definition:

- ``p = softmax(z / T)`` (computed as ``exp(z/T - logsumexp(z/T))``);
- forward_kl = KL(p_t || p_s); reverse_kl = KL(p_s || p_t);
- generalized_jsd(beta) = beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s, with
  beta = 0 -> forward KL and beta = 1 -> reverse KL (TRL GKD convention);
- skew_forward_kl(l) = KL(p_t || l p_t + (1 - l) p_s); skew_reverse_kl(l) = KL(p_s || l p_s + (1 - l) p_t);
- total_variation = 0.5 sum_v |p_t(v) - p_s(v)|;
- reductions: "mean" over unmasked positions, "sum", "batchmean" (sum / size of the first dimension), "none" (per
  position, 0 where masked). No T^2.

The input logits themselves are stored in the JSON (not a seed), so the test rebuilds them exactly.

Run: ``python tests/golden/make_divergences_golden.py`` (rewrites ``tests/golden/divergences.json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("divergences.json")

CONFIGS: list[tuple[str, dict[str, float]]] = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.0}),
    ("generalized_jsd", {"beta": 0.1}),
    ("generalized_jsd", {"beta": 0.5}),
    ("generalized_jsd", {"beta": 0.9}),
    ("generalized_jsd", {"beta": 1.0}),
    ("skew_forward_kl", {"skew": 0.0}),
    ("skew_forward_kl", {"skew": 0.1}),
    ("skew_forward_kl", {"skew": 0.5}),
    ("skew_reverse_kl", {"skew": 0.0}),
    ("skew_reverse_kl", {"skew": 0.1}),
    ("skew_reverse_kl", {"skew": 0.5}),
    ("total_variation", {}),
]
TEMPERATURES = [1.0, 2.5]
REDUCTIONS = ["mean", "sum", "batchmean", "none"]


def softmax(row: list[float], temperature: float) -> list[float]:
    scaled = [x / temperature for x in row]
    top = max(scaled)
    lse = top + math.log(sum(math.exp(x - top) for x in scaled))
    return [math.exp(x - lse) for x in scaled]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum_v p_v log(p_v / q_v), 0 log 0 = 0."""
    total = 0.0
    for pv, qv in zip(p, q, strict=True):
        if pv > 0.0:
            total += pv * (math.log(pv) - math.log(qv))
    return total


def mix(weight_p: float, p: list[float], q: list[float]) -> list[float]:
    return [weight_p * pv + (1.0 - weight_p) * qv for pv, qv in zip(p, q, strict=True)]


def divergence(name: str, params: dict[str, float], p_s: list[float], p_t: list[float]) -> float:
    if name == "forward_kl":
        return kl(p_t, p_s)
    if name == "reverse_kl":
        return kl(p_s, p_t)
    if name == "generalized_jsd":
        beta = params["beta"]
        if beta == 0.0:
            return kl(p_t, p_s)
        if beta == 1.0:
            return kl(p_s, p_t)
        m = mix(beta, p_t, p_s)
        return beta * kl(p_t, m) + (1.0 - beta) * kl(p_s, m)
    if name == "skew_forward_kl":
        return kl(p_t, mix(params["skew"], p_t, p_s))
    if name == "skew_reverse_kl":
        return kl(p_s, mix(params["skew"], p_s, p_t))
    if name == "total_variation":
        return 0.5 * sum(abs(tv - sv) for sv, tv in zip(p_s, p_t, strict=True))
    raise ValueError(name)


def rows(x):
    """Nested lists (..., V) -> list of (index path, row)."""
    if x and not isinstance(x[0], list):
        return [((), x)]
    out = []
    for i, sub in enumerate(x):
        out.extend(((i, *path), row) for path, row in rows(sub))
    return out


def nest(flat: list[float], lead: tuple[int, ...]):
    """Flat row-major values -> nested lists of shape ``lead``."""
    if len(lead) == 1:
        return list(flat)
    step = len(flat) // lead[0]
    return [nest(flat[i * step : (i + 1) * step], lead[1:]) for i in range(lead[0])]


def results_for(student, teacher, mask) -> list[dict]:
    """Every divergence of ``CONFIGS`` at every temperature and reduction, on nested-list logits (..., V)."""
    lead = []
    x = student
    while isinstance(x[0], list):
        lead.append(len(x))
        x = x[0]
    lead = tuple(lead) or (1,)
    flat_mask = [True] * math.prod(lead) if mask is None else [bool(m) for m in np.asarray(mask).reshape(-1)]
    s_rows, t_rows = rows(student), rows(teacher)
    results = []
    for div_name, params in CONFIGS:
        for temperature in TEMPERATURES:
            per_token = [
                divergence(div_name, params, softmax(s, temperature), softmax(t, temperature))
                for (_, s), (_, t) in zip(s_rows, t_rows, strict=True)
            ]
            kept = [v if m else 0.0 for v, m in zip(per_token, flat_mask, strict=True)]
            total = 0.0
            for v in kept:
                total += v
            count = sum(flat_mask)
            reductions = {
                "mean": total / count if count else 0.0,
                "sum": total,
                "batchmean": total / lead[0],
                "none": nest(kept, lead),
            }
            results.append(
                {
                    "divergence": div_name,
                    "params": params,
                    "temperature": temperature,
                    "per_token": nest(per_token, lead),
                    "reductions": {r: reductions[r] for r in REDUCTIONS},
                }
            )
    return results


def make_case(name: str, shape: tuple[int, ...], scale: float, mask, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    # float32-representable float64 values: float32 and float64 inputs are then exactly the same numbers
    student = (rng.standard_normal(shape) * scale).astype(np.float32).astype(np.float64).tolist()
    teacher = (rng.standard_normal(shape) * scale).astype(np.float32).astype(np.float64).tolist()
    mask = None if mask is None else np.asarray(mask, dtype=bool).tolist()
    return {
        "name": name,
        "shape": list(shape),
        "student": student,
        "teacher": teacher,
        "mask": mask,
        "results": results_for(student, teacher, mask),
    }


def build() -> dict:
    return {
        "description": "Divergences on fixed logits, float64 reference with explicit loops "
        "(tests/golden/make_divergences_golden.py; no torch, no lmdistill). No T^2.",
        "cases": [
            make_case("btv_masked", (2, 3, 5), 2.0, [[1, 1, 0], [1, 0, 1]], seed=20240101),
            make_case("nv_unmasked", (4, 7), 3.0, None, seed=20240102),
            make_case("nv_masked", (4, 7), 1.5, [1, 0, 1, 1], seed=20240103),
        ],
    }


def main() -> None:
    OUT.write_text(json.dumps(build(), indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
