"""The paper's open questions: which runs each needs, the tables they reduce to, their claims.

One notebook per question (notebooks/40-43), executed by the grid:
  multitask  one AdaLoRA budget over ScienceQA + IconQA trained jointly, against each task alone:
             where the rank goes and what each task's accuracy costs
  scaling    does the gap between Q-Former LoRA and full fine-tuning (the baseline) change with the
             training-set size, and with the model's size where the profile has several
  ranks      rank sensitivity past the paper's grid (r = 16, 32) for QF LoRA and QF LoRA + LLM LoRA
  seeds      the spread of every Table-1 cell that has several seeds; do single-run orderings survive?
             (its tables and claims: seed_variance.py)

A Plan splits a question's runs into those it owns (tagged study:<question>, which keeps them out of
Table 1 and the paper's claims) and those it reads from the paper's grid (the same configs as the grid's
cells, hence the same run folders: nothing is trained twice). Claims use the ledger's rule
(verdicts.judge: per-seed paired differences, their 95% t interval; Holm across a claim's parts).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import claim as C
from . import verdicts as V
from .config import MULTITASK_SEP, ExperimentConfig, experiment_configs
from .report_charts import final_ranks, tag_value
from .seed_variance import seeds_best_rank_claim, seeds_setup_claim

QUESTIONS = ("multitask", "scaling", "ranks", "seeds")
MULTITASK_TASKS = ("scienceqa", "iconqa")
RANK_ROWS = (("qf-lora", "all", None), ("qf-lora+llm-lora", "all", "all"))
SCALING_ROWS = (("baseline", None, None), ("qf-lora", "all", None))
SIZE_TAG = "model_size"          # model_size:+1 = one step larger than the profile's model

OPEN_CLAIMS = {  # id -> (statement, question)
    "MT-acc": ("One AdaLoRA budget trained on ScienceQA + IconQA together is comparable on each task to training "
               f"on that task alone (at most {V.COMPARABLE_TOL:g} point below)", "multitask"),
    "MT-alloc": ("The joint allocation is a compromise: closer to the mean of the two single-task allocations than "
                 "the two are to each other", "multitask"),
    "SC-data": ("With less training data, Q-Former LoRA gains on full fine-tuning: the gap acc(QF LoRA) − "
                "acc(baseline) is larger at the smallest training set than at the largest", "scaling"),
    "SC-model": ("With a larger model, Q-Former LoRA gains on full fine-tuning (the gap grows with model size)",
                 "scaling"),
    "RK-qf": ("QF LoRA saturates by the paper's largest rank: r = 16 and r = 32 are at most "
              f"{V.COMPARABLE_TOL:g} point above it", "ranks"),
    "RK-both": ("QF LoRA + LLM LoRA saturates by the paper's largest rank: r = 16 and r = 32 are at most "
                f"{V.COMPARABLE_TOL:g} point above it", "ranks"),
    "SD-setups": ("The ordering of the setups in a single run (each at its best rank there) survives other seeds",
                  "seeds"),
    "SD-best-rank": ("The best rank of each Table-1 row in a single run stays the row's best on other seeds", "seeds"),
}


# --- plans: the runs of each question ------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    own: list[ExperimentConfig]          # trained for this question (tagged study:<question>)
    reference: list[ExperimentConfig]    # the paper grid's runs it compares with

    @property
    def all(self) -> list[ExperimentConfig]:
        seen, out = set(), []
        for c in self.reference + self.own:
            if c.hash not in seen:
                seen.add(c.hash)
                out.append(c)
        return out


def multitask_plan(*, llm: str, model: str, data_dir: str, tasks: Sequence[str] = MULTITASK_TASKS,
                   seeds: Sequence[int] = (42,), hparams: Mapping[str, Any] | None = None,
                   tags: Sequence[str] = ()) -> Plan:
    """Joint AdaLoRA on the tasks (same init/target rank, so the same total budget as one task alone) and
    the single-task AdaLoRA runs of the paper's analysis."""
    common = dict(llm=llm, model=model, data_dir=data_dir, method="adalora", seeds=seeds, hparams=hparams)
    own = experiment_configs(benchmark=MULTITASK_SEP.join(tasks), tags=[*tags, "study:multitask"], **common)
    return Plan(own, [c for t in tasks for c in experiment_configs(benchmark=t, tags=list(tags), **common)])


