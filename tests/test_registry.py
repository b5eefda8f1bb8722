"""The registries agree with each other, and every registered modality and task runs in and out of the model.

Parametrised over the registries themselves, so a modality or task added later (a plugin's too, when it is
installed) is tested without editing this file.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labelers import available, resolve_spec
from labelers.spec import OUTPUT_MEMBER_KIND
from pipeline.build.recipe import member_problem
from pipeline.format.codecs import BY_SUFFIX, CODECS, IGNORE_ID, Codec
from trainer.config import smoke_config
from trainer.data.augment import Crop, augment
from trainer.model.modalities import MODALITIES, TASKS
from trainer.model.multimae import MultiMAE

TINY = smoke_config().model
H, W = 40, 52


def test_every_modality_has_a_map_codec_and_every_task_a_modality() -> None:
    for name, m in MODALITIES.items():
        assert m.codec in CODECS, name
        codec = CODECS[m.codec]
        assert codec.is_map, name
        assert (m.channels is None) == (codec.kind == "class_map"), name  # class maps take num_classes
        assert m.channels is None or m.channels == codec.channels, name
        assert TINY.image_size % m.stride == 0 and (TINY.patch_size // m.stride) >= 1, name
    for name, t in TASKS.items():
        assert t.source in MODALITIES, name
    assert set(MODALITIES) <= set(TASKS) | {"rgb"}  # every label map can be predicted


def test_every_labeler_fills_a_registered_member_of_its_kind() -> None:
    assert {"omnidata-dpt-hybrid-normal", "omnidata-normal-smoke", "mask2former-swin-small-ade-semantic"} <= set(
        available()
    )
    for name in available():
        spec = resolve_spec(name)
        assert member_problem(spec) is None, name
        assert spec.modality in MODALITIES, f"{name}: the trainer has no modality {spec.modality!r}"
        assert CODECS[spec.modality].kind == OUTPUT_MEMBER_KIND[spec.output]


def test_codec_names_and_suffixes_are_one_to_one() -> None:
    assert {BY_SUFFIX[c.suffix] for c in CODECS.values()} == set(CODECS)
    for name, codec in CODECS.items():
        if codec.kind in ("value_map", "vector_map"):
            assert codec.quantize is not None and codec.encoding, name


def labeler_map(codec: Codec, rng: np.random.Generator) -> np.ndarray:
    """What a labeler of this member's kind returns, at H x W (class maps with unlabelled pixels too)."""
    if codec.kind == "class_map":
        ids = rng.integers(0, TINY.num_classes, (H, W)).astype(np.uint8)
        ids[:, :12] = IGNORE_ID  # a void band, as NYUv2's and ADE20K's: every input adapter and loss meets it
        return ids
    if codec.kind == "vector_map":
        n = rng.normal(size=(H, W, 3))
        return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)
    if codec.kind == "image":
        return rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    return rng.random((H, W)).astype(np.float32)


def stored_array(name: str, rng: np.random.Generator) -> np.ndarray:
    """A member of modality `name` through the contract: labeler map -> stored array -> bytes -> decoded."""
    codec = CODECS[MODALITIES[name].codec]
    value = labeler_map(codec, rng)
    if codec.kind != "image":
        value, _ = codec.store(value, "classes" if codec.kind == "class_map" else "value")
    decoded = codec.decode(codec.encode(value))
    assert codec.problem(decoded) is None
    if codec.kind != "image":  # PNG members are lossless
        assert np.array_equal(decoded, value)
    return np.asarray(decoded)


