"""The per-run figures: the sample mosaic puts each image in its tile, misclassified first, without pyplot."""

from __future__ import annotations

import struct
import subprocess
import sys

import torch

from dsconv.evaluation.plots import figure_png, mosaic, prediction_order, sample_predictions_figure


def test_mosaic_places_every_image_in_its_tile():
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 3, 4) * 40
    grid = mosaic(images, cols=2, gap=1, top=2)
    tile_h, tile_w = 2 + 3 + 1, 4 + 1
    assert grid.shape == (3 * tile_h, 2 * tile_w, 3)  # 5 images in 2 columns: 3 rows, the last tile blank
    for index in range(5):
        row, col = divmod(index, 2)
        tile = grid[row * tile_h : (row + 1) * tile_h, col * tile_w : (col + 1) * tile_w]
        assert (tile[2:5, :4] == index * 40).all()  # the image, grey in all three channels
        assert (tile[:2] == 255).all() and (tile[:, 4] == 255).all()  # caption band and gap stay white
    assert (grid[2 * tile_h :, tile_w:] == 255).all()


def test_mosaic_keeps_colour_images():
    images = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    images[0, 0] = 200  # red channel only
    grid = mosaic(images, cols=1, gap=0)
    assert grid.shape == (2, 2, 3) and (grid[..., 0] == 200).all() and (grid[..., 1:] == 0).all()


def test_misclassified_examples_come_first_then_correct_ones():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    preds = torch.tensor([0, 0, 2, 0, 4, 0])  # wrong at 1, 3, 5
    assert prediction_order(preds, labels, count=4) == [1, 3, 0, 2]  # at most half wrong, then right
    assert prediction_order(preds, labels, count=10) == [1, 3, 5, 0, 2, 4]


def test_sample_figure_renders_a_png_of_the_mosaic_size():
    images = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(30) % 10
    logits = torch.nn.functional.one_hot(labels, 10).float()  # all correct: 24 shown, 3 rows of 8
    png = figure_png(sample_predictions_figure(images, labels, logits, [str(i) for i in range(10)]))
    width, height = struct.unpack(">II", png[16:24])
    assert png[:4] == b"\x89PNG" and width == 8 * 1.5 * 110  # 8 tiles of 1.5 in at 110 dpi
    tile_aspect = (9 + 28 + 2) / (28 + 2)  # caption band + image + gap, over image + gap
    assert abs(height - (3 * 1.5 * tile_aspect + 0.35) * 110) <= 1


def test_figures_do_not_import_pyplot():
    code = (
        "import sys, torch; from dsconv.evaluation.plots import curves_figure, figure_png;"
        "figure_png(curves_figure([dict(epoch=1, train_loss=1, val_loss=1, train_acc=0.5, val_acc=0.5)]));"
        "print('matplotlib.pyplot' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
