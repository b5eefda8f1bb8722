"""The one reader of a shard's samples: `read_samples(where) -> (key, {suffix: bytes})` in tar order.

Every reader of shards in this project goes through it: the trainer's streaming loader, fine-tuning
evaluation, `preview` and `reconstruct` (the verifier walks the tar blocks itself, `pipeline.verify.tar`, to
hash them and to name every structural defect). What it hands over are undecoded bytes; values come from the
codec table (`pipeline.format.codecs.decode_member`).

The rules of the data contract (DESIGN.md, section 3):
- the shard is a regular file or a store object (`Location.reading`), read once as a stream, never whole;
- a member is KEY.SUFFIX (the key: everything before the first dot); members that are not regular files
  are not samples' members;
- only the codec table's members are read: any other (`.pyd`, `.pth`, ...) is passed over unread, so
  nothing is ever unpickled;
- a sample's members are adjacent: a key met again after another, or a member met twice in one sample, is
  an error (the sample is not handed over);
- `ordinals` (positions in the shard, counted over distinct keys) or `keys` select samples: only their
  members are read, and reading stops after the last one selected.

Errors: without `on_error`, each one is raised as it is met. With it (the loader's corrupt-data policy,
as WebDataset's `handler=`), each goes to `on_error(exc)` instead, which counts it or raises: a shard that
cannot be opened, or whose tar breaks, ends there (the sample it broke in is dropped); a sample or member
that breaks a rule is dropped and reading goes on.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack
from pathlib import Path

from pipeline.format import stores
from pipeline.format.codecs import BY_SUFFIX, split_member

Sample = dict[str, bytes]  # member suffix ("rgb.jpg", "depth.png", "json", ...) -> its bytes
OnError = Callable[[Exception], None]


class SampleError(ValueError):
    """A sample or member of a shard that breaks the data contract's rules."""


def read_samples(
    where: str | Path | stores.Location,
    *,
    ordinals: Collection[int] | None = None,
    keys: Collection[str] | None = None,
    on_error: OnError | None = None,
) -> Iterator[tuple[str, Sample]]:
    """(key, {suffix: bytes}) of each sample of the shard at `where`, in tar order (only those at `ordinals`
    or with `keys` when given: at most one of the two)."""
    if ordinals is not None and keys is not None:
        raise TypeError("select samples by ordinals or by keys, not both")
    pick = _Pick(ordinals, keys)
    if pick.left is not None and not pick.left:
        return
    policy = _Policy(str(where), on_error)
    with ExitStack() as stack:
        try:
            stream, _ = stack.enter_context(stores.open_input(where))
            tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))
        except Exception as exc:  # missing, not a regular file, unreachable, not a tar
            policy.broken(exc)
            return
        yield from _walk(tar, pick, policy)


class _Pick:
    """Which samples are read: all (`left` None), or those whose ordinal or key is still `left`."""

    def __init__(self, ordinals: Collection[int] | None, keys: Collection[str] | None) -> None:
        self.by_key = keys is not None
        self.left: set[int] | set[str] | None = set(keys) if keys is not None else None
        if ordinals is not None:
            self.left = set(ordinals)

    def wants(self, ordinal: int, key: str) -> bool:
        return self.left is None or (key if self.by_key else ordinal) in self.left

    def done(self, ordinal: int, key: str) -> bool:
        """After a wanted sample: whether it was the last one wanted."""
        if self.left is None:
            return False
        self.left.discard(key if self.by_key else ordinal)  # type: ignore[arg-type]
        return not self.left


class _Policy:
    """Where each error goes: raised as it is (no `on_error`), or to `on_error`, naming the shard."""

    def __init__(self, where: str, on_error: OnError | None) -> None:
        self.where, self.on_error = where, on_error
        self.cut = False  # the shard ended early (it broke): the sample being read is dropped

    def broken(self, exc: Exception) -> None:
        """The shard cannot be opened or its tar breaks."""
        self.cut = True
        if self.on_error is None:
            raise exc
        exc.args = (*exc.args, self.where)
        self.on_error(exc)

    def rule(self, reason: str) -> None:
        """A sample or member breaks a rule of the contract."""
        error = SampleError(f"{self.where}: {reason}")
        if self.on_error is None:
            raise error
        self.on_error(error)


def _members(tar: tarfile.TarFile, policy: _Policy) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """(key, suffix, header) of each regular member in tar order, its data next to be read; a broken tar ends
    here (to the policy), and a name that is not KEY.SUFFIX goes to the policy."""
    headers = iter(tar)
    while True:
        try:
            info = next(headers, None)
        except Exception as exc:
            policy.broken(exc)
            return
        tar.members = []  # type: ignore[attr-defined]  # a stream keeps every header read: memory stays flat
        if info is None:
            return
        if not info.isfile():
            continue
        try:
            key, suffix = split_member(info.name)
        except ValueError as err:
            policy.rule(str(err))
            continue
        yield key, suffix, info


def _walk(tar: tarfile.TarFile, pick: _Pick, policy: _Policy) -> Iterator[tuple[str, Sample]]:
    """The samples of an opened tar stream, by the module's rules; one the tar breaks in is dropped."""
    seen: set[str] = set()  # keys met so far
    sample: Sample = {}  # the sample being read: its members so far, key, ordinal, whether wanted, what is wrong
    key, ordinal, wanted, problem = "", -1, False, ""
    for k, suffix, info in _members(tar, policy):
        if k != key:
            if wanted:
                yield from _finished(key, sample, problem, policy)
                if pick.done(ordinal, key):
                    return
            key, sample, problem = k, {}, ""
            if k in seen:  # a later run of a sample already met: not a sample of its own
                policy.rule(f"sample {k!r}: its members are not adjacent (the key comes back after another)")
                wanted = False
                continue
            seen.add(k)
            ordinal += 1
            wanted = pick.wants(ordinal, k)
        if not wanted or problem or suffix not in BY_SUFFIX:
            continue
        if suffix in sample:
            problem = f"member {suffix!r} appears twice"
            continue
        try:
            sample[suffix] = tar.extractfile(info).read()  # type: ignore[union-attr]  # a regular file has data
        except Exception as exc:
            policy.broken(exc)
            return
    if wanted and not policy.cut:
        yield from _finished(key, sample, problem, policy)


def _finished(key: str, sample: Sample, problem: str, policy: _Policy) -> Iterator[tuple[str, Sample]]:
    """A sample read to its end: handed over, or to the policy when it broke a rule."""
    if problem:
        policy.rule(f"sample {key!r}: {problem}")
    else:
        yield key, sample
