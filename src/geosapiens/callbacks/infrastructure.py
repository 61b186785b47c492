"""What every run gets from the CLI, whatever the task: the callbacks that make a run safe to stop and resume.

They are the CLI's, not a stage's (``geosapiens fit`` adds them to every task it trains, the pose stages as
well as :class:`~geosapiens.stages.PosePriorTask` and :class:`~geosapiens.stages.SmallCriticTask`); a stage's
``configure_callbacks`` returns only what belongs to its method (the EMA teacher, the loss schedule).
Checkpoints are written by :class:`~.checkpoint_io.AtomicCheckpointIO`, which the CLI also adds.
"""

from __future__ import annotations

import lightning.pytorch as L

from geosapiens.callbacks.guards import CheckpointOnSigterm, LastCheckpointAtEnd, SkipNonFiniteSteps
from geosapiens.callbacks.rng import RestoreRNG
from geosapiens.callbacks.teardown import DestroyProcessGroup
from geosapiens.data.robust import BadSampleReport


def infrastructure_callbacks() -> list[L.Callback]:
    """New instances of the run-safety callbacks: a resumable ``last.ckpt`` on SIGTERM and at the end of
    training, the global RNG states in checkpoints, the bad-sample report, non-finite steps skipped, a clean
    process-group shutdown. A config that names one of these classes replaces its default instance."""
    return [
        DestroyProcessGroup(),
        BadSampleReport(),
        CheckpointOnSigterm(),
        LastCheckpointAtEnd(),
        RestoreRNG(),
        SkipNonFiniteSteps(),
    ]
