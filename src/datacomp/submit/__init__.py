"""``datacomp submit``: validation of a finished run, its results and its subset (``validate.py``),
the bundle the reference's submission holds (``bundle.py``), and the push to the Hugging Face hub
(``upload.py``; only with ``--upload``)."""
from __future__ import annotations

from .bundle import submit, uid_sample
from .validate import SubmissionRefused, validate

__all__ = ["SubmissionRefused", "submit", "uid_sample", "validate"]
