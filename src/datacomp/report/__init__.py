"""Reports: results tables (Markdown, CSV, terminal), seed aggregation, published reference numbers."""
from __future__ import annotations

from .tables import (aggregate_seeds, csv_columns, format_csv, format_markdown, format_table, per_seed_rows,
                     table_columns, write_results_table)

__all__ = ["aggregate_seeds", "csv_columns", "format_csv", "format_markdown", "format_table", "per_seed_rows",
           "table_columns", "write_results_table"]
