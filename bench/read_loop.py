"""Read one package N times: the loop to count in instructions under callgrind.

Wall-clock figures of the reader swing by 20 % on a shared machine; the
instruction count does not. Run it twice, for two N, and divide the
difference by the difference of N (that takes start-up out):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/read_loop.py 10 [PACKAGE]
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/read_loop.py 510 [PACKAGE]

PACKAGE defaults to the public sample ``edoc_update.edxml`` in
``../shared/samples/edxml/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from exchange.edxml.reader import read_package
from exchange.edxml.safexml import parse

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "samples" / "edxml"


def main() -> None:
    """Parse the package once, then read it N times."""
    count = int(sys.argv[1])
    path = Path(sys.argv[2]) if len(sys.argv) > 2 else SAMPLE / "edoc_update.edxml"
    root = parse(path.read_bytes())
    for _ in range(count):
        read_package(root)


if __name__ == "__main__":
    main()
