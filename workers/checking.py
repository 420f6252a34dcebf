"""What the daemon checks a model with when a built-in kind loads it (workers.kinds): probe
inputs, how close a model's two forms must agree, and the errors and notes it gives.
Imports neither torch nor transformers."""

from __future__ import annotations

PROBE_TEXT = "DocBrain checks that this model loads and encodes."
# Texts a model's two forms must agree on: a sentence, a short one, one over any limit.
PROBE_TEXTS = (PROBE_TEXT, "Ok.", " ".join([PROBE_TEXT] * 100))
FORMS_AGREE = 0.99999  # least cosine between the two forms' vectors of a probe text
SCORES_AGREE = 1e-5    # most difference between the two forms' scores of a probe pair


class KindError(Exception):
    """A kind that cannot be found or used, or a model its kind refuses; the message says
    why (the daemon puts the model's name in front)."""


def fallback_note(exc: Exception) -> str:
    """Why workers run a model with transformers: the torch form's refusal, or its error."""
    from workers.torchform import UnsupportedModel

    reason = str(exc) if isinstance(exc, UnsupportedModel) else f"{type(exc).__name__}: {exc}"
    return f"the torch form does not take it: {reason}"
