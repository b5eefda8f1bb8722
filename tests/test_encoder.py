"""The one encoder of the pretraining and the fine-tuning model: shared class, seeded initialisation unchanged
by the sharing, the same tokens from both models for the same weights, hooks and stochastic depth."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer.config import ModelConfig, smoke_config
from trainer.model.encoder import MultiModalEncoder, drop_path_rates
from trainer.model.masking import keep_and_restore
from trainer.model.multimae import MultiMAE
from trainer.transfer.config import FinetuneConfig, TaskConfig, load_finetune_config
from trainer.transfer.model import MultiViT

CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"
TINY = smoke_config().model


def finetune(name: str, classes: int, model_inputs: tuple[str, ...] = ()) -> Callable[[], nn.Module]:
    cfg = load_finetune_config(CONFIGS / name)
    if model_inputs:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, inputs=model_inputs))
    return lambda: MultiViT(cfg, classes)


BUILDS: dict[str, Callable[[], nn.Module]] = {
    "pretrain-smoke": lambda: MultiMAE(TINY),
    "pretrain-rgb": lambda: MultiMAE(
        ModelConfig(
            image_size=32,
            dim=32,
            depth=2,
            heads=2,
            decoder_dim=16,
            decoder_heads=2,
            inputs=("rgb",),
            outputs=("rgb", "depth"),
            num_visible=2,
        )
    ),
    "cls": finetune("finetune-cls-smoke.toml", 10),
    "probe": finetune("probe-smoke.toml", 10),
    "semseg-rgbd": finetune("finetune-semseg-smoke.toml", 5, ("rgb", "depth")),
    "depth": finetune("finetune-depth-smoke.toml", 0),
}
# Recorded with torch 2.14 from the two models as they were before they shared the encoder (each built its own
# global tokens, input adapters and blocks). Names, shapes, every tensor and the next four draws of the global
# RNG after construction: a change of parameter order, of init calls or of random draws changes them.
# cls and semseg-rgbd were recorded again when the heads' Linears took the official xavier-uniform init (the
# encoder's part of those fingerprints is unchanged: pretrain-*, probe and depth still hold the first values).
BEFORE_SHARING = {
    "pretrain-smoke": "b863052c69371158",
    "pretrain-rgb": "eeacffd993dcc7e3",
    "cls": "669c7bdaea9337ee",
    "probe": "279f5f59d9ef453b",
    "semseg-rgbd": "773f234e2fa39272",
    "depth": "abde3a298beb7a1a",
}


def seeded_fingerprint(build: Callable[[], nn.Module]) -> str:
    torch.manual_seed(0)
    model = build()
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().contiguous().float().numpy().tobytes())
    digest.update(torch.rand(4).numpy().tobytes())
    return digest.hexdigest()[:16]


def inputs(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.randn(b, 3, 64, 64, generator=g),
        "depth": torch.randn(b, 1, 64, 64, generator=g),
        "semseg": torch.randint(0, 133, (b, 16, 16), generator=g),
    }


def test_both_models_are_the_shared_encoder() -> None:
    pretrain, fine = BUILDS["pretrain-smoke"](), BUILDS["cls"]()
    assert isinstance(pretrain, MultiModalEncoder) and isinstance(fine, MultiModalEncoder)
    for method in ("tokenize", "encode"):  # neither model redefines how tokens are made or encoded
        assert getattr(MultiMAE, method) is getattr(MultiViT, method) is getattr(MultiModalEncoder, method)
    top = ["global_tokens", "input_adapters", "output_adapters", "encoder"]  # the official order of the keys
    for model in (pretrain, fine):
        assert list(dict.fromkeys(k.split(".")[0] for k in model.state_dict())) == top


@pytest.mark.parametrize("name", list(BUILDS))
def test_seeded_initialisation_is_unchanged_by_sharing(name: str) -> None:
    assert seeded_fingerprint(BUILDS[name]) == BEFORE_SHARING[name]


def test_unmasked_pretraining_and_fine_tuning_encode_the_same_tokens() -> None:
    torch.manual_seed(0)
    pretrain = MultiMAE(TINY).eval()
    task = TaskConfig(name="cls", drop_path=0.1)
    fine = MultiViT(FinetuneConfig(model=dataclasses.replace(TINY, outputs=()), task=task), 10).eval()
    result = fine.load_state_dict(pretrain.state_dict(), strict=False)  # the same encoder weights
    assert all(k.startswith("output_adapters.") for k in (*result.missing_keys, *result.unexpected_keys))
    x = inputs()
    with torch.no_grad():
        tokens, spans = pretrain.tokenize(x)
        masks = {n: torch.zeros(2, s.stop - s.start, dtype=torch.long) for n, s in spans.items()}  # nothing masked
        ids_keep, _ = keep_and_restore(masks, list(spans))
        ours = pretrain.forward_encoder(tokens, ids_keep)  # the masked path with every token visible
        theirs, _, fine_spans = fine.forward_encoder(x)
    assert fine_spans == spans == {"rgb": slice(0, 16), "depth": slice(16, 32), "semseg": slice(32, 48)}
    assert ours.shape == (2, 48 + TINY.num_global_tokens, TINY.dim)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_encode_returns_the_hooked_blocks_in_the_order_asked() -> None:
    torch.manual_seed(0)
    model = MultiMAE(TINY).eval()
    tokens, _ = model.tokenize(inputs())
    with torch.no_grad():
        last, hooked = model.encode(tokens, hooks=(1, 0, 1))
        first = model.encoder[0](torch.cat([tokens, model.global_tokens.expand(2, -1, -1)], dim=1))
    assert len(hooked) == 3 and hooked[0] is hooked[2] is last
    torch.testing.assert_close(hooked[1], first)


def test_stochastic_depth_only_where_fine_tuning_asks_for_it() -> None:
    assert drop_path_rates(0.1, 4) == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    assert drop_path_rates(0.3, 1) == [0.0]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in BUILDS["depth"]().encoder]  # type: ignore[union-attr]
    assert rates == pytest.approx([0.0, 0.1])
    for name in ("pretrain-smoke", "probe"):
        assert all(isinstance(b.drop_path, nn.Identity) for b in BUILDS[name]().encoder)  # type: ignore[union-attr]


def test_a_frozen_encoder_under_a_dense_head_does_not_train() -> None:
    """task.freeze_encoder: only the task's head learns (the encoder gets no gradient, no drop path, stays in
    eval mode); without it, the same step changes the encoder."""
    for frozen in (True, False):
        cfg = load_finetune_config(CONFIGS / "finetune-depth-smoke.toml")
        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, freeze_encoder=frozen))
        torch.manual_seed(0)
        model = MultiViT(cfg, 0).train()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        model({"rgb": inputs()["rgb"]}).square().mean().backward()
        optimizer.step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        head = {n for n in changed if n.startswith("output_adapters.")}
        assert head and (changed == head) == frozen
        assert (not model.encoder.training) == frozen
        assert all(isinstance(b.drop_path, nn.Identity) for b in model.encoder) == frozen  # type: ignore[union-attr]


@pytest.mark.parametrize(("recipe", "classes"), [("finetune-depth-smoke.toml", 0), ("finetune-semseg-smoke.toml", 5)])
def test_the_dense_linear_probe_reads_frozen_patch_tokens(recipe: str, classes: int) -> None:
    """task.probe for semseg and depth: BatchNorm + Linear per patch token of the frozen encoder, upsampled to
    the image; only the probe's Linear learns, and a token's value moves only the pixels of its own patch's
    neighbourhood (bilinear upsampling: no spatial mixing of its own)."""
    from trainer.transfer.heads import DenseProbeHead

    cfg = load_finetune_config(CONFIGS / recipe)
    cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, probe=True))
    torch.manual_seed(0)
    model = MultiViT(cfg, classes).train()
    head = model.output_adapters[cfg.task.name]
    assert isinstance(head, DenseProbeHead) and head.final_layer.out_features == max(classes, 1)
    x = inputs()["rgb"]
    out = model({"rgb": x})
    assert out.shape == (x.shape[0], max(classes, 1), *x.shape[-2:])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out.square().mean().backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {
        f"output_adapters.{cfg.task.name}.final_layer.weight",
        f"output_adapters.{cfg.task.name}.final_layer.bias",
    }
    probe = DenseProbeHead(8, 2, patch=4).eval()
    tokens = torch.zeros(1, 16, 8)
    tokens[0, 0] = 5.0  # the top-left patch only
    moved = (probe(tokens, (4, 4)) - probe(torch.zeros(1, 16, 8), (4, 4))).abs().sum(dim=1)[0]
    assert moved.shape == (16, 16) and moved[:4, :4].min() > 0 and moved[8:, :].max() == 0 and moved[:, 8:].max() == 0
