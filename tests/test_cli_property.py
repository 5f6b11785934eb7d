"""Property: whatever a user types as overrides, the CLI's validation either accepts the config or refuses it
with one line (a ``DsconvError`` in-process; ``error: ...`` and exit 2 from the real CLI), never a traceback.

Overrides are real keys of the composed config (and random new keys added with ``+``) with random values of
random types: ints, floats including nan/inf, booleans, strings, null, lists and dicts. What Hydra itself
refuses while composing (an override of a key that does not exist, a group option that does not exist) is
Hydra's own message and outside this property.
"""

from __future__ import annotations

import math
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from dsconv.config import validate_config
from dsconv.errors import DsconvError
from dsconv.paths import CONF_DIR, REPO_ROOT
from support import TINY_RUN, cli_env

TRAIN = [sys.executable, str(REPO_ROOT / "scripts" / "train.py")]
# debug=true turns one-line errors into tracebacks on purpose; paths only matter once data is loaded.
SKIPPED_KEYS = ("debug", "paths.")


def _leaf_keys(node: DictConfig, prefix: str = "") -> Iterator[str]:
    for key in node:
        value = node._get_node(key)
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield path  # the group itself: overriding it with a scalar must be refused cleanly too
            yield from _leaf_keys(value, path + ".")
        else:
            yield path


def _real_keys() -> list[str]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=TINY_RUN)
    # Top-level groups overridden with a value are group choices (Hydra's domain): keep their sub-keys only.
    keys = [k for k in _leaf_keys(cfg) if "." in k or not isinstance(cfg[k], DictConfig)]
    return sorted(k for k in keys if not k.startswith(SKIPPED_KEYS))


REAL_KEYS = _real_keys()
NAME = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8)
WORD = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=8)


def _number_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


SCALAR = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(_number_text),
    st.sampled_from(["true", "false", "null", "nan", "inf", "-inf", "0", "-1", "1e-3", "''"]),
    st.sampled_from(["${nope}", "${trainer.epochs}", "${optimizer.lr}", "${oc.env:DSCONV_NO_SUCH_VARIABLE}"]),
    WORD,
)
VALUE = st.one_of(
    SCALAR,
    st.lists(SCALAR, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
    st.dictionaries(NAME, SCALAR, max_size=2).map(lambda d: "{" + ",".join(f"{k}:{v}" for k, v in d.items()) + "}"),
)
KEY = st.one_of(
    st.sampled_from(REAL_KEYS),  # mostly real keys: the values are what the checks must survive
    st.sampled_from(REAL_KEYS),
    st.sampled_from(REAL_KEYS),
    st.tuples(st.sampled_from(["", "model.", "trainer.", "optimizer.", "dataset."]), NAME).map(
        lambda parts: "+" + parts[0] + parts[1]
    ),
)
OVERRIDES = st.lists(st.tuples(KEY, VALUE).map(lambda kv: f"{kv[0]}={kv[1]}"), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def hydra_context():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def _outcome(overrides: list[str]) -> str:
    """ "hydra" (Hydra refused to compose), "valid", or "refused" (one-line DsconvError); anything else raises."""
    try:
        cfg = compose("config", overrides=[*TINY_RUN, *overrides])
    except (HydraException, OmegaConfBaseException):
        return "hydra"
    try:
        validate_config(cfg)
    except DsconvError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message, f"{overrides}: not one line: {message!r}"
        return "refused"
    return "valid"


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=OVERRIDES)
def test_validation_accepts_or_refuses_in_one_line(hydra_context, overrides):
    _outcome(overrides)  # any exception other than a DsconvError fails the property


def test_the_property_reaches_both_outcomes(hydra_context):
    """The strategy is not vacuous: real keys with bad values are refused, and good ones pass."""
    assert _outcome(["optimizer.lr=nan"]) == "refused"
    assert _outcome(["trainer.compile=abc"]) == "refused"
    assert _outcome(["trainer.epochs=3"]) == "valid"
    assert _outcome(["no_such_key=1"]) == "hydra"
    assert _outcome(["optimizer.lr=${nope}"]) == "refused"  # Hydra's callbacks would only warn about it
    assert {"optimizer.lr", "trainer.early_stopping.patience", "model.channels", "dataset.noise"} <= set(REAL_KEYS)


@settings(
    max_examples=5,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(overrides=OVERRIDES)
def test_real_cli_refuses_in_one_line_with_exit_2(hydra_context, tmp_path, overrides):
    # Only configs the in-process check refuses: a valid one would train.
    assume(_outcome(overrides) == "refused")
    args = [*TRAIN, *TINY_RUN, *overrides]
    result = subprocess.run(args, cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not Path(tmp_path / "outputs").exists()  # refused before Hydra made a run dir
