"""YAML that users write (recipes, ``--set`` values), read strictly.

Safe types only; a duplicated mapping key is an error (PyYAML keeps the last one silently);
anchors/aliases are refused (no alias bombs: the document is at most as big as its text);
the text must be UTF-8 and at most ``MAX_BYTES``. Every problem is one ConfigError naming
the source.
"""
from __future__ import annotations

from typing import Any

import yaml

from ..errors import ConfigError

MAX_BYTES = 1 << 20


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(None, None, f"alias *{event.anchor} (anchors and aliases are not allowed)",
                                       event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the constructor reports it
                    continue
                if dup:
                    raise yaml.MarkedYAMLError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str | bytes, src: str) -> Any:
    """Parse ``text`` (from ``src``, used in messages) strictly; see the module doc."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{src}: YAML text of {len(text)} bytes is larger than the {MAX_BYTES} allowed")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{src}: not UTF-8 text (byte {e.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: cannot parse YAML: {' '.join(str(e).split())}") from None
