"""Fine-tuning against the official MultiMAE fine-tuning code (66910f5): heads, losses and metrics equal the
official formulas on the same weights and inputs, re-derived here in plain torch / numpy (no code of theirs):
ConvNeXt semseg reading rgb, rgb of rgb + depth, and rgb + depth concatenated on channels; DPT depth; square
and non-square inputs; the official head initialisation; berHu and the masked L1 loss; mIoU, mean and pixel
accuracy, per-class IoU and accuracy, the confusion matrix; delta1-3, AbsRel, SqRel, RMSE, RMSE-log."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.format.schema import validate
from trainer.config import ConfigError, FinetuneConfig, ModelConfig, TaskConfig, load_run_config
from trainer.model.losses import berhu, valid_l1
from trainer.model.modalities import MODALITIES
from trainer.transfer.config import load_finetune_config
from trainer.transfer.heads import ConvNeXtHead, DPTHead, LinearHead
from trainer.transfer.metrics import DepthMetrics, SegmentationMetrics
from trainer.transfer.model import FinetuneObjective, MultiViT

PATCH = 16
TINY = ModelConfig(image_size=64, patch_size=PATCH, dim=32, depth=4, heads=4, inputs=("rgb", "depth"), outputs=())
SEMSEG = {"name": "semseg", "head_embed_dim": 128, "preds_per_patch": 16, "head_depth": 2}
DEPTH = {"name": "depth", "hooks": (0, 1, 2, 3), "layer_dims": (8, 16, 24, 32), "features": 16}


# ------------------------------------------------------------------------------------------------ references


def official_encoder(model: MultiViT, inputs: dict[str, Tensor]) -> tuple[list[Tensor], dict[str, tuple[int, int]]]:
    """The official MultiViT's token order: the inputs as the dict gives them, the global tokens last. Returns
    the output of every block and each input's (start, end) in the token sequence (its `input_info`)."""
    tokens = [model.input_adapters[n](x) for n, x in inputs.items()]
    info, start = {}, 0
    for n, t in zip(inputs, tokens, strict=True):
        info[n], start = (start, start + t.shape[1]), start + t.shape[1]
    x = torch.cat([*tokens, model.global_tokens.expand(tokens[0].shape[0], -1, -1)], dim=1)
    layers = []
    for block in model.encoder:
        x = block(x)
        layers.append(x)
    return layers, info


def read_tokens(x: Tensor, info: dict[str, tuple[int, int]], main_tasks: tuple[str, ...]) -> Tensor:
    """The official adapters' `adapt_tokens`: each main task's tokens, concatenated on channels."""
    return torch.cat([x[:, info[t][0] : info[t][1]] for t in main_tasks], dim=-1)


