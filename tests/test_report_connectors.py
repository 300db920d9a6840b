"""The index's connector section and claim-ledger rows (the connector study), and its table of what adapting costs on
held-in VQA, from run folders written as the engine writes them (fixtures/study_runs.py)."""
import re

from fixtures.study_runs import CONNECTOR_EFFECT, write_connector_study, write_heldin_runs, write_study

from qformer_peft import claim_ledger, claims, report
from qformer_peft import connector_study as cs
from qformer_peft import report_charts as rc
from test_report import FULL_SIZE

CHARTS = ("chart-cn-tokens", "chart-cn-alignment", "chart-cn-convergence", "chart-cn-cost")


def _page(runs_dir, tmp_path):
    return report.build_report(runs_dir, out=tmp_path / "reports", full_size=FULL_SIZE, log=lambda m: None).read_text()


def _ledger_rows(page):
    """claim id -> verdict, from the claim ledger's table (the first one after id='claims')."""
    start = page.index("id='claims'")
    table = page[start:page.index("</table>", start)]
    return dict(re.findall(r"<tr><td>([^<]+)</td>.*?<td class='[^']*'>([^<]+)</td>", table))


def test_the_index_has_a_connector_section_and_ledger_rows_for_the_connector_claims(tmp_path):
    runs_dir = write_study(tmp_path, ranks=(2,), seeds=(42, 43), benchmarks=("iconqa",), adalora=())
    write_connector_study(tmp_path)
    page = _page(runs_dir, tmp_path)
    section = page[page.index("id='connectors'"):page.index("id='oq-multitask'")]   # the connector study, then the open questions
    assert page.index("id='adalora'") < page.index("id='connectors'")
    for fid in CHARTS:
        start = section.index(f"id='{fid}'")
        assert section.index("<svg", start) < section.index("</figure>", start)
    assert "18 of 18 study runs done" in section and "pool16" in section and "bottleneck-gelu" in section
    assert "not run in this study" not in page
    ledger = _ledger_rows(page)
    for cid in cs.CLAIMS:                        # the ledger lists them, and the section repeats its own claims
        assert ledger[cid] == claims.HOLDS, cid
        assert page.count(f"<td>{cid}</td>") == 2
    for cid in [*claims.CLAIMS, "MT-acc", "SD-setups"]:  # beside the paper's and the open questions' claims
        assert cid in ledger or any(k.startswith(f"{cid}-") for k in ledger), cid   # params: a row per denominator
    # the connector runs stay out of the paper's Table 1 (its baseline row has the paper's runs only)
    assert "pool16" not in page[page.index("id='table1'"):page.index("id='figure2'")]
    assert report.external_references(page) == []


def test_connector_claims_are_ledger_claims_whose_verdict_follows_the_runs(tmp_path):
    write_connector_study(tmp_path, effects={**CONNECTOR_EFFECT, "pool16": -4.0, "bottleneck": -5.0})
    df = rc.runs_frame(tmp_path / "runs")
    rows = {c.id: c for c in claim_ledger.ledger(df, rc.ranks_frame(df), full_size=FULL_SIZE) if c.id in cs.CLAIMS}
    assert set(rows) == set(cs.CLAIMS) and all(isinstance(c, claims.Claim) for c in rows.values())
    assert rows["DeCo-acc"].verdict == rows["BA-linear"].verdict == claims.FAILS
    assert rows["BA-projector"].verdict == claims.HOLDS and rows["DeCo-conv"].verdict == claims.HOLDS
    c = rows["DeCo-acc"]
    assert c.statement == cs.CLAIMS["DeCo-acc"][0] and c.scale == "embedded"
    assert c.source.startswith("DeCo (arXiv 2405.20985)") and "not a claim of the paper" in c.source
    assert "pool16 55.9 vs qformer16-scratch 59.9, difference -3.95 pt [-4.07, -3.83] (n=3)" in c.evidence


def test_without_connector_runs_the_section_says_so_and_its_claims_are_not_resolvable(tmp_path):
    runs_dir = write_study(tmp_path, ranks=(2,), seeds=(42, 43), benchmarks=("iconqa",), adalora=())
    page = _page(runs_dir, tmp_path)
    section = page[page.index("id='connectors'"):page.index("id='oq-multitask'")]
    assert "Connector study: not run in this study" in section and "--extended" in section
    assert not any(f"id='{fid}'" in page for fid in CHARTS)
    ledger = _ledger_rows(page)
    assert all(ledger[cid] == claims.NOT_RESOLVABLE for cid in cs.CLAIMS)
    assert page.count("<td>DeCo-acc</td>") == 1                  # in the ledger only
    assert "What adapting costs on held-in VQA" not in page          # no run measured it


def test_the_index_shows_what_adapting_costs_on_heldin_vqa_per_setup(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    runs_dir = write_heldin_runs(tmp_path, base)
    write_study(tmp_path, ranks=(2,), seeds=(42,), benchmarks=("iconqa",), adalora=())  # runs without the field
    df = rc.runs_frame(runs_dir)
    t = rc.heldin_cost_table(df).set_index("setup")
    assert t.loc["qf-lora", ["runs", "heldin_limit", "adapted", "adapter_off", "base"]].tolist() == [2, 30, 50.5, 58.0,
                                                                                                    60.0]
    assert t.loc["baseline", "adapted"] == 40.0 and t.loc["baseline", "adapter_off"] != t.loc["baseline", "adapter_off"]
    assert df["heldin_adapted"].notna().sum() == 4                   # the other runs: NaN
    page = _page(runs_dir, tmp_path)
    part = page[page.index("id='heldin-cost'"):]
    part = part[:part.index("</table>")]
    assert re.search(r"<td>qf-lora</td>\s*<td>lora</td>\s*<td>2</td>\s*<td>30</td>\s*<td>50.50</td>\s*"
                     r"<td>58.00</td>\s*<td>60.00</td>", part)
    assert re.search(r"<td>baseline</td>\s*<td>lora</td>\s*<td>2</td>\s*<td>30</td>\s*<td>40.00</td>\s*<td>–</td>",
                     part)
    assert rc.base_heldin_vqa("tiny") != rc.base_heldin_vqa("tiny")  # a preset has no build report: NaN