def scaling_plan(*, llm: str, benchmark: str, model: str, data_dir: str, rank: int,
                 train_limits: Sequence[int] = (), models: Sequence[str] = (), seeds: Sequence[int] = (42,),
                 hparams: Mapping[str, Any] | None = None, tags: Sequence[str] = ()) -> Plan:
    """Baseline and QF LoRA (all sublayers, rank `rank`) at each training-set size (on `model`) and on each
    larger model in `models` (ascending size, at the profile's own training-set size)."""
    hparams = dict(hparams or {})
    default = hparams.get("train_limit")

    def cells(m: str, limit: int | None, extra_tags: Sequence[str]) -> list[ExperimentConfig]:
        return [c for setup, qf, lt in SCALING_ROWS for c in experiment_configs(
            benchmark=benchmark, llm=llm, model=m, data_dir=data_dir, setup=setup, qf_sublayers=qf, llm_targets=lt,
            ranks=[rank], seeds=seeds, hparams={**hparams, "train_limit": limit}, tags=[*tags, *extra_tags])]

    own = [c for n in train_limits if n != default for c in cells(model, n, ["study:scaling"])]
    own += [c for i, m in enumerate(models, 1) for c in cells(m, default, ["study:scaling", f"{SIZE_TAG}:+{i}"])]
    return Plan(own, cells(model, default, []))


def ranks_plan(*, llm: str, benchmark: str, model: str, data_dir: str, ranks: Sequence[int],
               extra_ranks: Sequence[int] = (16, 32), seeds: Sequence[int] = (42,),
               hparams: Mapping[str, Any] | None = None, tags: Sequence[str] = ()) -> Plan:
    """The rank rows of QF LoRA and QF LoRA + LLM LoRA (all targets): the paper's ranks from its grid,
    the extra ranks trained here."""
    common = dict(benchmark=benchmark, llm=llm, model=model, data_dir=data_dir, seeds=seeds, hparams=hparams)
    own, ref = [], []
    for setup, qf, lt in RANK_ROWS:
        row = dict(setup=setup, qf_sublayers=qf, llm_targets=lt, **common)
        ref += experiment_configs(ranks=list(ranks), tags=list(tags), **row)
        own += experiment_configs(ranks=[r for r in extra_ranks if r not in ranks], tags=[*tags, "study:ranks"], **row)
    return Plan(own, ref)


PLANS = {"multitask": multitask_plan, "scaling": scaling_plan, "ranks": ranks_plan}


def plan(question: str, **parameters: Any) -> Plan:
    """The plan of a question from its notebook's parameters (the keys its plan function takes)."""
    fn = PLANS[question]
    keys = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in parameters.items() if k in keys})


# --- frames ---------------------------------------------------------------------------------------------
def _row(df: pd.DataFrame, setup: str, qf: str | None, llm_t: str | None) -> pd.DataFrame:
    m = df["setup"] == setup
    for col, v in (("qf_sublayers", qf), ("llm_targets", llm_t)):
        m &= df[col].isna() if v is None else (df[col] == v)
    return df[m]


def multitask_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy per (llm, task, seed) trained jointly ('joint') and on the task alone ('alone'), for
    the tasks and LLMs that have joint AdaLoRA runs."""
    cols = ["llm", "task", "mode", "seed", "acc"]
    d = C.counted_runs(df)
    d = d[d["method"] == "adalora"] if len(d) else d
    rows = []
    for r in d.to_dict("records"):
        tasks = str(r["benchmark"]).split(MULTITASK_SEP)
        if len(tasks) > 1:
            rows += [{"llm": r["llm"], "task": t, "mode": "joint", "seed": int(r["seed"]),
                      "acc": r.get(f"result.test.tasks.{t}.accuracy")} for t in tasks]
        elif r.get("study", "paper") == "paper":
            rows.append({"llm": r["llm"], "task": tasks[0], "mode": "alone", "seed": int(r["seed"]), "acc": r["acc"]})
    out = pd.DataFrame(rows, columns=cols)
    joint = out[out["mode"] == "joint"][["llm", "task"]].drop_duplicates()
    out = out.merge(joint, on=["llm", "task"])
    return out.assign(acc=pd.to_numeric(out["acc"], errors="coerce")).sort_values(cols[:4]).reset_index(drop=True)


def joint_label(benchmark: str) -> str:
    return "joint" if MULTITASK_SEP in str(benchmark) else str(benchmark)


def allocation_shares(ranks: pd.DataFrame) -> pd.DataFrame:
    """Each run's share of its final total rank per sublayer (llm, benchmark, seed, sublayer, share);
    a joint run's benchmark is 'joint'. Only the LLMs that have joint runs."""
    cols = ["llm", "benchmark", "seed", "sublayer", "share"]
    fin = final_ranks(ranks)
    if fin.empty:
        return pd.DataFrame(columns=cols)
    fin = fin.assign(benchmark=fin["benchmark"].map(joint_label))
    llms = set(fin[fin["benchmark"] == "joint"]["llm"])
    fin = fin[fin["llm"].isin(llms) & fin["benchmark"].isin(["joint", *MULTITASK_TASKS])]
    tot = fin.groupby(["llm", "benchmark", "seed", "sublayer"], as_index=False)["rank"].sum()
    tot["share"] = tot["rank"] / tot.groupby(["llm", "benchmark", "seed"])["rank"].transform("sum")
    return tot[cols].reset_index(drop=True)


