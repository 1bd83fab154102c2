"""Start N local processes of one `cxr-jax` command as a multi-host job (CPU, gloo collectives).

Each process gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, which
`cxr_jax.parallel.initialize` passes to `jax.distributed.initialize`, and `--devices-per-process` CPU devices.

  python -m launch.multiprocess --num-processes 2 -- \
      cxr-jax train --config configs/classifier.py:smoke --workdir workdirs/mp
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Sequence


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: Sequence[str], *, num_processes: int, devices_per_process: int = 1,
           timeout: float | None = None) -> list[int]:
    """Runs `command` in `num_processes` processes; returns their exit codes (all are waited for)."""
    address = f"127.0.0.1:{free_port()}"
    procs = []
    for i in range(num_processes):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(num_processes),
                   JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
        procs.append(subprocess.Popen(list(command), env=env))
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return codes


def main(argv: Sequence[str] | None = None) -> int:
    """Parses flags; exits non-zero if any process failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    codes = launch(command, num_processes=args.num_processes, devices_per_process=args.devices_per_process)
    print(f"exit codes: {codes}", file=sys.stderr)
    return max(abs(c) for c in codes)


if __name__ == "__main__":
    sys.exit(main())
