"""Loading labeler weights from a local folder or a hub id, failing fast and saying how to provide them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class WeightsUnavailableError(RuntimeError):
    """The weights a labeler names are neither a local folder nor in the Hugging Face cache or reachable."""


def _how_to(weights: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"weights {weights!r} are not a local folder and not in the Hugging Face cache, and the hub is not "
        f"reachable. Provide them by either (1) on a machine with internet: `hf download {weights}{rev}` and "
        f"copy the cache (HF_HOME, default ~/.cache/huggingface) here, or (2) `save_pretrained` the model to a "
        f'folder and set `weights = "/path/to/folder"` in the recipe\'s [labelers.<modality>] table.'
    )


def _cached(weights: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(weights, "config.json", revision=revision)
    except Exception:  # not a valid hub id (e.g. a path that does not exist)
        return False
    return isinstance(hit, str)


def _hub_reachable(weights: str, revision: str | None) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import model_info

    try:
        model_info(weights, revision=revision, timeout=5)
    except Exception:
        return False
    return True


def check_weights(weights: str, revision: str | None) -> None:
    """Raise WeightsUnavailableError at once (within ~5 s) if `weights` cannot be loaded here."""
    if Path(weights).expanduser().is_dir():
        if not (Path(weights).expanduser() / "config.json").is_file():
            raise WeightsUnavailableError(f"weights folder {weights!r} has no config.json (not a transformers folder)")
        return
    if not _cached(weights, revision) and not _hub_reachable(weights, revision):
        raise WeightsUnavailableError(_how_to(weights, revision))


def quiet_transformers() -> None:
    """No per-load progress bars or info logs from transformers inside labelling workers."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_pretrained(model_cls: Any, weights: str, revision: str | None) -> Any:
    """`model_cls.from_pretrained` from a local folder or hub id; never trust_remote_code."""
    quiet_transformers()
    check_weights(weights, revision)
    local = Path(weights).expanduser()
    source = str(local) if local.is_dir() else weights
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if not local.is_dir():
        kwargs["revision"] = revision
    try:
        return model_cls.from_pretrained(source, **kwargs).eval()
    except OSError as err:
        raise WeightsUnavailableError(f"{_how_to(weights, revision)} ({err})") from err
