"""TTA modes: the views against views built by hand, one pass for every mode, reading a mode.

A real net trained for an epoch on synthetic faces, so that moving a face by a pixel changes
its logits; the shifted images of the known-answer test are built with numpy, another way
than ``tta_views`` builds them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_ray.config import merge
from fer_ray.data import FerData
from fer_ray.errors import ConfigError
from fer_ray.models.inference import predict_logits, predict_probas, predict_probas_by_mode
from fer_ray.train import fit, get_preset
from fer_ray.tta import TTA_MODES, TTA_VIEWS, tta_mode


@pytest.fixture(scope="module")
def net(small_data: FerData) -> torch.nn.Module:
    return fit(merge(get_preset("tiny"), {"epochs": 1, "seed": 3}), small_data, "cpu").model


def shifted(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """(N, H, W) images moved dx pixels right and dy down, the uncovered border filled with
    the nearest edge row/column (np.roll, then the wrapped-around pixels overwritten)."""
    out = np.roll(images, (dy, dx), axis=(1, 2))
    if dy > 0:
        out[:, :dy] = out[:, dy:dy + 1]
    elif dy < 0:
        out[:, dy:] = out[:, dy - 1:dy]
    if dx > 0:
        out[:, :, :dx] = out[:, :, dx:dx + 1]
    elif dx < 0:
        out[:, :, dx:] = out[:, :, dx - 1:dx]
    return out


def test_the_hand_shift_is_an_edge_padded_move() -> None:
    row = np.array([[[1, 2, 3, 4, 5]]], np.uint8)
    assert shifted(row, 2, 0).tolist() == [[[1, 1, 1, 2, 3]]]
    assert shifted(row, -2, 0).tolist() == [[[3, 4, 5, 5, 5]]]
    column = row.transpose(0, 2, 1)
    assert shifted(column, 0, 2)[0, :, 0].tolist() == [1, 1, 1, 2, 3]
    assert shifted(column, 0, -2)[0, :, 0].tolist() == [3, 4, 5, 5, 5]


def hand_views(images: np.ndarray, px: int) -> list[np.ndarray]:
    """flip_shift's 10 views built by hand: the images and their mirror images, each as is
    and moved ``px`` pixels right, left, down and up."""
    moves = ((0, 0), (px, 0), (-px, 0), (0, px), (0, -px))
    return [shifted(base, dx, dy) for base in (images, images[:, :, ::-1]) for dx, dy in moves]


def mean_view_probas(net: torch.nn.Module, views: list[np.ndarray]) -> np.ndarray:
    """(N, 7) softmax of the mean of the net's logits over the views."""
    logits = torch.stack([predict_logits(net, np.ascontiguousarray(v)) for v in views])
    return torch.softmax(logits.mean(0), dim=1).numpy()


def test_flip_shift_is_the_mean_of_the_logits_of_ten_hand_made_views(
        net: torch.nn.Module, small_data: FerData) -> None:
    images = small_data.val.images[:64]
    got = predict_probas([net], images, "flip_shift")[0]
    np.testing.assert_allclose(got, mean_view_probas(net, hand_views(images, 2)), atol=1e-5,
                               rtol=0)
    # The shifts matter for this net: leaving them out (flip) or moving by 1 px instead of 2
    # would be caught (and zero padding: the faces' borders are not black).
    assert np.abs(got - predict_probas([net], images, "flip")[0]).max() > 1e-3
    assert np.abs(got - mean_view_probas(net, hand_views(images, 1))).max() > 1e-3


def test_one_pass_gives_every_mode_as_alone(net: torch.nn.Module, small_data: FerData) -> None:
    """A cheaper mode's views are the first views of a dearer one, so
    ``predict_probas_by_mode`` computes all of them from one pass (the candidates do)."""
    images = small_data.val.images
    together = predict_probas_by_mode([net, net], images, TTA_MODES, batch_size=32, workers=2)
    for mode in TTA_MODES:
        alone = predict_probas([net], images, mode, batch_size=32, workers=1)[0]
        np.testing.assert_allclose(together[mode][1], alone, atol=1e-6, rtol=0)
    flip_by_hand = 0.5 * (predict_logits(net, images) +
                          predict_logits(net, np.ascontiguousarray(images[:, :, ::-1])))
    np.testing.assert_allclose(together["flip"][0],
                               torch.softmax(flip_by_hand, dim=1).numpy(), atol=1e-6)
    assert predict_probas_by_mode([net], images[:0], ["flip_shift"])["flip_shift"].shape == \
        (1, 0, 7)
    assert TTA_VIEWS == {"none": 1, "flip": 2, "flip_shift": 10}


def test_modes_are_read_from_names_and_from_the_bools_of_older_files() -> None:
    assert [tta_mode(m) for m in TTA_MODES] == list(TTA_MODES)
    assert (tta_mode(True), tta_mode(False)) == ("flip", "none")
    for bad in ("shift", "Flip", 1, None, ["flip"]):
        with pytest.raises(ConfigError, match=r"^tta: .* is not a TTA mode \(one of none, "
                                              r"flip, flip_shift"):
            tta_mode(bad)
    with pytest.raises(ConfigError, match="^--tta: 'x'"):
        tta_mode("x", "--tta")
