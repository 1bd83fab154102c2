"""Claiming a workdir for training: one writer at a time, and no silent config changes on resume.

Two `train` processes on one workdir would interleave checkpoints, metrics and `config.json`; a resume whose
config changes the model, optimizer or data order would either fail deep inside the checkpoint restore or,
worse, continue a different experiment under the old run's name. `claim` stops both before anything is written:

- `WorkdirLock`: `W/train.lock` is `flock`ed for the whole run and records host, pid and start time. The kernel
  drops the flock when its process dies, so a lock file whose flock can be taken is stale by definition; it is
  taken over with a warning. Released, the file is emptied and left in place (removing it would let a process
  that opened it just before hold a lock on an unlinked file while a third creates a new one). The one
  exception is a failed fresh start (below), which unlinks it while still holding it; `acquire` retries when
  the file it locked is no longer the one at the path, so that is safe.
- `check_resume`: with `W/config.json` and a checkpoint present, the saved config is compared with the new one;
  any difference outside `FREE_KEYS` is a `ConfigDriftError` unless `allow_changes=True`, which only warns.
- A run that fails before it recorded anything (no checkpoint, no metrics.jsonl: a bad data path, a config the
  model refuses, Ctrl-C while compiling) removes what it created in the workdir (`train.lock`, `checkpoints/`,
  `config.json`, …) and the workdir itself if it made it; whatever was there before stays.

With several processes, process 0 decides and tells the others, so they all stop together.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import fnmatch
import json
import logging
import os
import pathlib
import shutil
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from cxr_jax import config as config_lib

log = logging.getLogger("cxr_jax.train")

LOCK_FILE = "train.lock"

# Config keys (fnmatch patterns; `*` spans dots) a resume may change without `allow_changes`: they never reach
# the parameters, the optimizer state or the order of the training examples. Everything else is compared.
FREE_KEYS: tuple[str, ...] = (
    # The schedule and bookkeeping: how long, how often to log and save, how many checkpoints to keep.
    "train.num_steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.cpu_ynn_fusions",  # Which CPU kernels XLA uses, not what they compute.
    "train.chunk_loop",  # ConVIRT: how micro-batches are looped (scan or written out), not what they compute.
    "allow_changes",
    # Read only when a run starts from scratch: a resume restores the state instead.
    "init_from",
    "model.encoder_from",  # segment: the LD run its encoder starts from.
    # Evaluation, benchmarks and inference commands (train/evaluation.py, methods/*/evaluate.py, bench.py, cli/).
    "eval.*", "bench.*", "bootstrap.*", "data.eval.*",
    "saliency.*",  # DGM: residue → regions (evaluate, decompose).
    "landmarks.*", "data.template.*",  # LD: one-shot landmarks (evaluate, `cxr-jax landmarks`).
    "probe.*", "retrieval.*",  # ConVIRT: linear probes, fine-tuning and category retrieval (evaluate).
    # How examples are read, not which or in what order (test_streaming_from_files_trains_exactly_as_from_memory;
    # a prepared TFDS copy of the same set: tests/data/test_tfds.py).
    "data.prefetch", "data.train.stream", "data.extra_train.*.stream",
    "data.train.tfds_data_dir", "data.extra_train.*.tfds_data_dir",
)


class WorkdirError(config_lib.ConfigError):
    """A workdir cannot be trained as asked; the CLI reports it in one line (exit 2), like a config error."""


class LockedError(WorkdirError):
    """Another live process holds the workdir's lock."""


class ConfigDriftError(WorkdirError):
    """A resume's config changes keys outside `FREE_KEYS` and `allow_changes` is off."""


