"""Importing legacy POS exports: a watched drop folder and ``shelfsync-agent import``.

    async with Outbox.open(path, agent_id="store-1", location="S001") as outbox, \
               PosStore.open(config.store_path_for(path)) as store:
        importer = PosImporter(outbox, store, config, location="S001")
        report = await importer.import_file(Path("square-items.csv"))
        async with PosFolderWatcher(importer, Path("/srv/pos-drop")):
            ...

Sales and refunds become stock events (each row exactly once, however often
it is imported); stock-on-hand snapshots become ``Observation`` records for
the hub; bad rows are quarantined with file, line and reason. See
docs/pos-import.md.
"""

from agent.pos.claim import DropFolderTaken
from agent.pos.cli import add_import_parser, import_command, run_import
from agent.pos.config import PosConfigError, PosImportConfig
from agent.pos.errors import FileRejected, PosImportError, PosStoreClosed
from agent.pos.importer import PosImporter
from agent.pos.model import ImportReport, Observation, Quarantined, QuarantineEntry, Skipped
from agent.pos.profiles import BUILTIN_PROFILES, Produces, Profile
from agent.pos.store import PosStore
from agent.pos.watcher import PosFolderState, PosFolderWatcher

__all__ = [
    "BUILTIN_PROFILES",
    "DropFolderTaken",
    "FileRejected",
    "ImportReport",
    "Observation",
    "PosConfigError",
    "PosFolderState",
    "PosFolderWatcher",
    "PosImportConfig",
    "PosImportError",
    "PosImporter",
    "PosStore",
    "PosStoreClosed",
    "Produces",
    "Profile",
    "QuarantineEntry",
    "Quarantined",
    "Skipped",
    "add_import_parser",
    "import_command",
    "run_import",
]
