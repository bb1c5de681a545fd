"""`make lint`'s type check: mypy over every module, under the import names it runs with.

The folders map onto the one import name `ledgergate` through setuptools' editable import hook, which
type checkers do not follow (docs/decisions/0005-one-import-name.md). So this builds the same mapping as a
tree of symbolic links in .cache/typecheck/, runs mypy on it, and reports each finding at the real
file's path (`shared/x.py`, not `.cache/typecheck/ledgergate/shared/x.py`).

Run: `python -m ledgergate.tools.typecheck` (extra arguments go to mypy).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / ".cache" / "typecheck"
# The same mapping as [tool.setuptools.package-dir] in pyproject.toml (tests/unit/test_layout.py keeps
# that one true); the public package's own files are linked one by one beside the three server folders.
MOUNTS = {"shared": ROOT / "shared", "services": ROOT / "services", "tools": ROOT / "tools"}
PUBLIC = ROOT / "client" / "ledgergate"


def build_tree() -> Path:
    package = TREE / "ledgergate"
    package.mkdir(parents=True, exist_ok=True)
    # Its .py files and its subpackages (ledgergate.integrations); the schemas folder is data.
    wanted = {p.name: p for p in PUBLIC.iterdir()
              if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())} | MOUNTS
    for stale in package.iterdir():
        if stale.name not in wanted or not stale.is_symlink():
            stale.unlink()
    for name, target in wanted.items():
        link = package / name
        if not link.is_symlink() or Path(os.readlink(link)) != target:
            link.unlink(missing_ok=True)
            link.symlink_to(target)
    return package


def real_path(line: str) -> str:
    """`.cache/typecheck/ledgergate/shared/x.py:3: error` -> `shared/x.py:3: error`."""
    prefix = str((TREE / "ledgergate").relative_to(ROOT)) + os.sep
    if not line.startswith(prefix):
        return line
    rest = line[len(prefix):]
    head, _, tail = rest.partition(os.sep)
    if head in MOUNTS:
        return f"{head}{os.sep}{tail}"
    return f"client{os.sep}ledgergate{os.sep}{rest}"


def main(argv: list[str] | None = None) -> int:
    package = build_tree()
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           str(package.relative_to(ROOT)), *(argv if argv is not None else sys.argv[1:])]
    env = {**os.environ, "MYPYPATH": str(TREE)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    for line in (out.stdout + out.stderr).splitlines():
        print(real_path(line))
    return out.returncode


if __name__ == "__main__":
    sys.exit(main())
