"""Catalogue hot reload: a background task polls the catalogue folder and swaps in each new valid version.

Polling the files' modification time and size (no inotify) works the same on every filesystem, including mounted
ConfigMaps and network shares. A changed folder is read and validated off the event loop; a valid catalogue
replaces the old one in one reference swap (`DecisionService.use_catalogue`), so decisions already running finish
with the catalogue they started with and none is dropped; the budget counters are then re-read for the new
offers. An invalid version is logged with its precise error and the old catalogue keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from libs.cancellation import stop_task
from libs.errors import NextBestError
from services.decision.catalogue import CATALOGUE_FILES, CatalogueError, load_catalogue
from services.decision.orchestrator import DecisionService

log = logging.getLogger("nextbest.decision.catalogue")

Signature = tuple[tuple[int, int] | None, ...]


def signature(folder: Path) -> Signature:
    """(mtime_ns, size) of each catalogue file, None for a missing one: any edit changes it."""
    stamps = []
    for name in CATALOGUE_FILES:
        try:
            stat = (folder / name).stat()
        except FileNotFoundError:
            stamps.append(None)
        else:
            stamps.append((stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


class CatalogueWatcher:
    def __init__(self, service: DecisionService, folder: Path, interval_seconds: float) -> None:
        self.service = service
        self.folder = folder
        self.interval_seconds = interval_seconds
        self._seen: Signature | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, loaded: Signature) -> None:
        """Watch for edits after `loaded`, the folder's signature taken just before the start-up load."""
        self._seen = loaded
        self._task = asyncio.create_task(self._run(), name="decision-catalogue-watch")
        self._task.add_done_callback(self._report_crash)

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def check_once(self) -> bool:
        """Reload when the folder changed since the last check; True when a new catalogue is now in use."""
        seen = signature(self.folder)
        if seen == self._seen:
            return False
        self._seen = seen  # an invalid version is reported once, not at every poll
        try:
            catalogue = await asyncio.to_thread(load_catalogue, self.folder)
        except CatalogueError as exc:
            log.error("catalogue change rejected, still serving %s: %s", self.service.catalogue.version, exc)
            return False
        if catalogue.version == self.service.catalogue.version:
            return False  # touched, not changed
        previous = self.service.catalogue.version
        self.service.use_catalogue(catalogue)
        try:
            await self.service.load_budgets()
        except NextBestError as exc:
            # The counters stay as they were: the cap itself is enforced in the database at accept time.
            log.warning("budget counters not re-read after the catalogue reload: %s", exc)
        log.info("catalogue reloaded: %s -> %s", previous, catalogue.version)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            try:
                await self.check_once()
            except OSError as exc:  # e.g. a folder being replaced: look again at the next poll
                log.warning("catalogue folder unreadable, still serving %s: %s", self.service.catalogue.version, exc)

    @staticmethod
    def _report_crash(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("catalogue watcher stopped", exc_info=task.exception())
