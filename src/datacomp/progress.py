"""Progress bars with rates on every loop a user waits for (tqdm; quiet when not a terminal
unless DATACOMP_PROGRESS=1)."""
from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm


def progress(total: int | None = None, desc: str = "", unit: str = "it", **kw: Any) -> tqdm:
    force = os.environ.get("DATACOMP_PROGRESS")
    disable = (not sys.stderr.isatty()) if force is None else force == "0"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                disable=disable, mininterval=0.5, **kw)
