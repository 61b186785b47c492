"""Frozen networks stay out of checkpoints: the one mechanism for every module that holds them.

A geometric critic, a pose prior, a geometry or a distillation teacher is read from its own file and never
trains. In a training checkpoint it would only take room, pin a copy that may differ from its file, and
stop a stage built without it from loading the checkpoint. :func:`keep_out_of_state_dict` makes children of
a module absent from its ``state_dict`` and lets a strict ``load_state_dict`` go without them (their keys in
an older checkpoint are skipped). The children stay ordinary submodules: they move with the module's device
and dtype and show in its summary.
"""

from __future__ import annotations

from torch import nn

__all__ = ["frozen_children", "keep_out_of_state_dict"]

EVERY_CHILD = "*"


def keep_out_of_state_dict(module: nn.Module, *names: str) -> None:
    """Keep the children ``names`` of ``module`` (every child when none is named) out of its state dict.

    A name may be set later or to None (``module.teacher = None`` until fitting reads the teacher).
    """
    excluded = module.__dict__.get("_frozen_children")
    if excluded is None:
        excluded = module.__dict__["_frozen_children"] = set()
        module.register_state_dict_post_hook(_drop_frozen)
        module.register_load_state_dict_pre_hook(_skip_frozen)
        module.register_load_state_dict_post_hook(_forgive_frozen)
    excluded.update(names or (EVERY_CHILD,))


def frozen_children(module: nn.Module) -> list[str]:
    """The names :func:`keep_out_of_state_dict` keeps out of ``module``'s state dict."""
    excluded = module.__dict__.get("_frozen_children", set())
    return list(module._modules) if EVERY_CHILD in excluded else sorted(excluded)


def _prefixes(module: nn.Module, prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{name}." for name in frozen_children(module))


def _drop_frozen(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(_prefixes(module, prefix))]:
        del state_dict[key]


def _skip_frozen(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load pre-hook: frozen children keep their own weights; remember their prefix for the post-hook."""
    module.__dict__["_frozen_load_prefix"] = prefix
    for key in [k for k in state_dict if k.startswith(_prefixes(module, prefix))]:
        del state_dict[key]


def _forgive_frozen(module: nn.Module, incompatible) -> None:
    """Load post-hook: a frozen child's weights are missing from every checkpoint by design."""
    prefixes = _prefixes(module, module.__dict__.pop("_frozen_load_prefix", ""))
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(prefixes)]