def ref_convnext(sd: dict[str, Tensor], tokens: Tensor, size: tuple[int, int], ppp: int, blocks: int) -> Tensor:
    """ConvNeXtAdapter.forward: proj_dec; "b n (p c) -> b (n p) c" then "b (nh nw ph pw) c -> b c (nh ph)
    (nw pw)", written as sub-pixel p = (ph, pw) of every patch taking values [p c, (p + 1) c); ConvNeXt blocks;
    1x1 conv; bilinear (align_corners False) to the image size."""
    (h, w), b = size, tokens.shape[0]
    nh, nw, s = h // PATCH, w // PATCH, math.isqrt(ppp)
    x = F.linear(tokens, sd["proj_dec.weight"], sd["proj_dec.bias"])
    c = x.shape[-1] // ppp
    fmap = x.new_zeros(b, c, nh * s, nw * s)
    for p in range(ppp):
        ph, pw = divmod(p, s)
        fmap[:, :, ph::s, pw::s] = x[..., p * c : (p + 1) * c].reshape(b, nh, nw, c).permute(0, 3, 1, 2)
    for i in range(blocks):
        k = f"blocks.{i}."
        y = F.conv2d(fmap, sd[k + "dwconv.weight"], sd[k + "dwconv.bias"], padding=3, groups=c).permute(0, 2, 3, 1)
        y = F.layer_norm(y, (c,), sd[k + "norm.weight"], sd[k + "norm.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[k + "pwconv1.weight"], sd[k + "pwconv1.bias"])), *_wb(sd, k + "pwconv2"))
        fmap = fmap + y.permute(0, 3, 1, 2)
    out = F.conv2d(fmap, *_wb(sd, "final_layer"))
    return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)


def _wb(sd: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
    return sd[f"{name}.weight"], sd[f"{name}.bias"]


def _rcu(sd: dict[str, Tensor], k: str, x: Tensor) -> Tensor:
    out = F.conv2d(F.relu(x), *_wb(sd, k + "conv1"), padding=1)
    return F.conv2d(F.relu(out), *_wb(sd, k + "conv2"), padding=1) + x


def _fusion(sd: dict[str, Tensor], k: str, x: Tensor, skip: Tensor | None = None) -> Tensor:
    out = x if skip is None else x + _rcu(sd, k + "resConfUnit1.", skip)
    out = F.interpolate(_rcu(sd, k + "resConfUnit2.", out), scale_factor=2, mode="bilinear", align_corners=True)
    return F.conv2d(out, *_wb(sd, k + "out_conv"))


def ref_dpt(sd: dict[str, Tensor], hooked: list[Tensor], size: tuple[int, int]) -> Tensor:
    """DPTOutputAdapter.forward (regression head) on the read tokens of each hooked block."""
    nh, nw = size[0] // PATCH, size[1] // PATCH
    maps = [t.reshape(t.shape[0], nh, nw, t.shape[2]).permute(0, 3, 1, 2) for t in hooked]  # b (nh nw) c -> b c nh nw
    post = [F.conv2d(m, *_wb(sd, f"act_{i}_postprocess.0")) for i, m in enumerate(maps, start=1)]
    post[0] = F.conv_transpose2d(post[0], *_wb(sd, "act_1_postprocess.1"), stride=4)
    post[1] = F.conv_transpose2d(post[1], *_wb(sd, "act_2_postprocess.1"), stride=2)
    post[3] = F.conv2d(post[3], *_wb(sd, "act_4_postprocess.1"), stride=2, padding=1)
    l1, l2, l3, l4 = (F.conv2d(x, sd[f"scratch.layer{i}_rn.weight"], padding=1) for i, x in enumerate(post, start=1))
    path = _fusion(sd, "scratch.refinenet4.", l4)
    path = _fusion(sd, "scratch.refinenet3.", path, l3)
    path = _fusion(sd, "scratch.refinenet2.", path, l2)
    path = _fusion(sd, "scratch.refinenet1.", path, l1)
    out = F.conv2d(path, *_wb(sd, "head.0"), padding=1)
    out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
    out = F.relu(F.conv2d(out, *_wb(sd, "head.2"), padding=1))
    return F.conv2d(out, *_wb(sd, "head.4"))


def model_and_inputs(
    inputs: tuple[str, ...], task: dict[str, object], size: tuple[int, int], classes: int = 5
) -> tuple[MultiViT, dict[str, Tensor]]:
    torch.manual_seed(0)
    cfg = FinetuneConfig(model=ModelConfig(**{**vars(TINY), "inputs": inputs}), task=TaskConfig(**task))  # type: ignore[arg-type]
    validate(cfg)
    model = MultiViT(cfg, classes).double().eval()
    with torch.no_grad():
        for p in model.head.parameters():  # every weight and bias random: nothing hides behind a zero
            p.normal_(0.0, 0.2)
    data = {n: torch.randn(2, MODALITIES[n].channels or 1, *size, dtype=torch.float64) for n in inputs}
    return model, data


# ------------------------------------------------------------------------------------------------ models

SIZES = [(64, 64), (48, 80), (80, 32)]  # square, wide, tall (token grids 4x4, 3x5, 5x2)
SEMSEG_READOUTS = [  # (inputs, readout, the official main_tasks)
    (("rgb",), (), ("rgb",)),
    (("rgb", "depth"), (), ("rgb",)),  # the paper's RGB-D model: the head reads rgb
    (("rgb", "depth"), ("rgb", "depth"), ("rgb", "depth")),
    (("rgb", "depth"), ("depth", "rgb"), ("depth", "rgb")),
    (("depth", "rgb"), ("rgb", "depth"), ("rgb", "depth")),
]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("inputs", "readout", "main_tasks"), SEMSEG_READOUTS)
def test_convnext_semseg_equals_the_official_adapter(
    inputs: tuple[str, ...], readout: tuple[str, ...], main_tasks: tuple[str, ...], size: tuple[int, int]
) -> None:
    model, data = model_and_inputs(inputs, {**SEMSEG, "readout": readout}, size)
    with torch.no_grad():
        ours = model(data)
        layers, info = official_encoder(model, data)
        sd = model.head.state_dict()
        ref = ref_convnext(sd, read_tokens(layers[-1], info, main_tasks), size, 16, 2)
    assert sd["proj_dec.weight"].shape[1] == TINY.dim * len(main_tasks)
    assert ours.shape == (2, 5, *size)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


DEPTH_SIZES = [(64, 64), (64, 96), (96, 32)]  # even token grids (an odd one is a shape error in the official DPT)


@pytest.mark.parametrize("size", DEPTH_SIZES)
@pytest.mark.parametrize(("inputs", "readout"), [(("rgb",), ()), (("rgb", "depth"), ("rgb", "depth"))])
def test_dpt_depth_equals_the_official_adapter(
    inputs: tuple[str, ...], readout: tuple[str, ...], size: tuple[int, int]
) -> None:
    model, data = model_and_inputs(inputs, {**DEPTH, "readout": readout}, size, classes=0)
    with torch.no_grad():
        ours = model(data)
        layers, info = official_encoder(model, data)
        hooked = [read_tokens(layers[h], info, readout or ("rgb",)) for h in DEPTH["hooks"]]  # type: ignore[attr-defined]
        ref = ref_dpt(model.head.state_dict(), hooked, size)
    assert ours.shape == (2, 1, *size)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_the_concatenated_readout_keeps_the_official_names() -> None:
    """Only proj_dec's input width changes (k x dim), as the official rgb-depth model's."""
    single, _ = model_and_inputs(("rgb", "depth"), SEMSEG, (64, 64))
    concat, _ = model_and_inputs(("rgb", "depth"), {**SEMSEG, "readout": ("rgb", "depth")}, (64, 64))
    a, b = single.state_dict(), concat.state_dict()
    assert list(a) == list(b)
    assert [k for k in a if a[k].shape != b[k].shape] == ["output_adapters.semseg.proj_dec.weight"]
    assert b["output_adapters.semseg.proj_dec.weight"].shape == (128, 2 * TINY.dim)


def test_the_shipped_rgbd_recipe_reads_rgb_only() -> None:
    cfg = load_finetune_config("finetune-nyuv2-semseg-rgbd")
    assert cfg.model.inputs == ("rgb", "depth") and cfg.task.read_inputs == ("rgb",)
    with torch.device("meta"):
        model = MultiViT(cfg, 40)
    assert model.head.state_dict()["proj_dec.weight"].shape[1] == 768  # the official NYUv2 RGB-D layout


def test_the_readout_is_a_recipe_key_checked_against_the_inputs() -> None:
    rgbd = ModelConfig(inputs=("rgb", "depth"), outputs=())
    validate(FinetuneConfig(model=rgbd, task=TaskConfig(name="semseg", readout=("rgb", "depth"))))
    with pytest.raises(ConfigError, match=r"task\.readout 'semseg' is not one of model\.inputs"):
        validate(FinetuneConfig(model=rgbd, task=TaskConfig(name="semseg", readout=("rgb", "semseg"))))
    with pytest.raises(ConfigError, match=r"task\.readout names an input twice"):
        validate(FinetuneConfig(model=rgbd, task=TaskConfig(name="semseg", readout=("rgb", "rgb"))))
    with pytest.raises(ConfigError, match=r"task\.readout: the cls task's head reads no input's tokens"):
        validate(FinetuneConfig(model=rgbd, task=TaskConfig(name="cls", readout=("rgb", "depth"))))
    cfg = load_run_config("finetune", "finetune-nyuv2-semseg-rgbd", sets=['task.readout=["rgb", "depth"]'])
    assert cfg.task.read_inputs == ("rgb", "depth")


def test_rgbd_fine_tuning_with_the_concatenated_readout_learns_from_both_inputs() -> None:
    """A training step of the smoke recipe with `--inputs rgb,depth --set task.readout=[rgb, depth]`: the loss
    reaches the head's weights of both inputs' channels and both input adapters."""
    sets = ['model.inputs=["rgb", "depth"]', 'task.readout=["rgb", "depth"]']
    cfg = load_run_config("finetune", "finetune-semseg-smoke", sets=sets)
    torch.manual_seed(0)
    objective = FinetuneObjective(MultiViT(cfg, 5).train())
    batch = {
        "rgb": torch.randn(2, 3, 64, 64),
        "depth": torch.randn(2, 1, 64, 64),
        "semseg": torch.randint(0, 5, (2, 64, 64)),
    }
    batch["semseg"][:, :8] = 255  # ignored rows
    loss, parts = objective(batch)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"semseg"}
    grads = {n: p.grad for n, p in objective.model.named_parameters()}
    grad = grads["output_adapters.semseg.proj_dec.weight"]
    assert grad is not None and grad.shape == (256, 2 * cfg.model.dim)
    assert grad[:, : cfg.model.dim].abs().sum() > 0 and grad[:, cfg.model.dim :].abs().sum() > 0  # rgb | depth
    for name in ("rgb", "depth"):
        g = grads[f"input_adapters.{name}.proj.weight"]
        assert g is not None and g.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ init


