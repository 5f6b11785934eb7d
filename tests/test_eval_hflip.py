"""Flip test-time augmentation (``trainer.eval_hflip``): validation and test logits are the mean of
each image's and its mirror image's."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dsconv.config import validate_config
from dsconv.data import DeviceBatches, Normalize
from dsconv.data.datasets import Split
from dsconv.errors import ConfigError
from dsconv.training.optim import Schedule
from dsconv.training.trainer import Trainer, TrainerSettings
from support import compose_config


def _evaluate(tmp_path, eval_hflip: bool) -> tuple[torch.Tensor, nn.Module, DeviceBatches]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))  # not mirror-symmetric: flips change its output
    split = Split(torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8), torch.arange(40) % 4)
    batches = DeviceBatches(split, 16, Normalize((0.5,), (0.5,), "cpu"))
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        Schedule(None, per_epoch=False),
        TrainerSettings(epochs=1, progress=False, eval_hflip=eval_hflip),
        device=torch.device("cpu"),
        run_dir=tmp_path,
    )
    return trainer.evaluate(batches).logits, model, batches


def test_eval_hflip_averages_the_logits_of_image_and_mirror(tmp_path):
    plain, model, batches = _evaluate(tmp_path, eval_hflip=False)
    flipped, _, _ = _evaluate(tmp_path, eval_hflip=True)
    images = torch.cat([x for x, _ in batches])
    with torch.no_grad():
        expected = (model(images) + model(images.flip(-1))) / 2
    torch.testing.assert_close(flipped, expected)
    torch.testing.assert_close(plain, model(images).detach())
    assert not torch.allclose(plain, flipped)


def test_eval_hflip_must_be_a_boolean():
    cfg = compose_config(["trainer.eval_hflip=sometimes"])
    with pytest.raises(ConfigError, match=r"trainer\.eval_hflip"):
        validate_config(cfg)
