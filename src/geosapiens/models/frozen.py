"""Frozen networks stay out of checkpoints: the one mechanism for every module that holds them.

A geometric critic, a pose prior, a geometry or a distillation teacher is read from its own file and never
trains. In a training checkpoint it would only take room, pin a copy that may differ from its file, and
stop a stage built without it from loading the checkpoint. :func:`keep_frozen` names such children of a
module; then

- :func:`drop_frozen_keys` takes their keys out of a state dict: a stage does it to the checkpoint Lightning
  writes (:meth:`~geosapiens.stages.base.PoseStage.on_save_checkpoint`), after the strategy gathered the
  state dict, because FSDP requires every parameter of a wrapped module in that module's own state dict;
- a strict ``load_state_dict`` goes without them, and skips their keys where an older checkpoint has them;
- with ``from_state_dict=True`` (a critic: it is used on its own, and its whole self is frozen) the module's
  ``state_dict`` leaves them out itself.

The children stay ordinary submodules: they move with the module's device and dtype and show in its summary.
"""

from __future__ import annotations

from torch import nn

__all__ = ["drop_frozen_keys", "frozen_children", "keep_frozen"]

EVERY_CHILD = "*"


def keep_frozen(module: nn.Module, *names: str, from_state_dict: bool = False) -> None:
    """Name the frozen children ``names`` of ``module`` (every child when none is named).

    A name may be set later or to None (``stage.teacher = None`` until fitting reads the teacher).
    """
    frozen = module.__dict__.get("_frozen_children")
    if frozen is None:
        frozen = module.__dict__["_frozen_children"] = set()
        module.register_load_state_dict_pre_hook(_skip_frozen)
        module.register_load_state_dict_post_hook(_forgive_frozen)
    if from_state_dict and not module.__dict__.get("_frozen_out_of_state_dict"):
        module.__dict__["_frozen_out_of_state_dict"] = True
        module.register_state_dict_post_hook(_drop_frozen)
    frozen.update(names or (EVERY_CHILD,))


def frozen_children(module: nn.Module) -> list[str]:
    """The names :func:`keep_frozen` gave for ``module``."""
    frozen = module.__dict__.get("_frozen_children", set())
    return list(module._modules) if EVERY_CHILD in frozen else sorted(frozen)


def drop_frozen_keys(module: nn.Module, state_dict: dict, prefix: str = "") -> None:
    """Remove the keys of ``module``'s frozen children from ``state_dict`` (``module``'s, keys under
    ``prefix``), in place."""
    prefixes = _prefixes(module, prefix)
    for key in [k for k in state_dict if k.startswith(prefixes)]:
        del state_dict[key]


def _prefixes(module: nn.Module, prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{name}." for name in frozen_children(module))


def _drop_frozen(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    drop_frozen_keys(module, state_dict, prefix)


def _skip_frozen(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load pre-hook: frozen children keep their own weights; remember their prefix for the post-hook."""
    module.__dict__["_frozen_load_prefix"] = prefix
    drop_frozen_keys(module, state_dict, prefix)


def _forgive_frozen(module: nn.Module, incompatible) -> None:
    """Load post-hook: a frozen child's weights are missing from every checkpoint by design."""
    prefixes = _prefixes(module, module.__dict__.pop("_frozen_load_prefix", ""))
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(prefixes)]
