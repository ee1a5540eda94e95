"""datacomp: the DataComp-CLIP benchmark loop as software."""
from __future__ import annotations

__version__ = "0.1.0"
