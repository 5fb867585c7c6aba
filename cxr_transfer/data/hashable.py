"""What DVC meets before the index does: entries under a data folder that it cannot hash.

DVC hashes a stage's folder dependency (data.root for index, an external root for its prepare)
before the stage runs, and stops `dvc repro` at the first entry it cannot read with its own error:
a dangling link's `[Errno 2]`, a loop's `[Errno 40]`, and for a name that is not UTF-8 a codec
error naming no file. check_params, always changed in dvc.yaml, runs first on every repro and
lists them all in one message instead."""

from __future__ import annotations

import os
from pathlib import Path

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import Params
from cxr_transfer.data.imageio import file_problem, shown

SHOWN = 10  # entries named in the message; the rest are counted


def unhashable(root) -> list[tuple[str, str]]:
    """(path relative to `root`, reason) of every entry under `root` that DVC cannot hash: DVC
    hashes a stage's folder dependency before the stage runs and stops `dvc repro` at the first
    such entry with its own error (a dangling link's `[Errno 2]`, a loop's `[Errno 40]`, a name
    that is not UTF-8 with no name at all). Folders are checked for their names only."""
    found: list[tuple[str, str]] = []

    def rel(path) -> str:
        return shown(os.path.relpath(path, root))

    def unreadable(e: OSError) -> None:
        found.append((rel(e.filename), f"unreadable folder ({e.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        for d in sorted(dirnames):
            try:
                d.encode("utf-8")
            except UnicodeEncodeError:
                found.append((rel(os.path.join(dirpath, d)), "folder name is not valid UTF-8 (rename it)"))
        for f in sorted(filenames):
            path = os.path.join(dirpath, f)
            if problem := file_problem(path, f):
                found.append((rel(path), problem))
    return found


def check_hashable(p: Params) -> None:
    """One error naming every entry DVC cannot hash under data.root and the external roots
    (folders not there yet, such as the demo's before `synthesize`, are left to their stages)."""
    roots = [("data.root", p.data.root)] + [(f"external {e.name}", e.root) for e in p.external]
    here = [(key, root) for key, root in roots if Path(root).is_dir()]
    bad = [(key, root, rel, why) for key, root in here for rel, why in unhashable(root)]
    if bad:
        listed = "; ".join(f"{root}/{rel} ({why})" for _, root, rel, why in bad[:SHOWN])
        more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        keys = ", ".join(dict.fromkeys(key for key, *_ in bad))
        raise CxrError(
            f"{keys}: {len(bad)} {'entry' if len(bad) == 1 else 'entries'} DVC cannot hash (dvc repro would "
            f"stop at the first with DVC's own error): {listed}{more}; remove, fix or rename them, or move "
            "them out of the folder"
        )
