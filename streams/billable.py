"""A meter's billable rule: every listed attribute must match one of its glob patterns."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping


class BillableFilter:
    """Compiled once per meter; called for every event on the hot path."""

    def __init__(self, rules: Mapping[str, tuple[str, ...]]) -> None:
        self._rules = [
            (attribute, re.compile("|".join(fnmatch.translate(p) for p in patterns)))
            for attribute, patterns in rules.items()
        ]

    @property
    def accepts_all(self) -> bool:
        """No rules: every event of the meter is billable, whatever its attributes."""
        return not self._rules

    def __call__(self, attributes: Mapping[str, str]) -> bool:
        for attribute, pattern in self._rules:
            value = attributes.get(attribute)
            if value is None or pattern.match(value) is None:
                return False
        return True
