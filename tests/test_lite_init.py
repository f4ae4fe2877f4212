"""Model surgery (tasks/train/surgery.py, run by scripts/make_lite_init.py): the smaller models
`fast` was cut from (encoder blocks, first-layer units) keep exactly the weights they say they
keep."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import random_model, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


@pytest.fixture(scope="module")
def lite():
    from liif_cli.tasks.train import surgery

    return surgery


def _inputs():
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 3, 9, 11, generator=g) * 2 - 1
    coord = torch.rand(1, 40, 2, generator=g) * 2 - 1
    return img, coord, torch.full((1, 40, 2), 0.1)


def test_encoder_cut_to_its_first_blocks(lite):
    src = random_model(replace(tiny_config(), encoder_args={"n_resblocks": 3, "n_feats": 16,
                                                            "no_upsampling": True}))
    cut = lite.lite_from(src, src.config.hidden, True, blocks=1)
    assert cut.config.encoder_args["n_resblocks"] == 1
    img = _inputs()[0]
    with torch.no_grad():
        head = src.encoder.head(img)
        want = src.encoder.body[3](src.encoder.body[0](head)) + head  # block 0, closing conv
        assert torch.equal(cut.encode(img), want)


def test_pruned_units_keep_their_weights_and_their_mean(lite):
    """With the dropped units' outgoing weights zero, the pruned model is the source exactly;
    with a constant dropped unit, its mean moved into the bias gives the source again."""
    src = random_model(replace(tiny_config(), hidden=(8, 4)))
    keep = torch.tensor([0, 2, 3, 6])
    dropped = torch.tensor([1, 4, 5, 7])
    w2 = src.imnet.linears[1].weight
    with torch.no_grad():
        w2[:, dropped[1:]] = 0
        first = src.imnet.linears[0]
        first.weight[dropped[0]] = 0  # unit 1 is constant: ReLU(bias)
        first.bias[dropped[0]] = 0.7
    mean = torch.zeros(8)
    mean[dropped[0]] = 0.7
    pruned = lite.lite_from(src, (4, 4), True, keep=keep, mean_act=mean)
    assert pruned.config.hidden == (4, 4)
    img, coord, cell = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(pruned(img, coord, cell), src(img, coord, cell))
        without = lite.lite_from(src, (4, 4), True, keep=keep)  # no mean: it is missed
        assert not torch.allclose(without(img, coord, cell), src(img, coord, cell))
