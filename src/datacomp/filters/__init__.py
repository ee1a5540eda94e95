"""Filtering: declarative YAML recipes of score steps, global passes and keep rules -> uid subset.

- :func:`run_filter` applies a recipe (a bundled name or a YAML path) to a pool.
- :func:`list_ops_and_recipes` lists what is available (for ``datacomp filter --list``).
- Ops live in ``filters/ops/`` (one module per family), recipes in ``resources/recipes/``.
"""
from __future__ import annotations

from .stage import format_summary, run_filter
from .recipe import Recipe, Rule, load_recipe, recipe_names
from .registry import GlobalOp, Op, ShardOp, all_ops, register


def list_ops_and_recipes() -> list[tuple[str, str, str]]:
    """(kind, name, one-line description): kind is 'op' (shard), 'global-op' or 'recipe'."""
    import yaml

    from .recipe import recipes_dir

    rows: list[tuple[str, str, str]] = []
    for name, cls in all_ops().items():
        rows.append(("op" if cls.kind == "shard" else "global-op", name, cls.description))
    for name in recipe_names():
        try:
            raw = yaml.safe_load((recipes_dir() / f"{name}.yaml").read_text()) or {}
            desc = str(raw.get("description", "")).strip()
        except Exception as e:  # a broken bundled recipe should still be listed
            desc = f"(unreadable: {e})"
        rows.append(("recipe", name, desc))
    return rows


__all__ = ["run_filter", "list_ops_and_recipes", "load_recipe", "recipe_names", "format_summary",
           "Recipe", "Rule", "Op", "ShardOp", "GlobalOp", "register", "all_ops"]
