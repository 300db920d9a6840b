"""The paper's rerun rule (docs/protocol.md §4) as data, and the reruns it asks for among finished runs."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import runs
from .config import ConfigError, ExperimentConfig


@dataclass(frozen=True)
class RerunRule:
    """The paper's rerun rule (docs/protocol.md §4): after a grid row's runs, a run is trained again at a
    lowered learning rate (lr_qformer_full when the Q-Former is fully fine-tuned, else lr_peft) when it stopped early
    having run fewer than min_epochs epochs, or when its best validation score lies more than `gap` points below
    the mean of its neighbours in r (the finished runs at the adjacent ranks of the same row and seed). Validation,
    not test: choosing runs to redo by their test scores would select on the test set. The rerun is a new run
    (config fields lr, rerun_of, rerun_reason; the evidence in its folder's rerun.json) that counts in place of the
    original (runs.counted), whose folder stays; a rerun is never rerun."""
    min_epochs: int = 8
    gap: float = 10.0
    lr_qformer_full: float = 1e-5
    lr_peft: float = 1e-4

    def lowered_lr(self, config: ExperimentConfig) -> float:
        return self.lr_qformer_full if config.qformer_full else self.lr_peft


def as_rerun_rule(rule: "RerunRule | Mapping[str, Any] | None") -> RerunRule | None:
    """A rule as given, or from its fields (papermill passes it as a dict); None: no rule."""
    if rule is None or isinstance(rule, RerunRule):
        return rule
    try:
        return RerunRule(**rule)
    except TypeError:
        raise ConfigError(f"rerun_rule={dict(rule)!r}: its fields are min_epochs, gap, lr_qformer_full, "
                        f"lr_peft") from None


@dataclass(frozen=True)
class Rerun:
    """One planned rerun: its config and why (the numbers the rule read)."""
    config: ExperimentConfig
    evidence: Mapping[str, Any]


def plan_reruns(configs: Sequence[ExperimentConfig], runs_dir: str | Path,
                rule: "RerunRule | Mapping[str, Any] | None") -> list[Rerun]:
    """The reruns `rule` asks for among the finished runs of `configs` (one notebook's rows), read from their run
    folders' result.json (stopped_early, epochs, val_score); none without a rule. Reruns among the configs, runs
    not finished and runs whose rate is already at or below the lowered one are left as they are."""
    rule = as_rerun_rule(rule)
    if rule is None:
        return []
    rows: dict[str, list[ExperimentConfig]] = {}
    for cfg in configs:  # a row: everything but the rank (so the same setup, targets, LLM, benchmark and seed)
        rows.setdefault(runs.config_hash({k: v for k, v in cfg.to_dict().items() if k != "rank"}), []).append(cfg)
    out = []
    for sweep in rows.values():
        sweep = sorted(sweep, key=lambda c: c.rank or 0)
        results = [_done_result(runs_dir, c) for c in sweep]
        for i, (cfg, res) in enumerate(zip(sweep, results)):
            lowered = rule.lowered_lr(cfg)
            if res is None or cfg.rerun_of is not None or cfg.learning_rate <= lowered:
                continue
            reasons = []
            if res.get("stopped_early") and res.get("epochs", rule.min_epochs) < rule.min_epochs:
                reasons.append("stopped_early")
            neighbours = {sweep[j].rank: results[j]["val_score"] for j in (i - 1, i + 1)
                          if 0 <= j < len(sweep) and results[j] is not None
                          and results[j].get("val_score") is not None}
            mean = sum(neighbours.values()) / len(neighbours) if neighbours else None
            if mean is not None and res.get("val_score") is not None and mean - res["val_score"] > rule.gap:
                reasons.append("below_neighbours")
            if reasons:
                evidence = {"rerun_of": f"{cfg.run_name}-{cfg.hash}", "reasons": reasons, "rule": asdict(rule),
                            "lr": {"original": cfg.learning_rate, "rerun": lowered},
                            **{k: res.get(k) for k in ("epochs", "best_epoch", "stopped_early", "val_score")},
                            "neighbours_val_score": {str(r): v for r, v in neighbours.items()},
                            "neighbours_mean": mean}
                out.append(Rerun(cfg.replace(lr=lowered, rerun_of=cfg.hash, rerun_reason="+".join(reasons)),
                                 evidence))
    return out


def _done_result(runs_dir: str | Path, cfg: ExperimentConfig) -> dict | None:
    run = runs.RunDir(Path(runs_dir) / f"{cfg.run_name}-{cfg.hash}")  # the engine's folder name (RunDir.open)
    return run.result if run.is_done() else None