def batch_for(names: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(2):
        arrays = {n: stored_array(n, rng) for n in names}
        crop = Crop(top=2, left=3, height=H - 4, width=W - 9, flip=bool(i))
        items.append(augment(arrays, crop, TINY.image_size))
    return {n: torch.stack([it[n] for it in items]) for n in names}


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_every_modality_decodes_augments_and_feeds_the_encoder(name: str) -> None:
    m = MODALITIES[name]
    batch = batch_for([name])
    size = TINY.image_size // m.stride
    expected = (2, size, size) if m.channels is None else (2, m.channels, size, size)
    assert tuple(batch[name].shape) == expected and torch.isfinite(batch[name].float()).all()
    cfg = dataclasses.replace(TINY, inputs=(name,), outputs=(), num_visible=8)
    torch.manual_seed(0)
    model = MultiMAE(cfg)
    tokens = model.input_adapters[name](batch[name])
    assert tokens.shape == (2, (TINY.image_size // TINY.patch_size) ** 2, TINY.dim)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_predicts_and_trains(task: str) -> None:
    source = TASKS[task].source
    inputs = tuple(dict.fromkeys(["rgb", source]))
    cfg = dataclasses.replace(TINY, inputs=inputs, outputs=(task,), num_visible=8)
    torch.manual_seed(0)
    model = MultiMAE(cfg)
    batch = batch_for(list(inputs))
    preds, masks = model({n: batch[n] for n in inputs})
    loss, per_task = model.forward_loss(preds, batch, masks)
    assert set(per_task) == {task} and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.output_adapters[task].parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_registering_refuses_clashes_and_incomplete_entries() -> None:
    from pipeline.format.codecs import register_codec
    from trainer.model.modalities import Task, register_modality, register_task

    depth = CODECS["depth"]
    with pytest.raises(ValueError, match="registered twice"):
        register_codec("depth", dataclasses.replace(depth))
    with pytest.raises(ValueError, match="already codec 'depth'"):
        register_codec("depth-copy", dataclasses.replace(depth))
    with pytest.raises(ValueError, match="needs `quantize`"):
        register_codec("bare", dataclasses.replace(depth, suffix="bare.png", quantize=None))
    with pytest.raises(ValueError, match="not a registered map codec"):
        register_modality(dataclasses.replace(MODALITIES["depth"], name="orphan", codec="no-such-codec"))
    with pytest.raises(ValueError, match="not a registered modality"):
        register_task(Task(name="orphan", source="no-such-modality", loss=TASKS["depth"].loss))
    assert "bare" not in CODECS and "orphan" not in MODALITIES and "orphan" not in TASKS


def test_a_failing_plugin_is_named() -> None:
    from importlib.metadata import EntryPoint

    from labelers import plugins

    broken = EntryPoint(name="broken", value="no_such_plugin_module", group="multimae_forge.codecs")
    original = plugins.entry_points
    plugins.entry_points = lambda group: [broken] if group == broken.group else []  # type: ignore[assignment]
    try:
        [failed] = plugins.load_entry_points("multimae_forge.codecs")  # left out, named; the rest still loads
        assert re.search(r"broken = no_such_plugin_module .*ModuleNotFoundError", str(failed))
        assert "broken = no_such_plugin_module" in plugins.unavailable("multimae_forge.codecs")
    finally:
        plugins.entry_points = original
        plugins.FAILED.pop("multimae_forge.codecs", None)


def test_a_plugin_that_raises_after_registering_is_left_out_wholly(tmp_path: Path, monkeypatch) -> None:
    """Entries its import registered before it raised are taken back from every registry table, so no half of a
    broken plugin stays usable; a later plugin that loads keeps its entries."""
    from importlib.metadata import EntryPoint

    from labelers import plugins
    from labelers.registry import _REGISTRY

    (tmp_path / "half_plugin.py").write_text(
        "import dataclasses\n"
        "from pipeline.format.codecs import CODECS, register_codec\n"
        "from labelers.registry import register_labeler\n"
        "from labelers.builtin import SPECS\n"
        "register_codec('half', dataclasses.replace(CODECS['depth'], suffix='half.png'))\n"
        "register_labeler(dataclasses.replace(SPECS['dpt-smoke'], name='half-labeler'))(lambda spec, **kw: None)\n"
        "raise RuntimeError('broken after registering')\n"
    )
    (tmp_path / "whole_plugin.py").write_text(
        "import dataclasses\n"
        "from pipeline.format.codecs import CODECS, register_codec\n"
        "register_codec('whole', dataclasses.replace(CODECS['depth'], suffix='whole.png'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    group = "multimae_forge.codecs"
    eps = [EntryPoint(name=n, value=f"{n}_plugin", group=group) for n in ("half", "whole")]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps if group == eps[0].group else [])
    try:
        [failed] = plugins.load_entry_points(group)
        assert "half = half_plugin" in str(failed) and "broken after registering" in str(failed)
        assert "half" not in CODECS and "half.png" not in BY_SUFFIX and "half-labeler" not in _REGISTRY
        assert CODECS["whole"].suffix == "whole.png" and BY_SUFFIX["whole.png"] == "whole"
    finally:
        plugins.FAILED.pop(group, None)
        CODECS.pop("whole", None)
        BY_SUFFIX.pop("whole.png", None)
        for name in ("half_plugin", "whole_plugin"):
            sys.modules.pop(name, None)


def test_mirror_signs_apply_to_integer_tensors_too() -> None:
    from trainer.data.augment import resample

    x = torch.full((3, 4, 4), 7, dtype=torch.uint8)
    out = resample(x, Crop(top=0, left=0, height=4, width=4, flip=True), 4, "nearest-exact", (-1.0, 1.0, 1.0))
    assert out.dtype == torch.float32 and out[0].eq(-7).all() and out[1:].eq(7).all()
