"""What joins the ViT to the LLM, as data: ConnectorSpec and its valid values (the modules are in connectors.py).

Torch-free on purpose: ExperimentConfig validates its connector fields with it, and a config (the grid's
expansion, a notebook's first cell) should not have to import torch and transformers to say it is valid.
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("qformer", "pool", "projector", "bottleneck")
# per connector: its variants, the first is the default
VARIANTS: dict[str, tuple[str, ...]] = {
    "qformer": ("qformer",), "pool": ("mlp",), "projector": ("mlp", "linear"), "bottleneck": ("linear", "gelu"),
}
INITS = ("pretrained", "scratch")


@dataclass(frozen=True)
class ConnectorSpec:
    """What joins the ViT to the LLM. tokens None: the connector's default budget (see connectors.resolve)."""

    kind: str = "qformer"
    tokens: int | None = None
    variant: str | None = None
    init: str | None = None  # qformer: 'pretrained' (default) | 'scratch'; the others always start from scratch

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"connector={self.kind!r} is not valid; choose one of {', '.join(KINDS)}")
        if self.variant is not None and self.variant not in VARIANTS[self.kind]:
            raise ValueError(f"connector_variant={self.variant!r} does not exist for connector {self.kind!r}; "
                             f"choose one of {', '.join(VARIANTS[self.kind])}")
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"connector_init={self.init!r} is not valid; choose one of {', '.join(INITS)}")
        if self.init == "pretrained" and self.kind != "qformer":
            raise ValueError(f"connector_init='pretrained': only the Q-Former has pretrained weights; connector "
                             f"{self.kind!r} starts from scratch (set connector_init=None or 'scratch')")
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"connector_tokens must be >= 1 (or None for the connector's default), got {self.tokens}")

    @property
    def is_default(self) -> bool:
        """The base model as it is: the pretrained Q-Former with its own query count (the paper's runs)."""
        return self.kind == "qformer" and self.tokens is None and self.init in (None, "pretrained")

    @property
    def label(self) -> str:
        """Short name for tables and run names: 'qformer16', 'pool4', 'projector64-linear', 'bottleneck4-gelu'."""
        variant = self.variant or VARIANTS[self.kind][0]
        parts = [f"{self.kind}{self.tokens if self.tokens is not None else ''}"]
        if variant != VARIANTS[self.kind][0]:
            parts.append(variant)
        if self.kind == "qformer" and self.init == "scratch":
            parts.append("scratch")
        return "-".join(parts)


def spec_of(config) -> ConnectorSpec:
    """The ConnectorSpec of an ExperimentConfig."""
    return ConnectorSpec(config.connector, config.connector_tokens, config.connector_variant, config.connector_init)
