"""Draw a results folder's plots again: ``python -m minift.pipeline.replot DIR``.

``minift compare`` writes results.json and curves.json beside its plots; this reads those two
files alone and redraws the plots with the figure code as it is now (``report.write_plots``), so
a change to how a figure looks never needs the hours of runs behind it. A module of its own, not
a ``main`` in report.py: the package imports report.py, and ``python -m`` would run it twice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minift.pipeline.report import write_plots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="a folder minift compare wrote")
    args = parser.parse_args(argv)
    for path in write_plots(args.out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
