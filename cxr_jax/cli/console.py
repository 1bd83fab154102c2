"""What `cxr-jax` prints besides its results: status lines, the files a command wrote, quiet libraries.

Results (JSON, per-image tables) go to stdout; so do status lines, except where a command's stdout is JSON to be
piped on (`evaluate`, `bench`, `compare`, `data inspect`): there they go to stderr. Nothing here imports JAX.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
import warnings

# Loggers whose start-up notices read like faults to a user (Orbax logs through absl: "CheckpointManagerOptions.
# read_only=True, setting save_interval_steps=0", "Given directory is read only=…"); shown with --verbose.
QUIET_LOGGERS = ("absl", "orbax", "tensorflow", "tensorboardX")


def quiet_libraries(verbose: bool) -> None:
    """Hides the libraries' warnings and TensorFlow's C++ log unless `verbose`; cxr_jax's own warnings stay."""
    from absl import logging as absl_logging  # The absl logger is absl's own class only once absl made it.

    del absl_logging
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    if verbose:
        import cxr_jax

        sys.unraisablehook = sys.__unraisablehook__

        if cxr_jax.TF_LOG_LEVEL_DEFAULTED:  # The user did not choose a level: show TensorFlow's warnings too.
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:  # Third-party deprecation notices are for their callers' developers.
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(?!cxr_jax)")
        # Orbax reading a damaged checkpoint (which the loop then moves aside and reports in one line) leaves
        # failed read coroutines behind; Python would print their tracebacks whenever they are collected.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        sys.unraisablehook = _unraisable_to_debug_log


def _unraisable_to_debug_log(unraisable) -> None:
    """An exception Python could not raise (e.g. in a collected coroutine), logged at debug level only."""
    logging.getLogger("cxr_jax").debug("ignored in %r: %r", unraisable.object, unraisable.exc_value)


def status(line: str, *, err: bool = False) -> None:
    """One status line, flushed at once (to stderr with `err`, for commands whose stdout is JSON)."""
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def duration(seconds: float) -> str:
    """`4.2 s`, `3 min 07 s`, `2 h 05 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Written:
    """The files a command creates or changes under some paths: made before the command, `report` after.

    Each path is a directory (searched recursively) or a file; a file counts as written when it is new or its
    size or modification time changed.
    """

    MAX_LISTED = 12

    def __init__(self, *paths: str | pathlib.Path):
        self.paths = [pathlib.Path(p) for p in paths]
        self._before = self._stamps()

    def _stamps(self) -> dict[pathlib.Path, tuple[int, int]]:
        stamps = {}
        for path in self.paths:
            files = path.rglob("*") if path.is_dir() else [path]
            for file in files:
                try:
                    stat = file.stat()
                except OSError:
                    continue
                if file.is_file():
                    stamps[file] = (stat.st_mtime_ns, stat.st_size)
        return stamps

    def files(self) -> list[pathlib.Path]:
        """The files written since construction, sorted."""
        return sorted(f for f, stamp in self._stamps().items() if self._before.get(f) != stamp)

    def report(self, what: str = "", *, err: bool = False) -> list[pathlib.Path]:
        """Prints `wrote N files in DIR (what):` and their names (at most `MAX_LISTED`); returns the files."""
        files = self.files()
        if not files:
            status(f"wrote no files{f' ({what})' if what else ''}", err=err)
            return files
        base = pathlib.Path(os.path.commonpath([f.parent for f in files]))
        note = f" ({what})" if what else ""
        if len(files) == 1:
            status(f"wrote {files[0]}{note}", err=err)
            return files
        status(f"wrote {len(files)} files in {base}{note}:", err=err)
        shown = files if len(files) <= self.MAX_LISTED else files[:self.MAX_LISTED - 1]
        for file in shown:
            status(f"  {file.relative_to(base)}", err=err)
        if len(shown) < len(files):
            status(f"  … and {len(files) - len(shown)} more", err=err)
        return files
