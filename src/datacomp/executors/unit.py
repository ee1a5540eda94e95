"""A unit of work: a name (its completion marker's), the arguments of the unit function, a weight."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Unit:
    name: str  # unique, file-name safe (e.g. a shard's basename)
    args: tuple = field(default_factory=tuple)
    weight: int = 1  # items in the unit, for the progress rate (rows, samples)
