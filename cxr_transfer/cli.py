"""What every stage script shares: a clean one-line error instead of a traceback."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from cxr_transfer.errors import CxrError


def run(main: Callable[[], None], stage: str) -> None:
    """Call a stage's main(); expected failures print `stage: error: ...` and exit 2."""
    try:
        main()
    except (CxrError, FileNotFoundError) as e:
        print(f"{stage}: error: {e}", file=sys.stderr)
        sys.exit(2)


def write_json(path: Path, obj) -> None:
    """Pretty JSON with a trailing newline, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
