"""`ledgergate stack up|down|status|clean`: the whole local stack, each part idempotent."""

from __future__ import annotations

import shutil
from pathlib import Path

from ledgergate.shared.errors import StackError
from ledgergate.shared.settings import PROJECT_ROOT, StackSettings
from ledgergate.tools.devstack import kafka, postgres


def up(s: StackSettings) -> list[str]:
    return [kafka.start(s), postgres.start(s)]


def down(s: StackSettings) -> list[str]:
    return [kafka.stop(s), postgres.stop(s)]


def status(s: StackSettings) -> list[str]:
    return [kafka.status(s), postgres.status(s)]


def clean(s: StackSettings) -> list[str]:
    """Stop the stack, then delete its data directory (LEDGERGATE_DATA_DIR): every topic and table."""
    target = _deletable_data_dir(s.data_dir)
    lines = down(s)
    if not target.exists():
        return [*lines, f"{target} does not exist; nothing to delete"]
    shutil.rmtree(target)
    if s.data_dir.is_symlink():
        s.data_dir.unlink()
    return [*lines, f"deleted {target}"]


def _deletable_data_dir(data_dir: Path) -> Path:
    """The data directory, resolved, or StackError when deleting it would take more than the stack's data."""
    target = data_dir.expanduser().resolve()
    protected = {Path("/"), Path.home().resolve(), PROJECT_ROOT.resolve()}
    for keep in sorted(protected):
        if target == keep or target in keep.parents:
            raise StackError(
                f"refusing to delete {target}: LEDGERGATE_DATA_DIR={data_dir} "
                f"{'is' if target == keep else 'contains'} {keep}; "
                f"point it at a directory of its own (default {PROJECT_ROOT / '.data'})")
    if target.exists() and not target.is_dir():
        raise StackError(f"refusing to delete {target}: LEDGERGATE_DATA_DIR names a file, not a directory")
    return target
