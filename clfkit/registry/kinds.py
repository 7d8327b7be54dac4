"""The kinds of component and what clfkit passes each: the calling contracts.

Adding a kind is one ``define_kind`` line below. The table is filled once, when this module
is imported, and read everywhere else (the registry's tables, recipe checks, the README).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from clfkit.errors import RegistryError

BUILTIN = "clfkit"  # the provider of the built-in components


@dataclass(frozen=True)
class Kind:
    """A kind of component and its calling contract.

    required: arguments the factory must accept; clfkit always passes them.
    context:  arguments clfkit passes when the factory's signature accepts them.
    refs:     arguments naming a component of another kind (``{"norm": "norm"}``); clfkit
              validates them as component specs and passes a factory.
    """

    name: str
    doc: str
    required: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    refs: dict[str, str] = field(default_factory=dict)

    @property
    def supplied(self) -> tuple[str, ...]:
        """Every argument clfkit supplies itself (never written in recipes)."""
        return self.required + self.context


# Filled by the define_kind calls at the end of this module, when it is imported, and only
# read afterwards (each Registry makes its tables from it): a constant built in steps.
KINDS: dict[str, Kind] = {}


def define_kind(name: str, doc: str, required: tuple[str, ...] = (), context: tuple[str, ...] = (),
                refs: dict[str, str] | None = None) -> Kind:
    """Add a kind of component. Adding one is one line; see the calls below."""
    KINDS[name] = Kind(name, doc, tuple(required), tuple(context), dict(refs or {}))
    return KINDS[name]


def check_kind(kind: str) -> Kind:
    """The kind called ``kind``; an unknown one is a RegistryError listing the kinds."""
    if kind not in KINDS:
        raise RegistryError(f"unknown kind {kind!r}; kinds are: {', '.join(KINDS)}")
    return KINDS[kind]


# The hooks a `regularizer` may define and the arguments the trainer calls each with. The kind
# holds training-step hooks (grad_clip, no_decay_norm_bias) as well as regularizers proper
# (mixup, label smoothing): the recipe field keeps its name, the doc below says what it holds.
HOOK_ARGS = {"on_model": ("model",), "on_param_groups": ("groups",),
             "on_batch": ("x", "y", "num_classes"), "on_loss": ("loss", "model"),
             "before_step": ("model", "optimizer")}
REGULARIZER_HOOKS = tuple(HOOK_ARGS)

define_kind("model", "builds an nn.Module mapping (N, C, H, W) float images to (N, num_classes) logits",
            required=("num_classes",), context=("in_chans", "image_size"),
            refs={"norm": "norm", "activation": "activation"})
define_kind("norm", "builds a normalization layer for `num_features` channels of `dim`-d features (1 or 2)",
            required=("num_features",), context=("dim",))
define_kind("activation", "builds an activation nn.Module", context=("inplace",))
define_kind("regularizer", "returns a regularizer or a training-step hook: an object with any of the hooks "
                           + ", ".join(REGULARIZER_HOOKS) + ", which the trainer calls at those points of "
                           "every step (mixup and label smoothing regularize; grad_clip and no_decay_norm_bias "
                           "are step hooks)")
define_kind("augmentation", "returns a per-image transform (albumentations-style) or a BatchTransform")
define_kind("loss", "builds a loss nn.Module taking (logits, targets); targets are indices or (N, C) soft labels; "
                    "`class_counts` (train images per class) and `class_names` are passed when accepted",
            required=("num_classes",), context=("class_counts", "class_names"))
define_kind("optimizer", "builds a torch.optim.Optimizer over `params` (parameter groups); `device` is 'cuda' or 'cpu'",
            required=("params",), context=("device",))
define_kind("schedule", "builds a per-step LR multiplier function f(step) -> float",
            context=("total_steps", "steps_per_epoch", "epochs"))
define_kind("dataset", "returns a clfkit.data.Splits (uint8 images, labels, class names)",
            context=("image_size", "channels", "resize", "seed", "on_error"))