def _is_xavier_uniform(w: Tensor) -> bool:
    w = w.detach()
    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    std = float(w.std())
    return (
        float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound and abs(std * 3**0.5 / bound - 1) < 0.05
    )


def test_heads_are_initialised_as_the_official_model() -> None:
    """Every head Linear xavier-uniform with zero bias, LayerNorms 1 / 0; convs keep PyTorch's default
    (|w|, |b| <= 1 / sqrt(fan_in))."""
    torch.manual_seed(0)
    heads: list[nn.Module] = [
        ConvNeXtHead(96, 150, embed_dim=1536, preds_per_patch=16, depth=2),
        LinearHead(96, 1000),
        DPTHead(96, hooks=(0, 1, 2, 3), layer_dims=(8, 16, 24, 32), features=16),
    ]
    for head in heads:
        for name, m in head.named_modules():
            if isinstance(m, nn.Linear):
                assert _is_xavier_uniform(m.weight), name
                assert not m.bias.any(), name
            elif isinstance(m, nn.LayerNorm):
                assert (m.weight == 1).all() and not m.bias.any(), name
            elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.weight[:, 0].numel()
                assert float(m.weight.detach().abs().max()) <= 1 / math.sqrt(fan_in) + 1e-7, name
    model = MultiViT(FinetuneConfig(model=TINY, task=TaskConfig(**SEMSEG)), 5)  # type: ignore[arg-type]
    assert _is_xavier_uniform(model.head.state_dict()["proj_dec.weight"])  # the encoder's init leaves the head's


