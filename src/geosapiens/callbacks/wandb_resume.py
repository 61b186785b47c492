"""A W&B logger whose run survives a SLURM requeue or a manual resubmission.

Lightning's ``WandbLogger`` draws a fresh run id per process start, so a requeued job opens a second W&B run
(pytorch-lightning#13524) and, since the logger's version names the checkpoint folder
(``save_dir/project/<id>/checkpoints``), ``--ckpt_path last`` looks in an empty folder. A stable id fixes
both. YAML configs cannot read environment variables (jsonargparse does not expand them), so the id is taken
from the environment here, when the config leaves it unset.

Only global rank 0 ever creates the run: ``WandbLogger.experiment`` is ``@rank_zero_experiment`` and every
other rank gets a no-op experiment, so the id being set on all ranks is harmless.
"""

from __future__ import annotations

import netrc
import os
import socket
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["RUN_ID_VARIABLES", "ResumableWandbLogger", "run_id_from_env", "wandb_online_possible"]

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
