"""The watched folder: CAP files dropped into cap.watch_dir are imported like uploads.

One named thread (`centre-cap-watch`) looks at the folder every cap.poll_s seconds. Each
`*.xml` file (a dot file or another suffix is left alone: write under another name and
rename it in) is imported (imports.take, by "cap-folder"), then moved to `done/` when it
changed what plays (a broadcast sent, one cancelled) or to `rejected/` otherwise, with a
`.reason.txt` beside it holding the reason in Chinese and English and the detail. The
moved name starts with the time it was taken, so a file sent twice never overwrites one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Self

from django.utils import timezone

from pingan_centre.console.cap.imports import take
from pingan_centre.console.config import CapConfig
from pingan_centre.console.link import Effects
from pingan_centre.console.logs import log
from pingan_centre.console.models import CapImport
from pingan_centre.console.periodic import Periodic
from pingan_centre.console.words import shown

BY = "cap-folder"


class Watcher(Periodic):
    def __init__(self, cfg: CapConfig, effects: Effects,
                 clock: Callable[[], datetime] = timezone.now) -> None:
        super().__init__("centre-cap-watch", cfg.poll_s, event="cap.watch", at_once=True,
                         retry=f"check the database and the permissions of {cfg.watch_dir}; "
                               f"the folder is read again in {cfg.poll_s} s")
        self.cfg, self.effects, self.clock = cfg, effects, clock
        self.folder = Path(cfg.watch_dir)

    def start(self) -> Self:
        """Makes the folder and its done/ and rejected/ (an error here stops the start)."""
        for sub in ("done", "rejected"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        return super().start()

    def work(self) -> None:
        self.scan()

    def scan(self) -> list[CapImport]:
        """Import every CAP file waiting in the folder, oldest name first."""
        done = []
        for path in sorted(self.folder.glob("*.xml")):
            if self.stopping:
                break
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                with path.open("rb") as f:
                    data = f.read(self.cfg.max_bytes + 1)
            except OSError as exc:
                log("error", "cap.watch.unreadable", file=str(path), error=repr(exc),
                    action="let the console's user read the file, or remove it")
                continue
            now = self.clock()
            row = take(data, source=path.name, by=BY, now=now, cfg=self.cfg,
                       effects=self.effects)
            played = row.outcome in (CapImport.Outcome.BROADCAST, CapImport.Outcome.CANCELLED)
            where = self.folder / ("done" if played else "rejected")
            target = where / f"{now.strftime('%Y%m%dT%H%M%S')}-{row.pk}-{path.name}"
            os.replace(path, target)
            if not played:
                target.with_name(target.name + ".reason.txt").write_text(
                    f"{shown(row.reason, 'zh-hans')}\n{shown(row.reason, 'en')}\n"
                    f"{row.detail}\n", encoding="utf-8")
            log("info", "cap.watch.imported", file=path.name, moved_to=str(target),
                outcome=row.outcome, import_id=row.pk, action="see the console's CAP page")
            done.append(row)
        return done
