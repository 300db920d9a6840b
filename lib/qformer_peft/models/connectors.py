"""Connectors: what joins the frozen vision encoder to the LLM. Same ViT, same LLM; swap the bridge.

  qformer     InstructBLIP's Q-Former (the model's own `qformer`, `query_tokens`, `language_projection`), with
              a configurable query budget; 'pretrained' keeps the base model's weights, 'scratch' re-draws them.
  pool        DeCo (arXiv 2405.20985): patch grid (CLS dropped) -> AdaptiveAvgPool2d to k x k -> 2-layer MLP with GELU
              to the LLM width. k*k tokens; token compression without semantic abstraction.
  projector   LLaVA: a linear layer or a 2-layer GELU MLP on ALL patch tokens: no compression, the upper bound.
  bottleneck  Bottleneck Adapter (arXiv 2407.17813) / LaVIN: the [CLS] token after every k-th ViT layer -> a linear,
              group-wise, dense-to-sparse projection (dense down-projection, block-diagonal up-projection with
              2 groups, no non-linearity) into the LLM width, plus adapters INSIDE the LLM: before every
              self-attention and every FFN, x + up(down(x)) with down to 8 dims, up grouped (2 groups), no
              non-linearity, up-projection zero at init (LaVIN's RepAdapter without its modality router).

Everything a connector adds lives on the transformers model, so `named_parameters`, `.to(device)`, the engine's
trainable-state snapshots and `trainable.safetensors` see it without special cases:
  model.connector                                    pool / projector / bottleneck visual side
  language_model...<SelfAttention|DenseReluDense|self_attn|mlp>.bottleneck_adapter    the LLM adapters,
      applied to the module's (already normed) input by a forward pre-hook, so module names stay the same
      and LLM LoRA still finds its targets.
`models.inputs` dispatches on `model.connector`: image_features, the image placeholder count, and what the ViT
outputs (the bottleneck's CLS tokens per layer instead of the last hidden state). The trainable post-ViT
LayerNorm runs before every connector, as it does before the Q-Former.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# the spec is torch-free, so that validating a config does not import torch (re-exported here)
from .connector_spec import INITS, KINDS, VARIANTS, ConnectorSpec, spec_of  # noqa: F401

ADAPTER_DIM = 8          # LaVIN's adapter width
ADAPTER_GROUPS = 2       # grouped (sparse) up-projection, in the LLM adapters and the visual projection
VISUAL_HIDDEN_RATIO = 8  # visual projection width = vision width / 8 (LaVIN: 1024 -> 128 -> LLM)
BOTTLENECK_CLS_TOKENS = 6  # LaVIN: the CLS token of every 4th of 24 layers
ADAPTER_ATTR = "bottleneck_adapter"
QUERY_TOKEN_STD = 0.02


# --- the building blocks ---------------------------------------------------------------------------

class GroupedLinear(nn.Module):
    """A block-diagonal linear map: the input split into `groups` parts, each mapped by its own matrix
    (a 1x1 convolution with groups, as LaVIN writes it). x [..., in] -> [..., out]."""

    def __init__(self, in_features: int, out_features: int, groups: int, *, zero: bool = False):
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"GroupedLinear: {in_features} -> {out_features} does not split into {groups} groups")
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups, in_features // groups, out_features // groups))
        self.bias = nn.Parameter(torch.zeros(out_features))
        if zero:
            nn.init.zeros_(self.weight)
        else:  # nn.Linear's default, per group (fan-in of one group)
            bound = 1 / math.sqrt(in_features // groups)
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.unflatten(-1, (self.groups, -1))  # [..., G, in/G]
        out = torch.einsum("...gi,gio->...go", parts, self.weight)  # [..., G, out/G]
        return out.flatten(-2) + self.bias


def _mlp(vision_hidden: int, llm_hidden: int) -> nn.Sequential:
    """LLaVA-1.5's mlp2x_gelu (DeCo's projector too): Linear -> GELU -> Linear."""
    return nn.Sequential(nn.Linear(vision_hidden, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))


class PoolConnector(nn.Module):
    """DeCo: [B, 1 + G*G, Dv] (post-LN ViT tokens) -> drop CLS -> AdaptiveAvgPool2d(k) -> MLP -> [B, k*k, Dl]."""

    vision_layers = None  # reads the ViT's last hidden state

    def __init__(self, vision_hidden: int, llm_hidden: int, grid: int, side: int):
        super().__init__()
        self.grid, self.side = grid, side
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.mlp = _mlp(vision_hidden, llm_hidden)

    @property
    def num_tokens(self) -> int:
        return self.side * self.side

    def pooled(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """[B, 1 + G*G, Dv] -> [B, k*k, Dv], row-major over the pooled grid."""
        patches = image_embeds[:, 1:]  # [B, G*G, Dv], row-major patch order (ViT's flatten)
        grid = patches.transpose(1, 2).unflatten(-1, (self.grid, self.grid))  # [B, Dv, G, G]
        return self.pool(grid).flatten(2).transpose(1, 2)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pooled(image_embeds))


class ProjectorConnector(nn.Module):
    """LLaVA: every patch token (CLS dropped) through a linear layer or a 2-layer GELU MLP: [B, G*G, Dl]."""

    vision_layers = None

    def __init__(self, vision_hidden: int, llm_hidden: int, patches: int, variant: str):
        super().__init__()
        self.patches = patches
        self.proj = nn.Linear(vision_hidden, llm_hidden) if variant == "linear" else _mlp(vision_hidden, llm_hidden)

    @property
    def num_tokens(self) -> int:
        return self.patches

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(image_embeds[:, 1:])


class BottleneckConnector(nn.Module):
    """The Bottleneck Adapter's visual side: CLS tokens of chosen ViT layers [B, n, Dv] (post-LN) -> dense
    down-projection -> (GELU in the 'gelu' variant only) -> grouped up-projection -> [B, n, Dl]. Affine in the
    'linear' variant: no non-linearity anywhere between the ViT and the LLM."""

    def __init__(self, vision_hidden: int, llm_hidden: int, layers: tuple[int, ...], variant: str):
        super().__init__()
        hidden = max(ADAPTER_GROUPS, vision_hidden // VISUAL_HIDDEN_RATIO // ADAPTER_GROUPS * ADAPTER_GROUPS)
        self.vision_layers = tuple(layers)
        self.down = nn.Linear(vision_hidden, hidden)  # dense
        self.act = nn.GELU() if variant == "gelu" else nn.Identity()
        self.up = GroupedLinear(hidden, llm_hidden, ADAPTER_GROUPS)  # sparse

    @property
    def num_tokens(self) -> int:
        return len(self.vision_layers)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(image_embeds)))


class LLMAdapter(nn.Module):
    """LaVIN's RepAdapter as the BA paper uses it: x + up(down(x)), down dense to 8 dims, up grouped (2 groups),
    no non-linearity; up starts at zero, so an adapted LLM starts as the frozen one."""

    def __init__(self, width: int, dim: int = ADAPTER_DIM, groups: int = ADAPTER_GROUPS):
        super().__init__()
        self.down = nn.Linear(width, dim)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.up = GroupedLinear(dim, width, groups, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


def _adapter_pre_hook(module: nn.Module, args: tuple, kwargs: dict):
    """Run the module's adapter on its input hidden states (positional in T5, `hidden_states=` in LLaMA)."""
    adapter = getattr(module, ADAPTER_ATTR)
    if args:
        return (adapter(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": adapter(kwargs["hidden_states"])}


def adapter_sites(model) -> list[str]:
    """Names of the LLM modules whose input gets an adapter: every self-attention and FFN (T5: encoder and
    decoder; the cross-attention is left alone), every LLaMA layer's self_attn and mlp."""
    llama = model.config.use_decoder_only_language_model
    suffixes = (".self_attn", ".mlp") if llama else (".SelfAttention", ".DenseReluDense")
    return [n for n, _ in model.language_model.named_modules() if n.endswith(suffixes)]


# --- attaching ---------------------------------------------------------------------------------------

def grid_side(model) -> int:
    vc = model.config.vision_config
    return vc.image_size // vc.patch_size


def resolve(model, spec: ConnectorSpec) -> dict:
    """The concrete shape of `spec` on `model`: tokens, variant and (bottleneck) ViT layers. Defaults:
    qformer and pool take the Q-Former's query count (pool: the largest square not above it), projector all
    patches, bottleneck about 6 CLS tokens spread evenly over the layers (LaVIN's 6 of 24; every layer on a
    4-layer ViT)."""
    variant = spec.variant or VARIANTS[spec.kind][0]
    grid, layers = grid_side(model), model.config.vision_config.num_hidden_layers
    queries = model.config.num_query_tokens
    tokens = spec.tokens
    out: dict = {"kind": spec.kind, "variant": variant, "grid": grid, "vision_layers": None}
    if spec.kind == "qformer":
        out["tokens"] = tokens or queries
    elif spec.kind == "pool":
        tokens = tokens or math.isqrt(queries) ** 2
        side = math.isqrt(tokens)
        if side * side != tokens or side > grid:
            raise ValueError(f"connector 'pool': {tokens} tokens is not k*k with k <= {grid} (the {grid}x{grid} patch "
                             f"grid); choose one of {', '.join(str(k * k) for k in range(1, grid + 1))}")
        out["tokens"] = tokens
    elif spec.kind == "projector":
        if tokens is not None and tokens != grid * grid:
            raise ValueError(f"connector 'projector' feeds every patch: {grid * grid} tokens, not {tokens} "
                             "(set connector_tokens=None)")
        out["tokens"] = grid * grid
    else:
        n = tokens or min(layers, BOTTLENECK_CLS_TOKENS)
        if n > layers:
            raise ValueError(f"connector 'bottleneck': {n} CLS tokens but the ViT has {layers} layers")
        every = layers // n
        out["tokens"] = n
        out["vision_layers"] = tuple(every * (i + 1) for i in range(n))  # 1-based: the output of layer l
    return out


def attach(model, spec: ConnectorSpec, *, seed: int) -> dict:
    """Give `model` (InstructBlipForConditionalGeneration, unwrapped, no adapters yet) the connector `spec`,
    freshly initialised from `seed` (torch's global RNG is left as it was). Returns `resolve`'s description.

    qformer: budget != the model's query count, or init 'scratch', re-draws Q-Former, queries and projection
    (a budget other than the pretrained one cannot keep pretrained queries). pool / projector / bottleneck:
    model.connector (+ the LLM adapters for bottleneck); the Q-Former stays in the model, unused and frozen.
    """
    if getattr(model, "connector", None) is not None or any(ADAPTER_ATTR in n for n, _ in model.named_modules()):
        raise ValueError("attach: the model already has a connector; start from a fresh base model")
    info = resolve(model, spec)
    if spec.is_default:
        return info
    device, dtype = model.query_tokens.device, model.query_tokens.dtype
    vision_hidden = model.config.vision_config.hidden_size
    llm_hidden = model.config.text_config.hidden_size
    # drawn on the CPU (or meta) whatever the model's device, so a seed gives the same weights everywhere
    with torch.random.fork_rng(devices=[]), torch.device("meta" if device.type == "meta" else "cpu"):
        torch.manual_seed(seed)
        if spec.kind == "qformer":
            _fresh_qformer(model, info["tokens"], scratch=spec.init == "scratch")
            return info
        if spec.kind == "pool":
            connector = PoolConnector(vision_hidden, llm_hidden, info["grid"], math.isqrt(info["tokens"]))
        elif spec.kind == "projector":
            connector = ProjectorConnector(vision_hidden, llm_hidden, info["tokens"], info["variant"])
        else:
            connector = BottleneckConnector(vision_hidden, llm_hidden, info["vision_layers"], info["variant"])
            for name in adapter_sites(model):
                site = model.language_model.get_submodule(name)
                site.add_module(ADAPTER_ATTR, LLMAdapter(llm_hidden).to(device=device, dtype=dtype))
                site.register_forward_pre_hook(_adapter_pre_hook, with_kwargs=True)
    model.connector = connector.to(device=device, dtype=dtype)
    return info


def _fresh_qformer(model, tokens: int, *, scratch: bool) -> None:
    """A Q-Former with `tokens` queries: from scratch (transformers' initialisation of the Q-Former, projection
    N(0, 0.02) with zero bias, queries N(0, 0.02) as BLIP-2), or the pretrained one when the budget is its own."""
    if not scratch:
        if tokens != model.config.num_query_tokens:
            raise ValueError(f"a pretrained Q-Former has {model.config.num_query_tokens} queries; a budget of {tokens} "
                             "starts from scratch: set connector_init='scratch'")
        return
    from transformers.models.instructblip.modeling_instructblip import InstructBlipQFormerModel

    fresh = InstructBlipQFormerModel(model.config.qformer_config)
    model.qformer.load_state_dict(fresh.state_dict())
    projection = model.language_projection
    with torch.no_grad():
        projection.weight.copy_(torch.randn(projection.weight.shape) * QUERY_TOKEN_STD)
        projection.bias.zero_()
    old = model.query_tokens
    queries = torch.randn(1, tokens, old.shape[-1]) * QUERY_TOKEN_STD
    model.query_tokens = nn.Parameter(queries.to(device=old.device, dtype=old.dtype), requires_grad=old.requires_grad)
    model.config.num_query_tokens = tokens  # transformers' own forward/generate read the budget here


# --- what the rest of the library asks ------------------------------------------------------------------

def connector_of(model):
    """The attached pool / projector / bottleneck module, or None (the Q-Former path)."""
    return getattr(model, "connector", None)


def image_token_count(model) -> int:
    """Image placeholders in the LLM input = tokens the connector feeds the LLM."""
    connector = connector_of(model)
    return connector.num_tokens if connector is not None else model.query_tokens.shape[1]


def vision_layers(model) -> tuple[int, ...] | None:
    """The ViT layers whose CLS token the connector reads (bottleneck), or None (the last hidden state)."""
    connector = connector_of(model)
    return None if connector is None else connector.vision_layers
