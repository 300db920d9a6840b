"""A base model's build report (build_report.json) as the Markdown page beside its weights."""
from __future__ import annotations

from typing import Any


def report_markdown(report: dict[str, Any]) -> str:
    """build_report.md: the headline numbers of build_report.json."""
    s, q = report["stages"], report.get("quality", {})
    lines = [f"# Base model {report['name']}", "",
             f"preset {report['key']['preset']}, LLM {report['key']['llm']}, seed {report['key']['seed']}, "
             f"data version {report['key']['data_version']}, build version {report['key']['build_version']}", ""]
    v = s["stage1_vision"]
    lines += ["## Stage 1: vision encoder (dense labels, then frozen)" + (" - reused" if v.get("reused") else ""),
              "held-out attribute accuracy (majority-class reference in brackets):", ""]
    for k, val in v["quality"].items():
        if k != "majority":
            ref = v["quality"]["majority"].get(k)
            lines.append(f"- {k}: {val}" + (f" ({ref})" if ref is not None else ""))
    if "stage2_text" in s:
        t = s["stage2_text"]
        lines += ["", f"## Stage 2: language model ({t['objective']}, {t['steps']} steps)",
                  f"held-out perplexity {t['quality']['perplexity_before']} -> {t['quality']['perplexity']}"]
    else:
        lines += ["", "## Stage 2: no text stage (the LLM trains alongside the Q-Former in stage 3)"]
    t = s["stage3_qformer"]
    start = f", starting from {s['qformer_source']['from']}'s Q-Former" if "qformer_source" in s else ""
    lines += ["", f"## Stage 3: Q-Former on held-in tasks ({t['steps']} steps, LLM {t['llm']}{start})",
              f"val loss by epoch: {[h['val_loss'] for h in t['history']]}"]
    if q:
        h, sh, ch = q["heldin"], q["heldin_shuffled"], q["heldin_chance"]
        lines += ["", "## Quality", "", "| held-in (val) | model | shuffled images | blind prior |",
                  "|---|---|---|---|",
                  f"| VQA exact match | {h['vqa_em']} | {sh['vqa_em']} | {ch['vqa_em']} |",
                  f"| caption CIDEr | {h['caption_cider']} | {sh['caption_cider']} | {ch['caption_cider']} |",
                  f"| caption BLEU-4 | {h['caption_bleu4']} | {sh['caption_bleu4']} | {ch['caption_bleu4']} |", "",
                  "VQA exact match by question type: " + ", ".join(f"{k} {v}" for k, v in h["vqa_by_type"].items()), ""]
        for bench in ("iconqa", "scienceqa"):
            z = q.get(f"zero_shot_{bench}", {})
            lines.append(f"- zero-shot {bench} val: " + (f"{z['accuracy']} (chance {z['chance']}, n {z['n']})"
                                                          if "accuracy" in z else z.get("skipped", "not measured")))
        a = q.get("adaptability")
        if a:
            c = a["heldin_vqa_em"]
            held_out = (f"; held-out test {a['test_before']} -> {a['test_after']} ({a['test_gain']:+} ± "
                        f"{a['test_gain_se']} paired SE, n {a['test_n']})" if "test_gain" in a else "")
            rate = f" at lr {a['lr']:g}" if "lr" in a else ""
            lines += [f"- adaptability ({a['setup']}, {a['steps']} steps{rate} on {a['train_items']} IconQA items): val "
                      f"{a['val_before']} -> {a['val_after']} (val picks the epoch; chance {a['chance']}){held_out}",
                      f"- what adapting costs on held-in VQA: base {c['base']}, adapted {c['adapted']}, adapter "
                      f"switched off {c.get('adapter_off')}"]
    lines += ["", "## Time (wall s; CPU s in brackets)", ""]
    lines += [f"- {k}: {v} ({report['cpu_s'].get(k)})" for k, v in report["time_s"].items()]
    lines += [f"- load average at start / end: {report['machine']['load_average_start']} / "
              f"{report['machine'].get('load_average_end')} on {report['machine']['cpus']} CPUs", ""]
    return "\n".join(lines)