@contextlib.contextmanager
def claim(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Iterator[None]:
    """Holds `workdir` for one `train`: locks it and checks a resume's config before anything is written.

    Only process 0 locks and checks (the workdir is shared); it broadcasts the outcome so that every process
    raises, instead of the others waiting forever in the first collective for a process 0 that has exited.
    """
    workdir = pathlib.Path(workdir)
    lead = jax.process_index() == 0
    before = _Before(workdir) if lead else None
    lock = WorkdirLock(workdir) if lead else None
    try:
        error = None
        if lock is not None:
            try:
                lock.acquire()
                check_resume(config, workdir)
            except Exception as e:  # Re-raised below, once the other processes know.
                error = e
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
            if not ok and error is None:
                raise WorkdirError(f"process 0 refused to train {workdir}; its log has the reason")
        if error is not None:
            raise error
        yield
    except BaseException:
        if lock is not None and lock.held:  # Never while another process holds the workdir.
            before.remove_unless_started()
        raise
    finally:
        if lock is not None:
            lock.release()


class _Before:
    """A workdir's entries before a run, to take back what a failed fresh start added (and nothing else)."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.entries = set(os.listdir(workdir)) if workdir.is_dir() else set()
        self.new_dirs = []  # The workdir and its missing parents, innermost first: what `mkdir(parents=True)` makes.
        path = workdir.absolute()
        while not path.exists() and path != path.parent:
            self.new_dirs.append(path)
            path = path.parent

    def remove_unless_started(self) -> None:
        """If the run recorded nothing (no checkpoint, no metrics.jsonl), removes the entries it created."""
        if not self.workdir.is_dir() or has_checkpoint(self.workdir) or (self.workdir / "metrics.jsonl").exists():
            return
        for entry in self.workdir.iterdir():
            if entry.name in self.entries:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)  # train.lock too: unlinked while still held (see the docstring).
        for directory in self.new_dirs:
            try:
                directory.rmdir()  # Only if empty: something another process put there stays.
            except OSError:
                break


class WorkdirLock:
    """An exclusive `flock` on `W/train.lock`, which records who holds it (JSON: host, pid, start)."""

    def __init__(self, workdir: str | pathlib.Path):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the flock (not after `release`, nor on a file system without flock)."""
        return self._fd is not None

    def acquire(self) -> None:
        """Takes the lock or raises `LockedError` naming its holder; a stale one is taken over with a warning."""
        for _ in range(100):
            fd = self._try_lock()
            if fd is None:
                return
            try:  # The file locked must still be the one at the path (a failed start may have unlinked it).
                locked, there = os.fstat(fd), os.stat(self.path)
                current = (locked.st_dev, locked.st_ino) == (there.st_dev, there.st_ino)
            except FileNotFoundError:
                current = False
            if current:
                break
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        else:
            raise WorkdirError(f"{self.path} keeps being replaced; is another process creating and removing it?")
        previous = _read_record(fd)
        if previous and (previous.get("pid"), previous.get("host")) != (os.getpid(), socket.gethostname()):
            log.warning("%s: taking over the stale lock of pid %s on %s (since %s), which is gone", self.path,
                        previous.get("pid"), previous.get("host"), previous.get("start"))
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "start": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Empties the record and drops the lock; the file stays (see the module docstring). Idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _try_lock(self) -> int | None:
        """The open lock file's descriptor, flocked; None on a file system without flock."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('start')}" if holder
                   else "another process (its lock file holds no record yet)")
            raise LockedError(f"{self.workdir} is being trained by {who}") from None
        except OSError as e:  # A file system without flock (some network mounts): train, but say it is unguarded.
            os.close(fd)
            log.warning("%s: cannot lock (%s); a second train on this workdir would not be stopped", self.path, e)
            return None
        return fd


def _read_record(fd: int) -> dict[str, Any]:
    """The holder recorded in an open lock file; {} when empty or unreadable (e.g. written halfway)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def check_resume(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
    """Raises `ConfigDriftError` if `config` would resume `workdir`'s checkpoints with changed non-free keys.

    Runs before `W/config.json` is overwritten. The saved config is read with `config_lib.load_run`, so keys
    added to the method since the run was trained take their defaults instead of counting as changes. With
    `allow_changes=True` the changes are logged in one line and the run resumes.
    """
    workdir = pathlib.Path(workdir)
    if not (workdir / "config.json").is_file() or not has_checkpoint(workdir):
        return
    changes = config_changes(config_lib.load_run(workdir), config)
    if not changes:
        return
    if config.get("allow_changes", False):
        log.warning("%s: resuming with a different config (allow_changes=True): %s", workdir,
                    format_changes(changes))
        return
    raise ConfigDriftError(f"{workdir} was trained with a different config: {format_changes(changes)}; pass "
                           "--config.allow_changes=True to resume anyway")


def has_checkpoint(workdir: pathlib.Path) -> bool:
    """Whether `W/checkpoints` holds a finished step (Orbax renames `N.orbax-checkpoint-tmp-*` to `N` when done)."""
    directory = workdir / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() and p.is_dir() for p in directory.iterdir())


_ABSENT = object()


def config_changes(saved: ml_collections.ConfigDict | Mapping, new: ml_collections.ConfigDict | Mapping,
                   free: tuple[str, ...] = FREE_KEYS) -> list[tuple[str, Any, Any]]:
    """`(key, saved value, new value)` for each leaf that differs outside `free`, sorted by key.

    Both sides go through JSON first (as `config.json` does), so a tuple equals the list it was saved as; a key
    on one side only is paired with `_ABSENT`.
    """
    old_leaves, new_leaves = _flat(_as_json(saved)), _flat(_as_json(new))
    changes = []
    for key in sorted(old_leaves.keys() | new_leaves.keys()):
        old, value = old_leaves.get(key, _ABSENT), new_leaves.get(key, _ABSENT)
        if old != value and not any(fnmatch.fnmatchcase(key, pattern) for pattern in free):
            changes.append((key, old, value))
    return changes


def format_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """`a.b OLD → NEW, …` on one line (values as Python literals, as `--config.a.b=` takes them)."""
    return ", ".join(f"{key} {_format(old)} → {_format(new)}" for key, old, new in changes)


def _format(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def _as_json(config: ml_collections.ConfigDict | Mapping) -> dict:
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config_lib.to_json(config))
    return json.loads(json.dumps(config, default=str))


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys; an empty group is a leaf `{}` so that filling it later shows up key by key."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_error(e: ValueError) -> WorkdirError | None:
    """`e` as a one-line `WorkdirError` if the loop's resume raised it as a user error, else None.

    Restoring a checkpoint into a model it does not fit (`checkpoint.py`) and the loop's own checks of a resume
    or `init_from` (`loop._initial_state`) raise ValueErrors that name the problem; any other ValueError is a
    bug and keeps its traceback. Known by where it was raised, not by its wording.
    """
    if isinstance(e, config_lib.ConfigError) or e.__traceback__ is None:
        return None
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    module, function = tb.tb_frame.f_globals.get("__name__"), tb.tb_frame.f_code.co_name
    if (module, function) not in RESUME_ERROR_SITES and (module, "*") not in RESUME_ERROR_SITES:
        return None
    return WorkdirError(" ".join(str(e).split()))


# (module, function or '*') whose own `raise ValueError(...)` statements are a resume's user errors (`resume_error`):
# every check in checkpoint.py (a checkpoint that does not fit the model, an unknown `which`) and the loop's.
RESUME_ERROR_SITES = {("cxr_jax.checkpoint", "*"), ("cxr_jax.train.loop", "_initial_state")}
