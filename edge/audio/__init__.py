"""The ping'an loudspeaker: one player owns the output; clips, tones, speech and the
microphone are its sources; `Loudspeaker` is the stage's face to the station, and
`attach` (edge/audio/stage.py) builds it for one.

Imported on first use, so that a process that only reads text aloud (`python -m
edge.audio.reading`, run per text by the station) starts without the audio stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.audio.stage import COMMANDS, attach

__all__ = ["COMMANDS", "attach"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("edge.audio.stage"), name)
    raise AttributeError(f"module 'edge.audio' has no attribute {name!r}")
