"""``--verify``: a split's logits against the whole model's, within the bound its exchange and graphs promise.

Both runtimes and the elastic timeline verify here (numpy, no torch). A run verifies when every logit is
within the bound of the whole model's, relative to the largest |logit| of the whole model over the run's images;
with the fp32 exchange and fp32 graphs, every image's top-1 class must agree as well. A compressed exchange or
quantized graphs may change a top-1 class only where the whole model's top two logits lie within twice the bound
of each other: the bound implies it, so only the bound is checked. The bounds and their measurement: the README
("Verification").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["EXCHANGE_BOUNDS", "QUANTIZED_BOUND", "VerificationError", "bound_for", "check", "compare", "failure"]

# Largest max |dlogit| / max |logit| each exchange promises (fp32: the same sums in another order).
EXCHANGE_BOUNDS = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 2e-2, "int8": 5e-2}
# What int8 graphs (decnn export --quantize int8) add to their exchange's bound.
QUANTIZED_BOUND = 0.25


class VerificationError(RuntimeError):
    """A run whose logits are beyond its bound from the whole model's (the message is one line)."""


def bound_for(exchange_dtype: str, quantized: bool = False) -> float:
    """The bound of a run with this exchange, of int8 graphs if ``quantized``."""
    return EXCHANGE_BOUNDS[exchange_dtype] + (QUANTIZED_BOUND if quantized else 0.0)


def compare(logits: np.ndarray, reference: np.ndarray, exchange_dtype: str = "fp32", quantized: bool = False) -> dict:
    """The record's fields of a verification: max |dlogit| (also relative to the largest |reference logit|),
    top-1 agreement, ``verified``, the bound and the worst image (the run's first is 0). A logit that is not
    finite is infinitely far off."""
    logits, reference = np.asarray(logits, np.float64), np.asarray(reference, np.float64)
    bound = bound_for(exchange_dtype, quantized)
    diff = np.abs(logits - reference)
    diff[~np.isfinite(diff)] = np.inf
    per_image = diff.max(1)
    scale = max(float(np.abs(reference[np.isfinite(reference)]).max(initial=0.0)), 1e-30)
    agrees = logits.argmax(1) == reference.argmax(1)
    failing = per_image > bound * scale
    if exchange_dtype == "fp32" and not quantized:
        failing |= ~agrees
    # The worst image: of those that fail, the farthest off (else the farthest off of all).
    worst = int(np.argmax(np.where(failing, per_image, -1.0) if failing.any() else per_image))
    return {"max_abs_diff": float(per_image.max()), "max_rel_diff": float(per_image.max() / scale),
            "top1_agreement": float(agrees.mean()), "verified": not failing.any(), "verify_bound": bound,
            "worst_image": worst}


def failure(result: Mapping) -> str | None:
    """The one line a failed verification ends its run with (None if it passed or did not run): the worst
    image, the difference and the bound. ``result`` holds :func:`compare`'s fields (a record's JSON form)."""
    if result.get("verified") is not False:
        return None
    image, bound = result["worst_image"], result["verify_bound"]
    diff = f"max |dlogit| {result['max_abs_diff']:.2e} ({result['max_rel_diff']:.1e} of the largest logit)"
    agreement = f"top-1 agreement {result['top1_agreement']:.2%}"
    if not result["max_rel_diff"] <= bound:
        return (f"verification failed: image {image} differs from the whole model by {diff}, beyond the bound "
                f"{bound:g}; {agreement}")
    return (f"verification failed: image {image}'s top-1 class differs from the whole model's ({agreement}, "
            f"the fp32 bound needs 100%); {diff}, within the bound {bound:g}")


def check(result: Mapping) -> None:
    """Raise :class:`VerificationError` with :func:`failure`'s line if the verification failed."""
    line = failure(result)
    if line:
        raise VerificationError(line)
