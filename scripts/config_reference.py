#!/usr/bin/env python3
"""Write docs/config.md, the kiosk config reference, from the config models.

.venv/bin/python scripts/config_reference.py            # rewrite docs/config.md
.venv/bin/python scripts/config_reference.py --check    # exit 1 if docs/config.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shelfsight.edge_app.kiosk.reference import config_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="Only check that docs/config.md is current.")
    args = parser.parse_args()
    text = config_reference()
    if args.check:
        current = DOC.read_text() if DOC.is_file() else ""
        if current != text:
            print(f"{DOC} is out of date: run scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
