"""Where the station's data files are: the person model.

A unit gets a plain wheel install, so nothing may be found relative to a source checkout
alone. Each file is looked up, first found wins, in:

1. `$PINGAN_EDGE_SHARE/<name>` (an explicit override);
2. the source checkout (`<repo>/<name>`, an editable install);
3. `/usr/share/pingan-edge/<name>` (provisioned on the unit, e.g. by firmware/build-image);
4. `<sys.prefix>/share/pingan-edge/<name>` (the wheel's data files, when it was built with them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROVISIONED = Path("/usr/share/pingan-edge")
MODEL = "models/person_ssdlite.tflite"


def search_path() -> list[Path]:
    roots = [Path(os.environ["PINGAN_EDGE_SHARE"])] if os.environ.get("PINGAN_EDGE_SHARE") else []
    return [*roots, Path(__file__).resolve().parents[1], PROVISIONED,
            Path(sys.prefix) / "share" / "pingan-edge"]


def find(name: str) -> Path:
    """The first existing `name` along the search path, else where to provision it."""
    for root in search_path():
        if (root / name).exists():
            return root / name
    return PROVISIONED / name


def missing_hint(name: str) -> str:
    return (f"looked in {', '.join(str(r / name) for r in search_path())}: provision it at "
            f"{PROVISIONED / name} (or set its path in the config)")


def model_path() -> Path:
    return find(MODEL)
