"""The connector study: the same frozen ViT and LLM, joined by a Q-Former, DeCo's adaptive pooling,
a LLaVA projector or the Bottleneck Adapter; every connector aligned on the held-in tasks for the same number
of steps, then trained on one benchmark with the same protocol. Configs, tidy tables and claims (its charts:
connector_charts.py).

    configs = connector_configs(benchmark="iconqa", llm="t5", model=..., data_dir=..., connectors=STUDY)
    frame = connector_frame(runs_frame(runs_dir))    # one row per run: accuracy, tokens, cost, parameters
    connector_claims(runs_frame(runs_dir))           # DeCo and Bottleneck Adapter claims (dicts, notebook 30)
    ledger_claims(runs_frame(runs_dir))              # the same as claim.Claim rows of the index's claim ledger

Symmetry: the non-Q-Former connectors have no pretrained weights, so the study's Q-Former starts from scratch
too (connector_init='scratch'): every connector begins random and gets the same alignment budget; the base
model's pretrained Q-Former (its stage 3 plus the same alignment) is a reference row, not a party to the claims.
Fine-tuning is the paper's 'baseline' setup for every connector: the connector (the Q-Former, the pooling MLP,
the projector, or the bottleneck projection + its LLM adapters) and the post-ViT LayerNorm are trained, the
ViT and the LLM's weights are frozen.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .claim import NOT_RUN_RESOLVE, Claim
from .verdicts import COMPARABLE_TOL, INCONCLUSIVE, NOT_RESOLVABLE, VERDICTS, combine, judge
from .verdicts import fmt as format_samples  # `fmt` is a parameter name below
from .config import ExperimentConfig, heldin_on_first_seed

STUDY_TAG = "study:connectors"
LOSS_TOL = 0.01       # ... or at most 0.01 nats of held-in loss above (about 1.5% of the losses measured on mini)
CONNECTOR_KEYS = ("connector", "connector_tokens", "connector_variant", "connector_init")
SCRATCH = {"connector_init": "scratch"}

# The mini study on the 8x8 patch grid (64 patches, 4 ViT layers, Q-Former with 16 queries):
# Q-Former and pooling at 4 and 16 tokens (2x2, 4x4), the Q-Former at 64; pooling to 8x8 is the identity, so
# pooling at 64 tokens IS the MLP projector (same modules, same seed, same numbers: measured and tested), which
# stands in for it; the projector on all 64 patches, MLP and linear; the bottleneck on the CLS token of every
# layer (4 tokens: the smallest budget above), linear and with GELU; the pretrained Q-Former as a reference.
STUDY: tuple[dict[str, Any], ...] = (
    {"connector": "qformer", "connector_tokens": 16, **SCRATCH}, {"connector": "pool", "connector_tokens": 16},
    {"connector": "bottleneck"}, {"connector": "bottleneck", "connector_variant": "gelu"},
    {"connector": "qformer", "connector_tokens": 4, **SCRATCH}, {"connector": "pool", "connector_tokens": 4},
    {"connector": "qformer", "connector_tokens": 64, **SCRATCH},
    {"connector": "projector"}, {"connector": "projector", "connector_variant": "linear"},
    {"connector": "qformer"},
)
# What the claims compare (the grid gives these the claim seeds), and the rest of the study (one seed).
CLAIM_CONNECTORS: tuple[dict[str, Any], ...] = STUDY[:4]
BUDGET_CONNECTORS: tuple[dict[str, Any], ...] = STUDY[4:]
# Every kind on the tiny preset (4x4 grid, 2 ViT layers, 8 queries): the notebook's defaults, the smoke cell.
SMOKE_CONNECTORS: tuple[dict[str, Any], ...] = (
    {"connector": "qformer", "connector_tokens": 4, **SCRATCH}, {"connector": "pool", "connector_tokens": 4},
    {"connector": "projector"}, {"connector": "projector", "connector_variant": "linear"},
    {"connector": "bottleneck"}, {"connector": "bottleneck", "connector_variant": "gelu"},
)


def connector_configs(*, benchmark: str, llm: str, model: str, data_dir: str, connectors: Sequence[Mapping[str, Any]],
                      seeds: Sequence[int] = (42,), align_steps: int = 300, hparams: Mapping[str, Any] | None = None,
                      tags: Sequence[str] = ()) -> list[ExperimentConfig]:
    """The validated configs of one study notebook: every connector x seed on one benchmark, setup 'baseline'
    (connector trained, LLM frozen), each after `align_steps` alignment steps. connectors: dicts of the
    ExperimentConfig connector fields (connector, connector_tokens, connector_variant, connector_init)."""
    from pathlib import Path

    out = []
    for spec in connectors:
        unknown = sorted(set(spec) - set(CONNECTOR_KEYS))
        if unknown:
            raise ValueError(f"connector spec {dict(spec)}: unknown key(s) {unknown}; use {', '.join(CONNECTOR_KEYS)}")
        for seed in seeds:
            out.append(ExperimentConfig.from_dict(heldin_on_first_seed({
                "benchmark": benchmark, "llm": llm, "model": str(model), "data_root": str(Path(data_dir) / benchmark),
                "setup": "baseline", "qf_sublayers": None, "llm_targets": None, "rank": None,
                "align_steps": align_steps, **dict(hparams or {}), **dict(spec), "seed": seed,
                "tags": [*tags, STUDY_TAG]}, seeds)))
    return out


def cell_configs(**parameters: Any) -> list[ExperimentConfig]:
    """The runs of one 30_connectors.ipynb execution from its papermill parameters (the grid's Cell.configs);
    parameters it does not need (runs_dir, cache_dir, data_size, ...) are ignored."""
    keys = ("benchmark", "llm", "model", "data_dir", "connectors", "seeds", "align_steps", "hparams", "tags")
    return connector_configs(**{k: parameters[k] for k in keys if k in parameters})


# --- tidy frames ---------------------------------------------------------------------------------------

def is_study_run(df: pd.DataFrame) -> pd.Series:
    """Runs of the connector study (tagged by connector_configs): the paper's claims should leave them out."""
    if df.empty:
        return pd.Series([], dtype=bool)
    tags = df["tags"] if "tags" in df else pd.Series([[]] * len(df), index=df.index)
    return tags.map(lambda t: isinstance(t, (list, tuple)) and STUDY_TAG in t)


def _value(row: Mapping[str, Any], key: str) -> Any:
    """row[key], with pandas' NaN for a missing value read as None."""
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def _label(row: Mapping[str, Any]) -> str:
    from .models.connectors import ConnectorSpec

    tokens = _value(row, "connector_tokens")
    return ConnectorSpec(row["connector"], int(tokens) if tokens is not None else None,
                         _value(row, "connector_variant"), _value(row, "connector_init")).label


def connector_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished study run: llm, benchmark, connector (label), kind, variant, tokens (fed to the LLM),
    seed, acc (test %), samples_per_s (training), trainable (all groups), align_steps, align_loss (held-in val loss
    after alignment), align_curve (held-in val loss at the alignment checkpoints after step 0), align_samples_per_s,
    auc (mean validation accuracy over the epochs), curve (validation accuracy per epoch), best_epoch, steps,
    chance (test accuracy of a uniform guess, %) and n_test (from the run's predictions)."""
    cols = ["llm", "benchmark", "connector", "kind", "variant", "tokens", "seed", "acc", "samples_per_s", "trainable",
            "align_steps", "align_loss", "align_curve", "align_samples_per_s", "auc", "curve", "best_epoch", "steps",
            "chance", "n_test", "run_id", "path"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    d = df[is_study_run(df) & (df["state"] == "done")]
    rows = []
    for r in d.to_dict("records"):
        curve = r.get("result.val_curve") or []
        scores = [c["score"] for c in curve if c.get("score") is not None]
        align = r.get("result.alignment.curve") or []
        rows.append({
            "llm": r["llm"], "benchmark": r["benchmark"], "connector": _label(r), "kind": r["connector"],
            "variant": _value(r, "connector_variant"), "tokens": r.get("result.connector.image_tokens"),
            "seed": r["seed"], "acc": r.get("acc"), "samples_per_s": r.get("result.train_samples_per_s"),
            "trainable": r.get("trainable"), "align_steps": r.get("align_steps"),
            "align_loss": align[-1]["val_loss"] if align else None,
            "align_curve": [c["val_loss"] for c in align if c["step"] > 0],
            "align_samples_per_s": r.get("result.alignment.samples_per_s"),
            "auc": float(np.mean(scores)) if scores else None, "curve": scores, "best_epoch": r.get("result.best_epoch"),
            "steps": r.get("result.steps"), **_chance(r), "run_id": r["run_id"], "path": r["path"]})
    return pd.DataFrame(rows, columns=cols)


def _chance(r: Mapping[str, Any]) -> dict[str, float | None]:
    """Uniform-guess test accuracy (%) and test size, from predictions.jsonl (one nll per candidate)."""
    if "chance" in r:  # given (tests)
        return {"chance": r["chance"], "n_test": r.get("n_test")}
    from . import runs

    preds = [p for p in runs.RunDir(r["path"]).predictions() if p.get("nll")] if r.get("path") else []
    if not preds:
        return {"chance": None, "n_test": None}
    return {"chance": 100 * float(np.mean([1 / len(p["nll"]) for p in preds])), "n_test": len(preds)}


def convergence_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy against the optimizer step, one row per (study run, epoch)."""
    rows = []
    d = df[is_study_run(df) & (df["state"] == "done")] if not df.empty else df
    for r in d.to_dict("records"):
        for c in r.get("result.val_curve") or []:
            rows.append({"llm": r["llm"], "benchmark": r["benchmark"], "connector": _label(r), "seed": r["seed"],
                         "epoch": c["epoch"], "step": c["step"], "val_score": c["score"]})
    return pd.DataFrame(rows, columns=["llm", "benchmark", "connector", "seed", "epoch", "step", "val_score"])


def alignment_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Held-in validation loss against the alignment step, one row per (connector, seed, checkpoint)."""
    rows, seen = [], set()
    d = df[is_study_run(df) & (df["state"] == "done")] if not df.empty else df
    for r in d.to_dict("records"):
        key = (r["llm"], _label(r), r["seed"])
        if key in seen:  # one alignment serves every benchmark
            continue
        seen.add(key)
        for c in r.get("result.alignment.curve") or []:
            rows.append({"llm": r["llm"], "connector": _label(r), "seed": r["seed"], "step": c["step"],
                         "val_loss": c["val_loss"]})
    return pd.DataFrame(rows, columns=["llm", "connector", "seed", "step", "val_loss"])


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per llm x benchmark x connector: image tokens, trainable parameters, test accuracy (mean ± sd over seeds),
    convergence (mean validation accuracy over epochs), held-in loss after alignment, training samples/s."""
    if frame.empty:
        return pd.DataFrame()
    g = frame.groupby(["llm", "benchmark", "connector"], sort=False)
    out = g.agg(tokens=("tokens", "first"), trainable=("trainable", "first"), seeds=("seed", "nunique"),
                acc=("acc", "mean"), acc_sd=("acc", "std"), auc=("auc", "mean"), align_loss=("align_loss", "mean"),
                samples_per_s=("samples_per_s", "mean")).reset_index()
    return out.round({"acc": 1, "acc_sd": 1, "auc": 1, "align_loss": 3, "samples_per_s": 1})


def trainable_table(df: pd.DataFrame) -> pd.DataFrame:
    """Trainable parameters by group (result.json's trainable_params, non-empty groups) and their total, per
    connector of the study's runs in df."""
    d = df[is_study_run(df)] if not df.empty else df
    cols = [c for c in d.columns if c.startswith("result.trainable_params.")]
    if d.empty or not cols:
        return pd.DataFrame()
    t = d.assign(connector=[_label(r) for r in d.to_dict("records")]).groupby("connector", sort=False)[cols].first()
    t.columns = [c.removeprefix("result.trainable_params.") for c in cols]
    t = t.loc[:, (t != 0).any(axis=0)]
    return t.assign(total=t.sum(axis=1)).astype(int)


def claims_frame(claims: Sequence[Mapping[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(list(claims), columns=["id", "claim", "verdict", "evidence", "scale", "source"])


# --- claims ----------------------------------------------------------------------------------------------

CLAIMS = {
    "DeCo-acc": ("Adaptive average pooling matches or beats the Q-Former at equal image tokens (test accuracy at "
                 f"most {COMPARABLE_TOL:g} point below)", "DeCo (arXiv 2405.20985), docs/protocol.md §7"),
    "DeCo-conv": ("... and converges faster from scratch: lower held-in validation loss along the same alignment "
                  "budget (mean over its checkpoints)", "DeCo (arXiv 2405.20985)"),
    "DeCo-conv-task": ("... and on the benchmark: higher validation accuracy over the fine-tuning epochs (mean over "
                       "the epochs both runs trained)", "DeCo (arXiv 2405.20985)"),
    "BA-linear": ("A linear bottleneck adapter without non-linearity is enough (test accuracy at most "
                  f"{COMPARABLE_TOL:g} point below the same adapter with a GELU)", "Bottleneck Adapter (arXiv 2407.17813)"),
    "BA-linear-align": ("... also on the held-in tasks (held-in loss after the same alignment at most "
                        f"{LOSS_TOL:g} above the GELU variant's)", "Bottleneck Adapter (arXiv 2407.17813)"),
    "BA-projector": ("... and so is a linear projector on every patch (at most "
                     f"{COMPARABLE_TOL:g} point below LLaVA's 2-layer MLP projector)", "Bottleneck Adapter (arXiv 2407.17813) / "
                     "DeCo's LLaVA projector"),
    "BA-projector-align": (f"... also on the held-in tasks (held-in loss at most {LOSS_TOL:g} above the MLP "
                           "projector's)", "Bottleneck Adapter (arXiv 2407.17813) / DeCo's LLaVA projector"),
}


def _pair(frame: pd.DataFrame, a: str, b: str, col: str, keys: Sequence[str], *, stat=None,
          tol: float = COMPARABLE_TOL, fmt=lambda x: f"{np.mean(list(x)):.1f}", unit: str = " pt",
          above_chance: bool = False):
    """Per group of `keys`: the seed-paired statistic of a against b (default col(a) - col(b)), judged against
    -tol; returns (evidence parts, verdicts). above_chance (accuracy comparisons): where neither side's mean
    test accuracy clears chance by 2 binomial standard errors, two connectors that both learned nothing would
    "match": the verdict is inconclusive instead."""
    stat = stat or (lambda x, y: x - y)
    parts, verdicts = [], []
    for key, d in frame.groupby(list(keys), dropna=False):
        x = d[d["connector"] == a].set_index("seed")[col]
        y = d[d["connector"] == b].set_index("seed")[col]
        seeds = sorted(set(x.index) & set(y.index))
        if not seeds:
            continue
        diff = [stat(x[s], y[s]) for s in seeds]
        v = judge(diff, margin=-tol)
        note = ""
        if above_chance:
            runs_ = d[d["connector"].isin([a, b])]
            chance, n = runs_["chance"].mean(), runs_["n_test"].mean()
            floor = chance + 1.96 * 100 * np.sqrt(chance / 100 * (1 - chance / 100) / n) if n else np.nan
            if not runs_.groupby("connector")["acc"].mean().max() > floor:
                note = f" (both within the 95% binomial interval of chance {chance:.1f}%: nothing learned to compare)"
                v = v.unresolved(note.strip(" ()"))
        verdicts.append(v)
        values = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        where = "/".join(str(v) for k, v in values.items() if k != "align_steps")
        where += f" ({values['align_steps']} alignment steps)" if "align_steps" in values else ""
        parts.append(f"{where}: {a} {fmt(x)} vs {b} {fmt(y)}, difference {format_samples(diff, 1, unit)} → {v}{note}")
    return parts, verdicts


def _curve_mean(digits: int):
    return lambda curves: f"{np.mean([np.mean(c) for c in curves]):.{digits}f}"


def mean_gap(a: Sequence[float], b: Sequence[float]) -> float:
    """mean(a) - mean(b) over the first min(len) points: the area between two curves."""
    n = min(len(a), len(b))
    return float(np.mean(a[:n]) - np.mean(b[:n])) if n else float("nan")


def connector_claims(df: pd.DataFrame) -> list[dict[str, str]]:
    """The DeCo and Bottleneck Adapter claims, judged on the study's runs in df (runs_frame of a runs folder).

    Each statistic is per seed (paired on seeds both sides have) and judged like the paper's claims
    (verdicts.judge: the 95% t interval over seeds against the tolerance; fewer than 2 seeds is inconclusive; Holm across parts). A claim
    stated for every budget and benchmark holds only where it holds for each. Returns dicts with id, claim,
    source, evidence, verdict, scale.
    """
    frame = connector_frame(df)
    scale = ", ".join(sorted({t.split(":", 1)[1] for ts in df.get("tags", []) if isinstance(ts, (list, tuple))
                              for t in ts if isinstance(t, str) and t.startswith("scale:")})) or "unknown"
    out = []

    def add(cid: str, parts: list[str], verdicts: list[str], missing: str, extra: str = "") -> None:
        verdict = combine(verdicts) if verdicts else NOT_RESOLVABLE
        evidence = "; ".join(parts) + extra if parts else f"no runs to compare ({missing})"
        out.append({"id": cid, "claim": CLAIMS[cid][0], "source": CLAIMS[cid][1], "evidence": evidence,
                    "verdict": verdict, "scale": scale, "parts": list(verdicts),
                    "resolve": "" if verdicts else NOT_RUN_RESOLVE})

    keys = ["llm", "benchmark", "align_steps"]
    aligned = frame.drop_duplicates(["llm", "connector", "seed", "align_steps"])  # alignment is per LLM, not benchmark
    acc, conv, task = ([], []), ([], []), ([], [])
    pools = {int(t): f"pool{int(t)}" for t in frame.loc[frame["kind"] == "pool", "tokens"].dropna().unique()}
    # pooling to the whole grid is the identity: the MLP projector is pooling at that budget
    projector = frame[frame["connector"] == "projector"]
    if not projector.empty:
        pools.setdefault(int(projector["tokens"].iloc[0]), "projector")
    for tokens, a in sorted(pools.items()):
        b = f"qformer{tokens}-scratch"
        sub = frame[frame["connector"].isin([a, b])]
        for part, (p, v) in ((acc, _pair(sub, a, b, "acc", keys, above_chance=True)),
                             # convergence, no tolerance: pooling must be ahead. Alignment does not depend on the
                             # benchmark: one comparison per LLM. Fine-tuning curves are compared over the epochs
                             # both runs have (early stopping can end one sooner).
                             (conv, _pair(aligned[aligned["connector"].isin([a, b])], b, a,
                                          "align_curve", ["llm", "align_steps"], stat=mean_gap, tol=0.0,
                                          fmt=_curve_mean(3), unit="")),
                             (task, _pair(sub, a, b, "curve", keys, stat=mean_gap, tol=0.0, fmt=_curve_mean(1),
                                          above_chance=True))):
            part[0].extend(f"{tokens} tokens, {s}" for s in p)
            part[1].extend(v)
    missing = "pool<k> and qformer<k>-scratch at the same k"
    add("DeCo-acc", *acc, missing)
    add("DeCo-conv", *conv, missing, " (held-in loss: the Q-Former's minus pooling's, positive = pooling lower)")
    add("DeCo-conv-task", *task, missing)
    for cid, kind, nonlinear in (("BA-linear", "bottleneck", "gelu"), ("BA-projector", "projector", "mlp")):
        linear, other = _only(frame, kind, "linear"), _only(frame, kind, nonlinear)
        add(cid, *_pair(frame, linear, other, "acc", keys, above_chance=True), f"{kind} linear and {nonlinear} variants")
        # held-in loss: lower is better, so the statistic is the other's loss minus the linear one's
        add(f"{cid}-align", *_pair(aligned, other, linear, "align_loss", ["llm", "align_steps"], tol=LOSS_TOL,
                                   fmt=lambda x: f"{x.mean():.3f}", unit=""), f"{kind} linear and {nonlinear} variants",
            f" (held-in loss: the {nonlinear} variant's minus the linear one's; at most {LOSS_TOL:g} below 0 holds)")
    return out


SOURCE_NOTE = "the connector study; not a claim of the paper"


def as_claim(d: Mapping[str, str]) -> Claim:
    """One of connector_claims' dicts as a row of the claim ledger: the one place their vocabularies meet
    (the dict's 'claim' is the ledger's statement; verdicts are already verdicts.VERDICTS)."""
    if d["verdict"] not in VERDICTS:
        raise ValueError(f"connector claim {d['id']}: verdict {d['verdict']!r} is not one of the ledger's")
    return Claim(id=d["id"], statement=d["claim"], source=f"{d['source']}; {SOURCE_NOTE}", scale=d["scale"],
                 verdict=d["verdict"], evidence=d["evidence"], parts=list(d.get("parts", [])),
                 resolve=d.get("resolve", ""))


def ledger_claims(df: pd.DataFrame) -> list[Claim]:
    """connector_claims(df) as claim.Claim rows (claim_ledger.ledger lists them after the paper's)."""
    return [as_claim(d) for d in connector_claims(df)]


def _only(frame: pd.DataFrame, kind: str, variant: str) -> str:
    """The label of the study's `kind` connector in `variant` (the default variant has no suffix)."""
    from .models.connectors import VARIANTS

    labels = sorted(set(frame.loc[frame["kind"] == kind, "connector"]))
    want = [lab for lab in labels if (lab.endswith(f"-{variant}") if variant != VARIANTS[kind][0]
                                      else not any(lab.endswith(f"-{v}") for v in VARIANTS[kind][1:]))]
    return want[0] if want else f"{kind}-{variant}"


# --- full size -------------------------------------------------------------------------------------------

def full_size_counts(llm: str = "flan-t5-xl", connectors: Sequence[Mapping[str, Any]] = STUDY) -> pd.DataFrame:
    """Trainable parameters (setup 'baseline') and image tokens of each connector on a full-size model, built on
    the meta device (no weights): what each connector would train at the paper's scale. The study's token
    budgets are for the 8x8 mini grid; here pool and Q-Former keep their counts, projector and bottleneck take
    the full model's (256 patches; 6 CLS tokens of 39 layers). Columns: llm, connector, tokens, trainable_<group>
    for each non-empty group of peft_setup.GROUPS, trainable (the total)."""
    from .models.build import build_model
    from .models.connectors import ConnectorSpec, attach, image_token_count
    from .peft_setup import apply_peft, trainable_parameters

    rows = []
    for c in connectors:
        spec = ConnectorSpec(c["connector"], c.get("connector_tokens"), c.get("connector_variant"), c.get("connector_init"))
        if spec.kind in ("projector", "bottleneck"):
            spec = ConnectorSpec(spec.kind, None, spec.variant, spec.init)
        model = build_model(llm, device="meta").model
        attach(model, spec, seed=0)
        counts = trainable_parameters(apply_peft(model, "baseline"))
        rows.append({"llm": llm, "connector": spec.label, "tokens": image_token_count(model),
                     **{f"trainable_{k}": v for k, v in counts.items() if v}, "trainable": sum(counts.values())})
    return pd.DataFrame(rows).fillna(0)
