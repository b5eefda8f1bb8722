"""MultiMAE model: reference state-dict layout, explicit masks, masked-only losses, timm export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from labelers.standards import IGNORE_ID
from trainer.config import ModelConfig, smoke_config
from trainer.model import losses
from trainer.model.multimae import MultiMAE
from trainer.transfer.export import MISSING_IN_MULTIMAE, encoder_to_timm, export_timm

REFERENCE = Path(__file__).parent / "data" / "multimae-b-pretrain-state-dict.tsv"  # official ViT-B layout
TINY = smoke_config().model


def reference_layout() -> list[tuple[str, str]]:
    rows = [line.rstrip("\n").split("\t") for line in REFERENCE.read_text().splitlines() if not line.startswith("#")]
    return [(name, shape) for name, shape in rows]


def tiny_inputs(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.randn(b, 3, 64, 64, generator=g),
        "depth": torch.randn(b, 1, 64, 64, generator=g),
        "semseg": torch.randint(0, 133, (b, 16, 16), generator=g),
    }


def test_vit_b_state_dict_equals_reference_tsv() -> None:
    with torch.device("meta"):
        model = MultiMAE(ModelConfig())
    ours = [(name, "x".join(map(str, t.shape))) for name, t in model.state_dict().items()]
    ref = reference_layout()
    assert len(ref) == 351
    assert ours == ref
    assert sum(t.numel() for t in model.state_dict().values()) == 98_569_360


def test_forward_shapes_and_drawn_masks() -> None:
    torch.manual_seed(0)
    model = MultiMAE(TINY)
    preds, masks = model(tiny_inputs())
    assert preds["rgb"].shape == (2, 3, 64, 64) and preds["norm_rgb"].shape == (2, 3, 64, 64)
    assert preds["depth"].shape == (2, 1, 64, 64)
    assert preds["semseg"].shape == (2, 133, 16, 16) and preds["semseg"].dtype == torch.float32
    visible = sum((m == 0).sum(1) for m in masks.values())
    assert visible.tolist() == [16, 16]


def test_explicit_masks_are_used() -> None:
    torch.manual_seed(0)
    model = MultiMAE(TINY).eval()
    masks = {name: torch.ones(2, 16, dtype=torch.long) for name in ("rgb", "depth", "semseg")}
    masks["rgb"][:, :10] = 0  # 10 rgb + 6 depth tokens visible, no semseg token
    masks["depth"][:, 5:11] = 0
    inputs = tiny_inputs()
    preds, returned = model(inputs, masks=masks)
    assert all(torch.equal(returned[k], masks[k]) for k in masks)
    changed = dict(inputs, semseg=torch.randint(0, 133, (2, 16, 16)))  # semseg fully masked: no effect
    preds2, _ = model(changed, masks=masks)
    assert torch.allclose(preds["rgb"], preds2["rgb"], atol=1e-5)
    changed = dict(inputs, rgb=inputs["rgb"] + 1.0)  # a visible input changes the output
    assert not torch.allclose(model(changed, masks=masks)[0]["rgb"], preds["rgb"])


def test_explicit_masks_must_have_equal_visible_counts() -> None:
    model = MultiMAE(TINY)
    masks = {name: torch.ones(2, 16, dtype=torch.long) for name in ("rgb", "depth", "semseg")}
    masks["rgb"][0, :4] = 0
    masks["rgb"][1, :5] = 0
    with pytest.raises(ValueError, match="same number of visible"):
        model(tiny_inputs(), masks=masks)


@pytest.mark.parametrize(
    "loss_fn, channels",
    [(losses.masked_mse, 3), (losses.masked_l1, 1), (losses.masked_norm_mse, 3), (losses.masked_cross_entropy, 0)],
)
def test_losses_ignore_visible_patches(loss_fn, channels) -> None:
    g = torch.Generator().manual_seed(1)
    grid = (4, 4)
    mask = (torch.rand(2, 16, generator=g) < 0.5).long()
    mask[:, 0], mask[:, 1] = 1, 0
    if channels:
        pred, target = torch.randn(2, channels, 16, 16, generator=g), torch.randn(2, channels, 16, 16, generator=g)
    else:
        pred, target = torch.randn(2, 7, 16, 16, generator=g), torch.randint(0, 7, (2, 16, 16), generator=g)
    base = loss_fn(pred, target, mask, grid)
    visible = ~losses.pixel_mask(mask, (16, 16), grid).bool()  # (B, H, W)
    pred2 = pred.clone()
    pred2.permute(0, 2, 3, 1)[visible] += 5.0  # change predictions at visible pixels only
    target2 = target.clone()
    if channels:
        target2.permute(0, 2, 3, 1)[visible] = torch.randn(int(visible.sum()), channels, generator=g)
    else:
        target2[visible] = (target2[visible] + 1) % 7
    assert torch.allclose(loss_fn(pred2, target2, mask, grid), base)
    pred3 = pred.clone()
    pred3[:, 0][~visible] += 1.0  # masked pixels do change it
    assert not torch.allclose(loss_fn(pred3, target, mask, grid), base)


def test_model_loss_only_on_masked_patches() -> None:
    torch.manual_seed(0)
    model = MultiMAE(TINY)
    inputs = tiny_inputs()
    preds, masks = model(inputs)
    total, per_task = model.forward_loss(preds, inputs, masks)
    assert set(per_task) == {"rgb", "depth", "semseg", "norm_rgb"}
    assert torch.allclose(total, sum(per_task.values()))
    rgb_visible = ~losses.pixel_mask(masks["rgb"], (64, 64), (4, 4)).bool()
    edited = {k: v.detach().clone() for k, v in preds.items()}
    edited["rgb"].permute(0, 2, 3, 1)[rgb_visible] = 100.0
    _, per_task2 = model.forward_loss(edited, inputs, masks)
    assert torch.allclose(per_task2["rgb"], per_task["rgb"])


def test_norm_patches_have_zero_mean_unit_variance() -> None:
    x = torch.randn(2, 3, 32, 32) * 5 + 3
    out = losses.normalize_patches(x, (2, 2))
    patch = out[0, :, :16, :16].reshape(-1)
    assert abs(float(patch.mean())) < 1e-4 and abs(float(patch.var()) - 1.0) < 1e-3


def test_fully_visible_and_zero_budget_modalities_keep_gradients_finite() -> None:
    torch.manual_seed(0)
    model = MultiMAE(TINY)
    masks = {name: torch.ones(2, 16, dtype=torch.long) for name in ("rgb", "depth", "semseg")}
    masks["rgb"][0] = 0  # sample 0: all 16 visible tokens from rgb, none from depth or semseg
    masks["rgb"][1, :10] = 0  # sample 1: 10 from rgb, 6 from depth
    masks["depth"][1, :6] = 0
    preds, _ = model(tiny_inputs(), masks=masks)
    total, _ = model.forward_loss(preds, tiny_inputs(), masks)
    assert torch.isfinite(total)
    total.backward()  # a fully visible modality (no masked patch) must not put 0 / 0 into the gradient
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_export_loads_into_timm_vit_base(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = MultiMAE(ModelConfig(outputs=()))
    path = export_timm(model.state_dict(), tmp_path / "vit.safetensors")
    vit = timm.create_model("vit_base_patch16_224", pretrained=False)
    result = vit.load_state_dict(load_file(str(path)), strict=False)
    assert sorted(result.missing_keys) == sorted(MISSING_IN_MULTIMAE)
    assert result.unexpected_keys == []
    # timm's blocks (with an identity final norm) compute our encoder on the same visible tokens
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = model.input_adapters["rgb"](x)
        ours = model.encoder(torch.cat([tokens, model.global_tokens], dim=1))
        vit.norm = torch.nn.Identity()
        theirs = vit.forward_features(x)
    assert torch.allclose(ours[:, -1], theirs[:, 0], atol=1e-4)
    assert torch.allclose(ours[:, :-1], theirs[:, 1:], atol=1e-4)
    assert encoder_to_timm(model.state_dict())["pos_embed"].shape == (1, 197, 768)


def test_sample_without_masked_patches_gets_no_nan_gradient() -> None:
    pixel_loss = torch.rand(2, 8, 8, requires_grad=True)
    mask = torch.tensor([[0, 0, 0, 0], [1, 0, 1, 0]])  # sample 0 has nothing masked
    loss = losses.masked_mean(pixel_loss, mask, (2, 2))
    loss.backward()
    expected = pixel_loss[1][losses.pixel_mask(mask, (8, 8), (2, 2))[1].bool()].mean()
    assert torch.allclose(loss, expected)
    assert torch.isfinite(pixel_loss.grad).all() and pixel_loss.grad[0].eq(0).all()


def test_cross_entropy_leaves_ignored_pixels_out() -> None:
    """By hand: per sample, the mean over pixels both masked and labelled; then the mean over samples that
    have any. A sample whose masked pixels are all ignored is left out, without a NaN in the gradient."""
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(3, 5, 4, 4, generator=g, requires_grad=True)
    target = torch.randint(0, 5, (3, 4, 4), generator=g)
    mask = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 1]])  # 2 x 2 grid of 2 x 2 patches
    target[0, :2, :2] = IGNORE_ID  # sample 0: its first masked patch ignored, its second labelled
    target[0, 3, 3] = IGNORE_ID
    target[2, 2:, 2:] = IGNORE_ID  # sample 2: its only masked patch ignored
    loss = losses.masked_cross_entropy(pred, target, mask, (2, 2))
    picked = losses.pixel_mask(mask, (4, 4), (2, 2)).bool() & (target != IGNORE_ID)
    per_sample = [
        torch.stack([-pred[b, :, i, j].log_softmax(0)[target[b, i, j]] for i, j in picked[b].nonzero().tolist()])
        for b in (0, 1)
    ]
    assert [len(p) for p in per_sample] == [3, 8]
    assert torch.allclose(loss, (per_sample[0].mean() + per_sample[1].mean()) / 2)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[2].eq(0).all()
    everything_ignored = torch.full_like(target, IGNORE_ID)
    pred.grad = None
    zero = losses.masked_cross_entropy(pred, everything_ignored, mask, (2, 2))
    zero.backward()
    assert zero.item() == 0.0 and pred.grad.eq(0).all()


def test_ignored_input_pixels_embed_as_zeros() -> None:
    """The class-map adapter keeps the official Embedding(classes, dim) and maps the ignore id to the zero
    vector (no index error): a map with 255 gives the tokens of zero embeddings at those pixels."""
    torch.manual_seed(0)
    adapter = MultiMAE(TINY).input_adapters["semseg"]
    assert adapter.class_emb.weight.shape == (TINY.num_classes, TINY.class_emb_dim)
    ids = tiny_inputs()["semseg"]
    ids[0, :4, :4] = IGNORE_ID  # one whole patch
    ids[1, 5, 7] = IGNORE_ID  # one pixel
    ignored = ids == IGNORE_ID
    embedded = adapter.class_emb(ids.masked_fill(ignored, 0)).masked_fill(ignored.unsqueeze(-1), 0.0)
    assert embedded[ignored].eq(0).all()
    expected = adapter.proj(embedded.permute(0, 3, 1, 2)) + adapter.pos_emb  # (B, D, 4, 4) at the native grid
    assert torch.allclose(adapter(ids), expected.flatten(2).transpose(1, 2), atol=1e-6)
    bias_only = adapter.proj.bias.view(1, -1) + adapter.pos_emb.flatten(2).transpose(1, 2)[0, :1]
    assert torch.allclose(adapter(ids)[0, :1], bias_only, atol=1e-6)  # the all-ignored patch: no class at all
    other = ids.clone()
    other[ignored] = 0
    assert not torch.allclose(adapter(other), adapter(ids))  # 255 is not read as class 0


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_drop_path_matches_timms_from_the_same_draws(p: float) -> None:
    from timm.layers import DropPath as TimmDropPath

    from trainer.model.layers import DropPath

    x = torch.randn(64, 5, 8)
    ours, theirs = DropPath(p).train(), TimmDropPath(p).train()
    torch.manual_seed(3)
    a = ours(x)
    torch.manual_seed(3)
    b = theirs(x)
    assert torch.equal(a, b)
    assert torch.equal(ours.eval()(x), x)


def test_a_target_that_is_not_an_input_is_predicted_at_every_patch() -> None:
    """inputs rgb, outputs rgb + depth + semseg: depth and semseg are scored over every patch (an all-masked
    mask), from the rgb tokens alone."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, inputs=("rgb",), outputs=("rgb", "depth", "semseg"), num_visible=4)
    model = MultiMAE(cfg)
    inputs = tiny_inputs()
    preds, masks = model({"rgb": inputs["rgb"]})
    assert set(masks) == {"rgb"} and set(preds) == {"rgb", "depth", "semseg"}
    _, per_task = model.forward_loss(preds, inputs, masks)
    everywhere = {"rgb": masks["rgb"], "depth": torch.ones(2, 16, dtype=torch.long)}
    everywhere["semseg"] = everywhere["depth"]
    _, expected = model.forward_loss(preds, inputs, everywhere)
    for name in ("depth", "semseg"):
        assert torch.isfinite(per_task[name]) and torch.equal(per_task[name], expected[name])
    per_task["semseg"].backward()
    assert model.input_adapters["rgb"].proj.weight.grad.abs().sum() > 0  # the classes are learnt through rgb