# ------------------------------------------------------------------------------------------------ losses


def official_depth_losses(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """masked_l1_loss and masked_berhu_loss on (B, 1, H, W): invalid differences zeroed, sums / valid count."""
    diff = pred - target
    diff[~valid] = 0
    l1 = diff.abs().sum() / valid.sum()
    c = max(float(diff.abs().max()) * 0.2, 1e-5)
    small = diff.abs() < c
    total = diff.abs()[small].sum() + ((diff**2 + c**2) / 2 / c)[~small].sum()
    return l1, total / valid.sum()


def test_depth_losses_equal_the_official_ones() -> None:
    torch.manual_seed(1)
    pred, target = torch.randn(3, 1, 24, 40), torch.rand(3, 1, 24, 40) * 5
    valid = torch.rand(3, 1, 24, 40) > 0.3
    target[~valid] = 0.0
    l1, bh = official_depth_losses(pred.clone(), target, valid)
    torch.testing.assert_close(valid_l1(pred[:, 0], target[:, 0], valid[:, 0]), l1, atol=1e-5, rtol=0)
    torch.testing.assert_close(berhu(pred[:, 0], target[:, 0], valid[:, 0]), bh, atol=1e-5, rtol=0)
    assert (berhu(pred[:, 0], target[:, 0], valid[:, 0]) - l1).abs() > 1e-3  # the two differ: a real check
    nothing = torch.zeros_like(valid[:, 0])
    leaf = pred[:, 0].clone().requires_grad_()
    for loss in (valid_l1(leaf, target[:, 0], nothing), berhu(leaf, target[:, 0], nothing)):
        loss.backward()
        assert float(loss.detach()) == 0.0 and leaf.grad is not None and not leaf.grad.any()


# ------------------------------------------------------------------------------------------------ metrics


def official_semseg(preds: list[np.ndarray], gts: list[np.ndarray], k: int, ignore: int) -> dict[str, np.ndarray]:
    """utils/semseg_metrics.eval_metrics: histograms per image summed over the split, then nan-means."""
    inter, union, label = np.zeros(k), np.zeros(k), np.zeros(k)
    bins = np.arange(k + 1)
    for p, g in zip(preds, gts, strict=True):
        keep = g != ignore
        p, g = p[keep], g[keep]
        i, area_p, area_g = (np.histogram(x, bins=bins)[0] for x in (p[p == g], p, g))
        inter, union, label = inter + i, union + area_p + area_g - i, label + area_g
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"all_acc": inter.sum() / label.sum(), "acc": inter / label, "iou": inter / union}


