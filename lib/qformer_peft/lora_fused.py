"""peft's LoRA Linear run as one autograd node: the same function with fewer operator calls a training step.

`fuse_lora(model)` switches every plain LoRA Linear of a model to `FusedLoraLinear` (train.fit does it by
default); anything else (AdaLoRA's SVD layers, DoRA, dropout, lora_bias, autocast) keeps peft's own forward.
What it buys on the CPU: docs/performance.md.
"""
from __future__ import annotations

import types

import torch
from peft.tuners.lora.layer import Linear as LoraLinear


class FusedLoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T with a hand-written backward: 3 kernels forward and at most 6 backward
    (8 and 17 operator calls in all), where peft's module chain (base Linear, dropout, lora_A, lora_B, scale,
    add) makes 14 and 28. The scale is folded into the second GEMM (alpha), so results agree with peft's up
    to float rounding, not bit for bit."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())
        h = torch.mm(x2, lora_a.t())  # [N, r]
        y = torch.addmm(y, h, lora_b.t(), alpha=scaling)  # out of place: FlopCounterMode counts addmm, not addmm_
        ctx.save_for_backward(x2, h, weight, lora_a, lora_b)
        ctx.scaling, ctx.shape, ctx.has_bias = scaling, shape, bias is not None
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, h, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        g2 = grad.reshape(-1, grad.shape[-1])
        gh = torch.mm(g2, lora_b)  # d loss / d h, before the scale
        gx = gw = gbias = ga = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.addmm(torch.mm(g2, weight), gh, lora_a, alpha=s).view(ctx.shape)
        if ctx.needs_input_grad[1]:
            gw = torch.mm(g2.t(), x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gbias = g2.sum(0)
        if ctx.needs_input_grad[3]:
            ga = torch.mm(gh.t(), x2).mul_(s)
        if ctx.needs_input_grad[4]:
            gb = torch.mm(g2.t(), h).mul_(s)
        return gx, gw, gbias, ga, gb, None


def _fused_lora_forward(self, x, *args, **kwargs):
    # Anything but one plain adapter on an fp32-style call (no autocast, no dropout, no DoRA/variant, no
    # lora_bias, no per-sample adapter names) goes through peft's own forward, unchanged.
    names = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(names) != 1 \
            or torch.is_autocast_enabled(x.device.type):
        return LoraLinear.forward(self, x, *args, **kwargs)
    name = names[0]
    base = self.base_layer
    if name not in self.lora_A or name in self.lora_variant or self.lora_B[name].bias is not None \
            or not isinstance(self.lora_dropout[name], torch.nn.Identity) or x.dtype != base.weight.dtype \
            or self.lora_A[name].weight.dtype != x.dtype:
        return LoraLinear.forward(self, x, *args, **kwargs)
    return FusedLoraLinear.apply(x, base.weight, base.bias, self.lora_A[name].weight,
                                 self.lora_B[name].weight, self.scaling[name])


def fuse_lora(model: torch.nn.Module, enable: bool = True) -> int:
    """Run every peft LoRA Linear (on an nn.Linear) of `model` as one autograd node (FusedLoraLinear);
    with enable=False, restore peft's forward. Returns how many modules it switched. Other adapters (AdaLoRA's
    SVD layers, DoRA, Conv1D bases) keep peft's path, as does any call under autocast (mixed precision)."""
    n = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear:
            if enable:
                module.forward = types.MethodType(_fused_lora_forward, module)
            else:
                module.__dict__.pop("forward", None)
            n += 1
    return n
