"""Copies the pure-Python packages that a GPU machine's Python may lack (the loader's webdataset, wids and
braceexpand) out of this environment into FOLDER, so they can travel with the working tree:

    python -m benchmarks.gpu_site .gpu-site
    # there, with that machine's own python3 (torch, transformers, timm, ... already installed):
    PYTHONPATH=$PWD/.gpu-site:$PWD python3 -m benchmarks.gpu_check

Ray is not among them (compiled, far larger than what travels): where it is missing, gpu_check builds
with the in-process executor and its builder line says so. FOLDER must be new, empty or made by an
earlier run (it is emptied first); a package with compiled files is refused. The machine's Python must
hold the project's other imports (torch, transformers, timm, typer, ...); only these three are carried.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

from benchmarks.common import Refused, exits_2, scratch_folder

PACKAGES = ("webdataset", "wids", "braceexpand")
_COMPILED = (".so", ".pyd", ".dylib")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise Refused(f"{name} is not an installed package here (make install first)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    compiled = [p.name for p in folder.rglob("*") if p.suffix in _COMPILED]
    if compiled:
        raise Refused(f"{name} holds compiled files ({', '.join(compiled[:3])}): not portable")
    return folder


def copy_site(out: Path, packages: tuple[str, ...] = PACKAGES) -> int:
    """Copies `packages` into `out` (a `scratch_folder`: new, empty, or made by a run before); returns the
    bytes written."""
    folders = [package_dir(name) for name in packages]  # all checked before anything is removed
    scratch_folder(out)
    for folder in folders:
        shutil.copytree(folder, out / folder.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


@exits_2
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    size = copy_site(args.folder)
    print(f"{args.folder}: {', '.join(PACKAGES)} ({size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
