"""Reports: results tables (Markdown, CSV, terminal)."""
from __future__ import annotations

from .tables import format_csv, format_markdown, format_table, table_columns, write_results_table

__all__ = ["format_csv", "format_markdown", "format_table", "table_columns", "write_results_table"]
