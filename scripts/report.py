"""Aggregate runs into a comparison report. See `python scripts/report.py --help`."""

import sys

from dsconv.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
