"""The parameter ledger: full-size counts on the meta device against docs/protocol.md §2."""
import json

import pytest

from qformer_peft import cli, params
from qformer_peft.params import KEYS, parameter_ledger

# docs/protocol.md §2 (derived). The Q-Former figure there, 185,659,392, is BERT-base with 30,522 word
# embeddings; LAVIS adds the "[DEC]" token and resizes to 30,523 (transformers' conversion does the
# same), so the Q-Former the paper trained has one more 768-wide row.
QFORMER = 185_659_392 + 768
QUERY_TOKENS, VIT_LAYERNORM = 24_576, 2_816
PROJECTION = {"flan-t5-xl": 1_574_912, "vicuna-7b": 3_149_824}
QF_PER_R = {"self_attn": 36_864, "cross_attn": 44_544, "ffn": 184_320, "all": 265_728}
LLM_PER_R = {"flan-t5-xl": {"attn": 589_824, "ffn": 1_032_192}, "vicuna-7b": {"attn": 524_288, "ffn": 1_449_984}}


def run(setup, qf=None, llm=None, rank=None):
    return dict(setup=setup, qf_sublayers=qf, llm_targets=llm, rank=rank)


@pytest.fixture(scope="module")
def t5_rows():
    grid = [run("baseline")] + [run("qf-lora", s, None, 1) for s in QF_PER_R] + [
        run("qf-fft+llm-lora", None, t, 1) for t in ("attn", "ffn")] + [
        run("qf-lora", "all", None, 8), run("qf-lora+llm-lora", "all", "all", 8)]
    return parameter_ledger("flan-t5-xl", grid)


def test_flan_t5_xl_figures_equal_the_protocol(t5_rows):
    extras = QUERY_TOKENS + PROJECTION["flan-t5-xl"] + VIT_LAYERNORM
    baseline = t5_rows[0]
    assert (baseline["qformer_full"], baseline["extras"], baseline["total"]) == (QFORMER, extras, QFORMER + extras)
    assert baseline["pct_of_baseline"] == 100.0 and baseline["pct_of_qformer"] is None and baseline["rank"] is None
    by = {(r["setup"], r["qf_sublayers"], r["llm_targets"], r["rank"]): r for r in t5_rows}
    for sublayers, per_r in QF_PER_R.items():
        row = by[("qf-lora", sublayers, None, 1)]
        assert (row["qformer_lora"], row["llm_lora"], row["qformer_full"]) == (per_r, 0, 0)
        assert row["total"] == per_r + extras
    for targets, per_r in LLM_PER_R["flan-t5-xl"].items():
        row = by[("qf-fft+llm-lora", None, targets, 1)]
        assert (row["llm_lora"], row["qformer_full"], row["pct_of_qformer"]) == (per_r, QFORMER, None)
    # the "done when" figures
    assert by[("qf-lora", "all", None, 8)]["qformer_lora"] == 2_125_824
    both = by[("qf-lora+llm-lora", "all", "all", 8)]
    assert (both["qformer_lora"], both["llm_lora"]) == (2_125_824, 12_976_128)
    assert both["pct_of_baseline"] == round(100 * (2_125_824 + 12_976_128 + extras) / (QFORMER + extras), 4)
    assert both["pct_of_qformer"] == round(100 * (2_125_824 + 12_976_128) / QFORMER, 4)
    assert all(list(r) == list(KEYS) for r in t5_rows)


def test_vicuna_7b_figures_equal_the_protocol():
    rows = parameter_ledger("vicuna-7b", [run("qf-fft+llm-lora", None, t, 1) for t in ("attn", "ffn")])
    assert [r["llm_lora"] for r in rows] == [LLM_PER_R["vicuna-7b"]["attn"], LLM_PER_R["vicuna-7b"]["ffn"]]
    assert rows[0]["extras"] == QUERY_TOKENS + PROJECTION["vicuna-7b"] + VIT_LAYERNORM


def test_params_command_prints_one_json_list_and_a_table(monkeypatch, capsys):
    monkeypatch.setattr(params, "paper_grid", lambda: [run("baseline"), run("qf-lora", "self_attn", None, 2)])
    assert cli.main(["params", "--llm", "flan-t5-xl", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [list(r) for r in rows] == [list(KEYS)] * 2
    assert rows[1]["qformer_lora"] == 2 * QF_PER_R["self_attn"] and rows[1]["llm_targets"] is None
    assert cli.main(["params", "--llm", "flan-t5-xl"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:4] == ["setup", "qf_sublayers", "llm_targets", "rank"]
    assert table[3].split()[:5] == ["qf-lora", "self_attn", "-", "2", "73,728"]


def test_rank_scaling_equals_a_direct_count_at_rank_8():
    # The ledger counts rank 1 and scales; peft at rank 8 must agree for every adapted group.
    from qformer_peft.params import count_run, parameter_ledger

    run = dict(setup="qf-lora+llm-lora", qf_sublayers="all", llm_targets="all", rank=8)
    (row,) = parameter_ledger("vicuna-7b", grid=[run])
    direct = count_run("vicuna-7b", **run)
    assert (row["qformer_lora"], row["llm_lora"]) == (direct["qformer_lora"], direct["llm_lora"])