def test_segmentation_metrics_equal_the_official_ones() -> None:
    rng = np.random.default_rng(0)
    k, ignore = 7, 255
    batches = []
    for shape in ((2, 9, 13), (3, 5, 4)):
        gt = rng.integers(0, 5, shape)  # classes 5 and 6 never in the targets ...
        gt[rng.random(shape) < 0.2] = ignore
        pred = np.where(
            rng.random(shape) < 0.6, np.where(gt == ignore, 0, gt), rng.integers(0, 6, shape)
        )  # ... 5 predicted
        batches.append((pred, gt))
    m = SegmentationMetrics(k, ignore)
    for pred, gt in batches:
        logits = F.one_hot(torch.from_numpy(pred), k).permute(0, 3, 1, 2).double()  # argmax = pred
        m.update(logits, torch.from_numpy(gt))
    ref = official_semseg([x for p, _ in batches for x in p], [x for _, g in batches for x in g], k, ignore)
    r, per = m.result(), m.per_class()
    assert r["miou"] == pytest.approx(100 * np.nanmean(ref["iou"]), abs=1e-5)
    assert r["mean_acc"] == pytest.approx(100 * np.nanmean(ref["acc"]), abs=1e-5)
    assert r["pixel_acc"] == pytest.approx(100 * ref["all_acc"], abs=1e-5)
    np.testing.assert_allclose(per["iou"].numpy(), ref["iou"], atol=1e-5)  # NaN where the official NaN
    np.testing.assert_allclose(per["acc"].numpy(), ref["acc"], atol=1e-5)
    assert math.isnan(per["iou"][6]) and per["iou"][5] == 0.0 and math.isnan(per["acc"][5])
    confusion = np.zeros((k, k))
    for pred, gt in batches:
        keep = gt != ignore
        np.add.at(confusion, (gt[keep], pred[keep]), 1)
    np.testing.assert_array_equal(m.confusion.numpy(), confusion)


def official_depth_metrics(pred: Tensor, target: Tensor, valid: Tensor) -> dict[str, float]:
    """masked_nyu_metrics on (B, 1, H, W), after de-standardisation."""
    n = valid.sum()
    diff = (pred - target).abs()
    diff[~valid] = 0
    max_rel = torch.maximum(pred / target.clamp_min(1e-6), target / pred.clamp_min(1e-6))[valid]
    log_diff = pred.clamp_min(1e-6).log() - target.clamp_min(1e-6).log()
    log_diff[~valid] = 0
    return {
        "rmse": float((diff.square().sum() / n).sqrt()),
        "absrel": float((diff / target.clamp_min(1e-6))[valid].mean()),
        "sqrel": float((diff**2 / target.clamp_min(1e-6))[valid].mean()),
        "rmse_log": float((log_diff.square().sum() / n).sqrt()),  # the official `log10`
        **{f"delta{k}": 100 * float((max_rel < 1.25**k).double().mean()) for k in (1, 2, 3)},
    }


def test_depth_metrics_equal_the_official_ones() -> None:
    torch.manual_seed(2)
    target = torch.rand(4, 1, 16, 20, dtype=torch.float64) * 8 + 0.1
    pred = target * torch.exp(torch.randn_like(target) * 0.3)
    pred[0, 0, 0, :5] = torch.tensor([-1.0, 0.0, 1e-9, 50.0, 0.05])  # negative, zero, tiny and far-off predictions
    valid = torch.rand(4, 1, 16, 20) > 0.25
    ref = official_depth_metrics(pred, target, valid)
    one, split = DepthMetrics(), DepthMetrics()
    one.update(pred[:, 0], target[:, 0], valid[:, 0])
    for i in range(4):  # the whole split, one image at a time: sums over pixels, the same numbers
        split.update(pred[i : i + 1, 0], target[i : i + 1, 0], valid[i : i + 1, 0])
    for metrics in (one, split):
        r = metrics.result()
        for key, value in ref.items():
            assert r[key] == pytest.approx(value, abs=1e-5), key
    masked = target.clone()
    masked[~valid] = 0.0  # without a mask given, valid = target > 0
    default = DepthMetrics()
    default.update(pred[:, 0], masked[:, 0])
    assert default.result() == one.result()
