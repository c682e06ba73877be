"""Multi-process (DDP) training through HF Accelerate.

``mmagent train CONFIG -o RUN --num-processes N`` re-launches itself as::

    accelerate launch --multi_gpu --num_processes N --main_process_port 0 -m mmagent train CONFIG -o RUN

(``--multi_gpu`` is Accelerate's name for its torchrun launcher: N local processes). On a machine
without GPUs the processes run DDP on the CPU with the gloo backend: ``ACCELERATE_USE_CPU=true`` is
set for them (``accelerate launch --cpu`` would start a single process), and the trainer also
switches to the CPU by itself when it finds ``WORLD_SIZE > 1`` and no accelerator, so a hand-written
``accelerate launch --multi_gpu --num_processes 2 -m mmagent train ...`` works on a CPU box too.

Inside the processes, :func:`mmagent.training.trainer.train` shards the training batches across
processes (each sees different rows, in an order fixed by ``(seed, epoch)`` so ``--resume`` replays
it), every process evaluates the full validation set (so all take the same early-stopping decision),
and only the main process writes metrics, checkpoints, the model and the report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any


def strip_num_processes(argv: list[str]) -> list[str]:
    """``argv`` without ``--num-processes N`` / ``--num-processes=N`` (the child processes must not
    re-launch again)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--num-processes":
            skip = True
            continue
        if arg.startswith("--num-processes="):
            continue
        out.append(arg)
    return out


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def launch_command(num_processes: int, argv: list[str], cpu: bool | None = None) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line and environment that run ``python -m mmagent ARGV``
    in ``num_processes`` processes. ``cpu``: force gloo on the CPU (default: when there is no GPU)."""
    if num_processes < 2:
        raise ValueError(f"--num-processes must be >= 2 to launch several processes, got {num_processes}")
    cpu = (not has_gpu()) if cpu is None else cpu
    if not cpu:
        import torch

        if torch.cuda.device_count() < num_processes:
            raise ValueError(f"--num-processes {num_processes}: only {torch.cuda.device_count()} GPU(s) visible (set train.cpu: true for CPU processes)")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # Accelerate's torchrun launcher; with ACCELERATE_USE_CPU it sets up gloo DDP
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        "0",  # a free port: several launches on one machine do not collide
        "--mixed_precision",
        "no",  # the trainer passes its own choice to Accelerator()
        "--dynamo_backend",
        "no",
        "-m",
        "mmagent",
        *strip_num_processes(argv),
    ]
    env = dict(os.environ)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
        # Each process gets an equal share of the cores unless the user chose.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    return cmd, env


def relaunch(num_processes: int, argv: list[str]) -> int:
    """Run ``mmagent ARGV`` (minus ``--num-processes``) in ``num_processes`` DDP processes through
    ``accelerate launch``; return its exit status."""
    cmd, env = launch_command(num_processes, argv)
    try:
        return subprocess.run(cmd, env=env, check=False).returncode
    except KeyboardInterrupt:  # the launcher forwards the signal to its children
        return 130


def any_process(accelerator: Any, flag: bool) -> bool:
    """True when ``flag`` is True in any process (a collective: every process must call it). Used
    for decisions taken from local state, e.g. a time budget: all processes must leave the training
    loop at the same step, or DDP waits forever for the missing ones."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    votes = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum")
    return bool(votes.item() > 0)


def fresh_accelerate_state() -> None:
    """Accelerate keeps one process-wide state and keeps the first ``Accelerator``'s mixed precision
    and device; runs in one process (tuning trials, tests, notebooks) may differ there, so each
    single-process run starts from a clean state."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return  # inside a distributed launch the state is the launch's
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except (ImportError, AttributeError):  # another accelerate version: keep its state
        pass


def multiprocess_without_accelerator() -> bool:
    """Launched as several processes (torchrun / ``accelerate launch --multi_gpu``) on a machine
    without GPUs: Accelerate only sets up gloo DDP when told to use the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    from accelerate.utils import is_mlu_available, is_npu_available, is_xpu_available

    return not (torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available())
