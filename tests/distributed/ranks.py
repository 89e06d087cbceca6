"""Run a test body on several gloo ranks (CPU, Triton interpreter) with a hard time limit.

`run_ranks(body, world)` spawns `world` processes; each sets TRITON_INTERPRET=1 before anything
imports triton, joins a gloo group on a free local port (collectives time out after
COLLECTIVE_TIMEOUT_S, so a rank left waiting fails instead of hanging), runs
``body(rank, world, **kwargs)`` and leaves the group. An exception in any rank fails the test
with that rank's traceback; a run that outlives `timeout` is killed and fails the test.
"""
import datetime
import os
import socket
import time

import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, body, world, port, kwargs):
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        body(rank, world, **kwargs)
    finally:
        dist.destroy_process_group()


def run_ranks(body, world: int, timeout: float = 180.0, **kwargs) -> None:
    """Run body(rank, world, **kwargs) on `world` spawned gloo ranks; raise if any fails or time runs out."""
    ctx = mp.start_processes(_entry, args=(body, world, free_port(), kwargs), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world}-rank run of {body.__name__} did not finish in {timeout:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
