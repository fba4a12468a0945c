"""Print a pip constraints file pinning every direct dependency of pyproject.toml (and of its
`pipeline` and `embedded` extras) to its floor: `name>=X` becomes `name==X`. Used by .ci/floors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
extras = project["optional-dependencies"]
for requirement in [*project["dependencies"], *extras["pipeline"], *extras["embedded"]]:
    found = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(>=|==)\s*([^,;\s]+)", requirement)
    if found is None:
        raise SystemExit(f"no floor in {requirement!r}: every dependency needs one")
    print(f"{found.group(1)}=={found.group(4)}")
