"""Where the Hydra configs live.

``conf/`` sits at the top of the checkout, beside ``src/``; an editable install finds it from this
file. ``DSCONV_CONF_DIR`` points elsewhere (e.g. a copied config tree).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = Path(os.environ.get("DSCONV_CONF_DIR", REPO_ROOT / "conf")).resolve()
