"""``python -m datacomp.train.finish RUN``: complete a run trained outside ``datacomp train``.

The last line of a generated Slurm script: after ``srun`` it writes the run's ``info.json`` /
``info.pkl`` / ``model/`` weights / ``manifest.json`` (:func:`datacomp.train.rundir.finish_run`).
"""
from __future__ import annotations

import logging
import sys

from ..errors import DatacompError
from .rundir import finish_run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m datacomp.train.finish RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        finish_run(argv[0])
    except DatacompError as e:
        print(f"datacomp: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