def allocation_difference(ranks: pd.DataFrame) -> pd.DataFrame:
    """Joint minus single-task heatmap (seed-mean rank per layer and sublayer), for each task:
    (llm, versus, layer, sublayer, diff)."""
    cols = ["llm", "versus", "layer", "sublayer", "diff"]
    maps = _maps(ranks)
    if maps.empty:
        return pd.DataFrame(columns=cols)
    v = maps.groupby(["llm", "benchmark", "layer", "sublayer"])["mean_rank"].mean().unstack("benchmark")
    if "joint" not in v:
        return pd.DataFrame(columns=cols)
    parts = [(v["joint"] - v[t]).rename("diff").reset_index().assign(versus=f"joint − {t}")
             for t in MULTITASK_TASKS if t in v]
    out = pd.concat(parts).dropna(subset=["diff"]) if parts else pd.DataFrame(columns=cols)
    return out[cols].reset_index(drop=True)


def _maps(ranks: pd.DataFrame) -> pd.DataFrame:
    m = C.rank_maps(ranks)
    return m.assign(benchmark=m["benchmark"].map(joint_label)) if len(m) else m


def _scaling_rank(df: pd.DataFrame) -> dict[tuple[str, str], int]:
    own = C.of_study(C.counted_runs(df), "scaling")
    own = own[own["setup"] == "qf-lora"]
    return {(l, b): int(g["rank"].max()) for (l, b), g in own.groupby(["llm", "benchmark"])}


def scaling_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Baseline and QF LoRA test accuracy per (llm, benchmark, model, model_size, train_n, seed), for the
    cells that have scaling runs (the paper grid's runs at the profile's own size included)."""
    cols = ["llm", "benchmark", "model", "model_size", "train_n", "setup", "seed", "acc"]
    rank_of = _scaling_rank(df)
    d = C.of_study(C.counted_runs(df), "paper", "scaling")
    if not rank_of or d.empty:
        return pd.DataFrame(columns=cols)
    keep = []
    for setup, qf, lt in SCALING_ROWS:
        r = _row(d, setup, qf, lt)
        if setup != "baseline":
            r = r[[rank_of.get((l, b)) == k for l, b, k in zip(r["llm"], r["benchmark"], r["rank"])]]
        keep.append(r[[(l, b) in rank_of for l, b in zip(r["llm"], r["benchmark"])]])
    d = pd.concat(keep)
    out = pd.DataFrame({
        "llm": d["llm"], "benchmark": d["benchmark"], "model": [Path(str(m)).name for m in d["model"]],
        "model_size": [int(tag_value(t, SIZE_TAG) or 0) for t in d["tags"]],
        "train_n": pd.to_numeric(d.get("result.n.train"), errors="coerce"),
        "setup": d["setup"], "seed": d["seed"].astype(int), "acc": d["acc"]})
    return out[cols].sort_values(cols[:7]).reset_index(drop=True)


def scaling_gaps(frame: pd.DataFrame) -> pd.DataFrame:
    """acc(QF LoRA) − acc(baseline) per (llm, benchmark, model, model_size, train_n, seed)."""
    keys = ["llm", "benchmark", "model", "model_size", "train_n", "seed"]
    if frame.empty:
        return pd.DataFrame(columns=[*keys, "gap"])
    p = frame.pivot_table(index=keys, columns="setup", values="acc", aggfunc="mean")
    if not {"baseline", "qf-lora"} <= set(p.columns):
        return pd.DataFrame(columns=[*keys, "gap"])
    return (p["qf-lora"] - p["baseline"]).rename("gap").dropna().reset_index()


def rank_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy of the rank rows (QF LoRA all, QF LoRA + LLM LoRA all) at every rank, paper and
    extra ranks, for the (llm, benchmark) that have rank-study runs."""
    cols = ["llm", "benchmark", "setup", "targets", "rank", "seed", "acc", "trainable", "study"]
    d = C.of_study(C.counted_runs(df), "paper", "ranks")
    if d.empty:
        return pd.DataFrame(columns=cols)
    cells = set(map(tuple, d[d["study"] == "ranks"][["llm", "benchmark"]].drop_duplicates().values.tolist()))
    parts = [_row(d, *row) for row in RANK_ROWS]
    d = pd.concat(parts) if parts else d
    in_cell = np.array([(l, b) in cells for l, b in zip(d["llm"], d["benchmark"])], dtype=bool)
    d = d[in_cell & (d["method"] == "lora").to_numpy() & d["rank"].notna().to_numpy()]
    d = d.assign(rank=d["rank"].astype(int), seed=d["seed"].astype(int))
    return d[cols].sort_values(["llm", "benchmark", "setup", "rank", "seed"]).reset_index(drop=True)


