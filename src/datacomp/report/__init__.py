"""Reports: results tables (Markdown, CSV, terminal), seed aggregation, published reference numbers."""
from __future__ import annotations

from .tables import (aggregate_seeds, csv_columns, format_csv, format_markdown, format_table, per_seed_rows,
                     table_columns, write_results_table)

__all__ = ["aggregate_seeds", "csv_columns", "format_csv", "format_markdown", "format_table", "per_seed_rows",
           "table_columns", "write_results_table"]

from .._stage_module import make_callable  # noqa: E402

make_callable(__name__, 'build_report', '.build')  # datacomp.report(...) calls build_report
