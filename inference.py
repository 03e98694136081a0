"""Restore faces with DifFace: `python inference.py -i INPUT -o OUT_DIR [options]`.

The same command as `difface` (installed with the package); `python inference.py --help` lists
the options. The command line lives in `difface/cli.py`, the restoring in `difface/restorer.py`.
"""
import sys

from difface.cli import main

if __name__ == "__main__":
    sys.exit(main())