# --- claims ---------------------------------------------------------------------------------------------
def _claim(cid: str, v: C.Verdict, scale: str) -> C.Claim:
    return C.Claim(cid, OPEN_CLAIMS[cid][0], f"open question ({OPEN_CLAIMS[cid][1]}); not a claim of the paper",
                   scale, v.verdict, v.evidence, v.parts, v.runs, v.resolve, v.unit)


def multitask_acc_claim(df: pd.DataFrame) -> C.Verdict:
    acc = multitask_accuracy(df)
    parts, verdicts = [], []
    for (llm, task), g in acc.groupby(["llm", "task"]):
        joint, alone = C.by_seed(g[g["mode"] == "joint"]), C.by_seed(g[g["mode"] == "alone"])
        diff = V.paired(joint, alone)
        v = V.judge(diff, margin=-V.COMPARABLE_TOL)
        verdicts.append(v)
        parts.append(f"{llm}/{task}: joint − alone {V.fmt(diff, 1, ' pt')} → {v}")
    return C.verdict_of(parts, verdicts, "no joint AdaLoRA runs")


def multitask_alloc_claim(ranks: pd.DataFrame) -> C.Verdict:
    maps = _maps(ranks)
    parts, verdicts = [], []
    for llm, m in (maps.groupby("llm") if len(maps) else []):
        if "joint" not in set(m["benchmark"]):
            continue
        stat, near = [], []
        for seed, g in m.groupby("seed"):
            h = {b: C.heatmap_shares(x) for b, x in g.groupby("benchmark")}
            if not {"joint", *MULTITASK_TASKS} <= set(h):
                continue
            sqa, icon, joint = (h[t] for t in (*MULTITASK_TASKS, "joint"))
            stat.append(C.share_distance(sqa, icon) - C.share_distance(joint, (sqa + icon) / 2))
            near.append(C.share_distance(joint, icon) - C.share_distance(joint, sqa))   # > 0: nearer ScienceQA's
        if not stat:
            parts.append(f"{llm}: no seed with joint and both single-task runs")
            verdicts.append(V.INCONCLUSIVE)
            continue
        v = V.judge(stat)
        verdicts.append(v)
        side = MULTITASK_TASKS[0] if np.mean(near) > 0 else MULTITASK_TASKS[1]
        parts.append(f"{llm}: d(ScienceQA, IconQA) − d(joint, their mean) {V.fmt(stat, 100)} (×100); "
                     f"nearer {side} (d(joint, IconQA) − d(joint, ScienceQA) {V.fmt(near, 100)}) → {v}")
    return C.verdict_of(parts, verdicts, "no joint AdaLoRA runs")


def scaling_data_claim(df: pd.DataFrame) -> C.Verdict:
    gaps = scaling_gaps(scaling_axes(scaling_frame(df))[0])
    parts, verdicts = [], []
    for (llm, bench), g in gaps.groupby(["llm", "benchmark"]):
        sizes = sorted(g["train_n"].unique())
        if len(sizes) < 2:
            continue
        small, large = (C.by_seed(g[g["train_n"] == n], "gap") for n in (sizes[0], sizes[-1]))
        diff = V.paired(small, large)
        v = V.judge(diff)
        verdicts.append(v)
        means = ", ".join(f"n={int(n)}: {g[g['train_n'] == n]['gap'].mean():+.1f}" for n in sizes)
        parts.append(f"{llm}/{bench}: gap {means}; smallest − largest {V.fmt(diff, 1, ' pt')} → {v}")
    return C.verdict_of(parts, verdicts, "no training-set-size runs")


