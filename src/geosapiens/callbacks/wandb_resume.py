"""A W&B logger whose run survives a SLURM requeue or a manual resubmission.

Lightning's ``WandbLogger`` draws a fresh run id per process start, so a requeued job opens a second W&B run
(pytorch-lightning#13524); the ``geosapiens`` command keeps checkpoints in
``<default_root_dir>/checkpoints`` whatever the id (:mod:`geosapiens.cli.runs`), and a stable id keeps one W&B
run. YAML configs cannot read environment variables (jsonargparse does not expand them), so the id is taken
from the environment here, when the config leaves it unset.

Every training also records its W&B id in its checkpoint folder (:data:`RUN_ID_FILE`, :func:`bind_run_id`,
called by the ``geosapiens`` command for any ``WandbLogger``): ``fit --ckpt_path last`` continues that run,
whatever id the environment would give, and a fresh ``fit`` records a new one.

Only global rank 0 ever creates the run: ``WandbLogger.experiment`` is ``@rank_zero_experiment`` and every
other rank gets a no-op experiment, so the id being set on all ranks is harmless.
"""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = [
    "RUN_ID_FILE",
    "RUN_ID_VARIABLES",
    "ResumableWandbLogger",
    "bind_run_id",
    "run_id_from_env",
    "wandb_online_possible",
]

RUN_ID_FILE = "wandb_run_id"  # in the run's checkpoint folder: one line, the W&B run id

# Looked up in this order: an explicit project id, a SLURM array task (unique per task, kept on requeue),
# then the SLURM job id (kept on requeue).
RUN_ID_VARIABLES = ("GEOSAPIENS_RUN_ID", "SLURM_ARRAY_JOB_ID+SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID")


def run_id_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The first of :data:`RUN_ID_VARIABLES` present (array jobs: ``<array job>_<task>``), else None."""
    env = os.environ if environ is None else environ
    for name in RUN_ID_VARIABLES:
        parts = [env.get(part) for part in name.split("+")]
        if all(parts):
            return "_".join(parts)  # type: ignore[arg-type]
    return None


def bind_run_id(logger: WandbLogger, folder: str | Path, resume: bool, write: bool = True) -> str:
    """Set the id of ``logger``'s (not yet started) run: on ``resume`` the one recorded in ``folder``, else
    the logger's own (config or environment) or a new one; ``write`` records it in ``folder``.

    Returns the id. A logger whose run has already started keeps it.
    """
    from wandb.sdk.lib.runid import generate_id

    if logger._experiment is not None:
        return logger.version
    path = Path(folder) / RUN_ID_FILE
    recorded = path.read_text().strip() if path.is_file() else None
    if resume and recorded:
        if logger._id and logger._id != recorded:
            rank_zero_warn(f"W&B: resuming run {recorded} recorded in {path}, not {logger._id}")
        run_id = recorded
    else:
        run_id = logger._id or generate_id()
    logger._id = logger._wandb_init["id"] = run_id
    if write and run_id != recorded:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    rank_zero_info(f"W&B run {run_id} ({'resumed' if resume and recorded else 'new'}), recorded in {path}")
    return run_id


def wandb_online_possible(timeout: float = 2.0) -> bool:
    """Whether an online run can start: an API key (``WANDB_API_KEY`` or ``wandb login``'s ``~/.netrc``) and
    the W&B host reachable. Without it ``wandb.init`` fails at once (no key) or hangs (no route from a
    compute node)."""
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if not os.environ.get("WANDB_API_KEY"):
        try:
            if netrc.netrc().authenticators(host) is None:
                return False
        except (FileNotFoundError, netrc.NetrcParseError):
            return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


class ResumableWandbLogger(WandbLogger):
    """``WandbLogger`` with an id from the environment and automatic offline mode.

    Args:
        id: W&B run id; None takes it from :data:`RUN_ID_VARIABLES` (and, when none is set, W&B draws one).
        offline: True/False force the mode; None decides: offline when ``WANDB_MODE`` is unset and
            :func:`wandb_online_possible` says no (``WANDB_MODE=offline``/``disabled`` is honoured by W&B
            itself). Offline runs are synced later with ``wandb sync``; W&B cannot *resume* an offline
            run, so each requeued piece syncs as its own upload into the same id.
        **kwargs: :class:`~lightning.pytorch.loggers.WandbLogger` arguments (``project``, ``name``,
            ``save_dir``...). ``resume="allow"`` is WandbLogger's default: an existing id is continued.
    """

    def __init__(self, id: str | None = None, offline: bool | None = None, **kwargs: Any) -> None:  # noqa: A002
        id = id or run_id_from_env()  # noqa: A001
        if offline is None:
            offline = "WANDB_MODE" not in os.environ and not wandb_online_possible()
            if offline:
                rank_zero_info("ResumableWandbLogger: no W&B key or no route to W&B; logging offline")
        super().__init__(id=id, offline=offline, **kwargs)
