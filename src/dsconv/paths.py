"""Where the Hydra configs live.

They ship inside the package (``dsconv/conf``), so an installed wheel finds them from any directory.
``DSCONV_CONF_DIR`` points elsewhere (e.g. a copied and edited config tree).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The checkout's root in an editable install (scripts/, tests/); meaningless for an installed wheel.
REPO_ROOT = PACKAGE_DIR.parents[1]
CONF_DIR = Path(os.environ.get("DSCONV_CONF_DIR", PACKAGE_DIR / "conf")).resolve()