def scaling_model_claim(df: pd.DataFrame) -> C.Verdict:
    gaps = scaling_gaps(scaling_axes(scaling_frame(df))[1])
    parts, verdicts = [], []
    for (llm, bench), g in (gaps.groupby(["llm", "benchmark"]) if len(gaps) else []):
        if g["model_size"].nunique() < 2:
            continue
        sizes = sorted(g["model_size"].unique())
        name = {s: g[g["model_size"] == s]["model"].iloc[0] for s in sizes}
        big, small = (C.by_seed(g[g["model_size"] == s], "gap") for s in (sizes[-1], sizes[0]))
        diff = V.paired(big, small)
        v = V.judge(diff)
        verdicts.append(v)
        means = ", ".join(f"{name[s]} {g[g['model_size'] == s]['gap'].mean():+.1f}" for s in sizes)
        parts.append(f"{llm}/{bench}: gap {means}; larger − smaller {V.fmt(diff, 1, ' pt')} → {v}")
    return C.verdict_of(parts, verdicts, "not measured at this scale: one model size only (the model-size axis is the "
                    "opt-in --model-scaling of run_all.sh / qformer-peft study at the embedded scale, which builds "
                    "T5 base models twice as deep and twice as wide; the paper profile runs it on a larger "
                    "InstructBLIP checkpoint)")


def scaling_axes(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """scaling_frame split by axis: (training-set sizes on the profile's own model, model sizes at the training-set
    size the larger models were trained at; empty when there is one model size only)."""
    if frame.empty or "model_size" not in frame:
        return frame, frame.iloc[:0]
    data = frame[frame["model_size"] == 0]
    keep = []
    for _, g in frame.groupby(["llm", "benchmark"]):
        larger = g[g["model_size"] > 0]
        if len(larger):
            keep.append(g[g["train_n"] == larger["train_n"].max()])
    model = pd.concat(keep) if keep else frame.iloc[:0]
    return data.reset_index(drop=True), model.reset_index(drop=True)


def rank_claim(df: pd.DataFrame, setup: str) -> C.Verdict:
    f = rank_frame(df)
    f = f[f["setup"] == setup] if len(f) else f
    parts, verdicts = [], []
    for (llm, bench), g in (f.groupby(["llm", "benchmark"]) if len(f) else []):
        paper = g[g["study"] == "paper"]
        extra = sorted(set(g[g["study"] == "ranks"]["rank"]))
        if paper.empty or not extra:
            parts.append(f"{llm}/{bench}: missing {'paper-grid' if paper.empty else 'extra-rank'} runs")
            verdicts.append(V.INCONCLUSIVE)
            continue
        ref = int(paper["rank"].max())
        base = C.by_seed(g[g["rank"] == ref])
        for r in extra:
            above = V.paired(C.by_seed(g[g["rank"] == r]), base)
            v = V.judge([V.COMPARABLE_TOL - x for x in above])
            verdicts.append(v)
            parts.append(f"{llm}/{bench}: r={r} − r={ref} {V.fmt(above, 1, ' pt')} → {v}")
    return C.verdict_of(parts, verdicts, "no extra-rank runs")


def open_claims(df: pd.DataFrame, ranks: pd.DataFrame | None = None,
                questions: Sequence[str] = QUESTIONS) -> list[C.Claim]:
    """The open questions' claims with evidence and verdict (df: runs_frame of every run; ranks: its
    ranks_frame, needed for the allocation claim)."""
    scale = C.scale_of(df)
    ranks = ranks if ranks is not None else pd.DataFrame()
    makers = {
        "MT-acc": lambda: multitask_acc_claim(df), "MT-alloc": lambda: multitask_alloc_claim(ranks),
        "SC-data": lambda: scaling_data_claim(df), "SC-model": lambda: scaling_model_claim(df),
        "RK-qf": lambda: rank_claim(df, "qf-lora"), "RK-both": lambda: rank_claim(df, "qf-lora+llm-lora"),
        "SD-setups": lambda: seeds_setup_claim(df), "SD-best-rank": lambda: seeds_best_rank_claim(df),
    }
    empty = df.empty or "study" not in df
    return [_claim(cid, C.Verdict(V.NOT_RESOLVABLE, "no runs", resolve=C.NOT_RUN_RESOLVE) if empty else makers[cid](),
                   scale)
            for cid, (_, q) in OPEN_CLAIMS.items() if q in questions]
