"""Model surgery, for maintainers making a model's start: cutting a trained LIIF down (the
`fast` model's route: scripts/make_lite_init.py) and reviving an LM-LIIF's dead render units
(scripts/revive_lmf.py). Each returns a model whose function is stated; training goes on from
it with `liif train --init`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from liif_cli.data.samples import load_rgb_uint8, make_lr, training_images
from liif_cli.model import LIIF, LMLIIF, make_cell, make_coord, normalise

PRUNE_IMAGES = 8  # images of --prune-data used to rank units
PRUNE_CROP = 48  # LR crop side, as in training


def lite_from(src: LIIF, hidden: tuple[int, ...], local_ensemble: bool, seed: int = 0,
              keep: torch.Tensor | None = None, blocks: int | None = None,
              mean_act: torch.Tensor | None = None) -> LIIF:
    """A smaller LIIF started from `src`: the MLP `hidden` widths, `local_ensemble` on or off,
    the EDSR encoder cut to its first `blocks` residual blocks (and its closing conv); the
    encoder and every decoder tensor whose shape matches are copied, the new layers keep
    PyTorch's default initialisation (seeded). `keep`: the first hidden layer's units to keep
    (their rows, and the second layer's columns; `mean_act`, their mean outputs, moves the
    dropped units' mean contribution into the second layer's bias)."""
    torch.manual_seed(seed)
    enc_args = dict(src.config.encoder_args)
    if blocks is not None:
        enc_args["n_resblocks"] = blocks
    model = LIIF(replace(src.config, hidden=hidden, local_ensemble=local_ensemble,
                         encoder_args=enc_args))
    theirs = dict(src.state_dict())
    if blocks is not None:  # the closing conv moves from body.N_src to body.N
        n_src = src.config.encoder_args.get("n_resblocks", 16)
        for k in [k for k in theirs if k.startswith(f"encoder.body.{n_src}.")]:
            theirs[k.replace(f"body.{n_src}.", f"body.{blocks}.")] = theirs.pop(k)
        theirs = {k: v for k, v in theirs.items() if not block_beyond(k, blocks)}
    if keep is not None:  # the kept units of the first layer, and their outgoing weights
        for part in ("weight", "bias"):
            theirs[f"imnet.layers.0.{part}"] = theirs[f"imnet.layers.0.{part}"][keep]
        w2 = theirs["imnet.layers.2.weight"]
        if mean_act is not None:  # the dropped units' mean contribution moves into the bias
            dropped = torch.ones(w2.shape[1], dtype=torch.bool)
            dropped[keep] = False
            theirs["imnet.layers.2.bias"] = (theirs["imnet.layers.2.bias"]
                                             + w2[:, dropped] @ mean_act[dropped])
        theirs["imnet.layers.2.weight"] = w2[:, keep]
    mine = model.state_dict()
    copied = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    # a layer is copied whole or not at all: only a prefix of the MLP can keep its weights
    model.load_state_dict({**mine, **copied})
    return model


def block_beyond(key: str, blocks: int) -> bool:
    """Whether state-dict `key` is an EDSR residual block at or beyond index `blocks`."""
    parts = key.split(".")
    return (parts[:2] == ["encoder", "body"] and parts[3] == "body"
            and int(parts[2]) >= blocks)


def unit_importance(src: LIIF, folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per first-layer unit: its mean ReLU output over the queries of LR crops of `folder`'s
    images times the norm of its outgoing weights, and that mean output."""
    first, second = src.imnet.linears[0], src.imnet.linears[1]
    acts: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda m, i, o: acts.append(o.relu().flatten(0, -2)))
    rng = np.random.default_rng(0)
    try:
        for i, path in enumerate(training_images(folder)[:PRUNE_IMAGES]):
            scale = 2 + i % 3
            hr = load_rgb_uint8(path)
            y, x = (int(rng.integers(0, d - PRUNE_CROP * scale + 1)) for d in hr.shape[:2])
            crop = hr[y:y + PRUNE_CROP * scale, x:x + PRUNE_CROP * scale]
            hr_crop, lr = make_lr(crop, scale)
            inp = normalise(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255)
            hw = hr_crop.shape[:2]
            with torch.no_grad():
                src.query(src.encode(inp), make_coord(hw)[None], make_cell(hw, hw[0] * hw[1])[None])
    finally:
        hook.remove()
    mean = torch.cat(acts).mean(0)
    return mean * second.weight.detach().norm(dim=0), mean


@torch.no_grad()
def revive_dead_units(model: LMLIIF, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                      *, threshold: float = 0.01) -> list[list[int]]:
    """Bring the render MLP's dead ReLU units back, leaving the model's function unchanged.

    The render MLP is 16 wide; in training some hidden units stop firing for every query
    (their pre-activation `(W x + b)·(scale + 1) + shift` is negative everywhere), and a dead
    unit gets no gradient, so it stays dead: a third to a half of them after a few thousand
    steps, which caps what the decoder can learn. For each hidden unit active on fewer than
    `threshold` of the queries of `batches` ((normalised LR, coord, cell) triples, as training
    feeds them), this lowers the bias of its shift modulation (a latent-MLP output) by the
    median of its pre-activations, so about half the queries fire it again, and zeroes its
    outgoing weights in the next layer, so the output stays what it was (exactly where the unit
    never fired; it loses the unit's rare contributions elsewhere): the unit is then trainable
    (its outgoing weights get gradients first) and the model loses nothing measurable.
    Needs shift modulations (`mod_shift`). Returns the revived units' indices per hidden layer.
    """
    cfg = model.config
    if not cfg.mod_shift:
        raise ValueError("reviving units moves their shift modulation: the model has none")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = model.imnet.register_forward_pre_hook(lambda _m, args: seen.append(args))
    try:
        for inp, coord, cell in batches:
            model(inp, coord, cell)
    finally:
        hook.remove()
    hd, depth = cfg.render_hidden, cfg.render_depth
    lin = model.imnet.linears
    pre: list[list[torch.Tensor]] = [[] for _ in range(depth)]
    for x, mod in seen:  # each hidden layer's pre-activations over all the queries
        layers: list[torch.Tensor] = []
        model.imnet(x, mod, pre=layers)
        for i, p in enumerate(layers):
            pre[i].append(p.reshape(-1, hd))
    shift_bias = model.hypernet.linears[-1].bias
    shift_at = hd * depth if cfg.mod_scale else 0
    revived: list[list[int]] = []
    for i in range(depth):
        p = torch.cat(pre[i]).float()
        dead = ((p > 0).float().mean(0) < threshold).nonzero().flatten().tolist()
        for j in dead:
            shift_bias[shift_at + i * hd + j] -= p[:, j].median()
            lin[i + 1].weight[:, j] = 0.0  # its output is not used (yet): the same function
        revived.append(dead)
    return revived
