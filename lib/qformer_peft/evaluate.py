"""Evaluation: candidate ranking, generation, and the benchmarks' metrics (docs/protocol.md §5).

Multiple choice is scored by ranking, not generation: each candidate "(<letter>) <choice>" gets the
LLM's summed token NLL given image and prompt, and the lowest wins. Ranking is batched per question:
the vision tower, the Q-Former and (for T5) the LLM encoder run once per question, and only the
decoder (T5) or the whole LLM (LLaMA: prompt + candidate is one sequence) runs once per candidate.
`candidate_nll_loop` is the one-candidate-at-a-time reference the tests and the benchmark compare to.

Open-ended sets generate: VizWiz is scored with VQA accuracy, Flickr30k with CIDEr-D and BLEU-4.
pycocoevalcap's scorers are reproduced here (its tokenizer needs java): same n-gram statistics,
tested against values computed with pycocoevalcap 1.2. Every metric is on the 0-100 scale papers
print (CIDEr can exceed 100).
"""
from __future__ import annotations

import contextlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput

from .models.inputs import IGNORE, forward, image_features, make_batch, unwrap

# The number each benchmark's early stopping and headline use (higher is better for all).
PRIMARY = {"scienceqa": "accuracy", "iconqa": "accuracy", "vizwiz": "vqa_acc", "flickr30k": "cider"}
MULTIPLE_CHOICE = ("scienceqa", "iconqa")
# LAVIS's generation settings: VQA short answers and captions (beam search, at least one token).
GENERATION = {"vizwiz": {"max_new_tokens": 10}, "flickr30k": {"max_new_tokens": 30}}


@dataclass(frozen=True)
class Example:
    """One item as the engine feeds it: the image, the instruction, and what counts as right."""

    id: str
    image: str                          # path (or loader reference) of the image
    prompt: str                         # the filled template (same text for Q-Former and LLM)
    target: str                         # training target: "(b) text", a short answer, or a caption
    candidates: tuple[str, ...] = ()    # multiple choice: every "(<letter>) <choice>"
    answer: int | None = None           # index of the gold candidate
    answers: tuple[str, ...] = ()       # VizWiz: the 10 human answers; Flickr30k: reference captions
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)


# --- model scoring ---------------------------------------------------------------------------------

def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed NLL of the labelled tokens of each row: logits [N, T, V], labels [N, T] (-100 ignored) -> [N]."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")  # [N, T]
    return ce.sum(dim=1)


def _llm_embeds(model, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The LLM's input embeddings with the projected query outputs scattered into the image placeholders
    (the three lines of InstructBlipForConditionalGeneration.forward): [N, L, D]."""
    m = unwrap(model)
    embeds = m.get_input_embeddings()(input_ids)
    mask = (input_ids == m.config.image_token_id).unsqueeze(-1)
    return embeds.masked_scatter(mask, features.to(embeds.dtype))


@torch.no_grad()
def candidate_nll(bundle, image_embeds: torch.Tensor, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                  *, max_prompt_tokens: int = 128, model=None) -> list[torch.Tensor]:
    """Summed token NLL of every candidate of every question, batched.

    image_embeds: the frozen ViT's output per question [Q, P+1, Dv] (models.inputs.encode_images or the
    feature cache). Returns Q tensors, the i-th of shape [len(candidates[i])].
    """
    model = bundle.model if model is None else model
    lm = unwrap(model).language_model
    owner = torch.tensor([i for i, cands in enumerate(candidates) for _ in cands], device=image_embeds.device)
    flat = [c for cands in candidates for c in cands]
    rows = make_batch(bundle, None, [prompts[i] for i in owner.tolist()], flat, max_prompt_tokens=max_prompt_tokens)
    rows = {k: v.to(image_embeds.device) for k, v in rows.items()}
    if bundle.llm_kind == "t5":
        # encoder once per question, decoder once per candidate
        per_q = make_batch(bundle, None, list(prompts), None, max_prompt_tokens=max_prompt_tokens)
        per_q = {k: v.to(image_embeds.device) for k, v in per_q.items()}
        feats = image_features(model, image_embeds, per_q["qformer_input_ids"], per_q["qformer_attention_mask"])
        embeds = _llm_embeds(model, per_q["input_ids"], feats.pooler_output)  # [Q, Lp, D]
        encoded = lm.get_encoder()(inputs_embeds=embeds, attention_mask=per_q["attention_mask"]).last_hidden_state
        out = lm(encoder_outputs=BaseModelOutput(last_hidden_state=encoded[owner]),
                 attention_mask=per_q["attention_mask"][owner], labels=rows["labels"],
                 decoder_attention_mask=rows["decoder_attention_mask"])
        nll = token_nll(out.logits, rows["labels"])
    else:
        # the Q-Former once per question; prompt + candidate is one LLaMA sequence
        first = [owner.tolist().index(i) for i in range(len(prompts))]
        feats = image_features(model, image_embeds, rows["qformer_input_ids"][first],
                               rows["qformer_attention_mask"][first])
        embeds = _llm_embeds(model, rows["input_ids"], feats.pooler_output[owner])
        logits = lm(inputs_embeds=embeds, attention_mask=rows["attention_mask"]).logits
        nll = token_nll(logits[:, :-1], candidate_labels(bundle, rows["labels"])[:, 1:])
    return list(nll.split([len(c) for c in candidates]))


def candidate_labels(bundle, labels: torch.Tensor) -> torch.Tensor:
    """The tokens a candidate is scored on. LLaMA: without the EOS that closes a training target, as the public
    Vicuna InstructBLIP code scores candidates (tokenized without an EOS); T5: with it, as its tokenizer appends
    one to every candidate there too."""
    if bundle.llm_kind != "llama":
        return labels
    labels = labels.clone()
    last = (labels != IGNORE).long().cumsum(dim=1).argmax(dim=1)   # the last scored position of each row
    labels[torch.arange(len(labels), device=labels.device), last] = IGNORE
    return labels


@torch.no_grad()
def candidate_nll_loop(bundle, image_embeds: torch.Tensor, prompts: Sequence[str],
                       candidates: Sequence[Sequence[str]], *, max_prompt_tokens: int = 128, model=None) -> list[torch.Tensor]:
    """The reference: one full forward pass per (question, candidate), through transformers' own forward
    (on the unwrapped model: the adapters sit inside its modules, and peft's tuner would add AdaLoRA's
    penalty to a loss that is not used here)."""
    model = unwrap(bundle.model if model is None else model)
    out = []
    for i, (prompt, cands) in enumerate(zip(prompts, candidates)):
        scores = []
        for cand in cands:
            batch = make_batch(bundle, None, [prompt], [cand], max_prompt_tokens=max_prompt_tokens)
            batch = {k: v.to(image_embeds.device) for k, v in batch.items()}
            logits = forward(model, batch, image_embeds=image_embeds[i:i + 1]).logits
            labels = candidate_labels(bundle, batch["labels"])
            scores.append(token_nll(logits, labels) if bundle.llm_kind == "t5"
                          else token_nll(logits[:, :-1], labels[:, 1:]))
        out.append(torch.cat(scores))
    return out


@torch.no_grad()
def generate(bundle, image_embeds: torch.Tensor, prompts: Sequence[str], *, max_new_tokens: int, num_beams: int = 5,
             max_prompt_tokens: int = 128, model=None) -> list[str]:
    """Greedy/beam generation from cached ViT outputs [B, P+1, Dv] (transformers' InstructBLIP generate,
    with the vision tower skipped)."""
    model = bundle.model if model is None else model
    lm = unwrap(model).language_model
    batch = make_batch(bundle, None, list(prompts), None, max_prompt_tokens=max_prompt_tokens)
    batch = {k: v.to(image_embeds.device) for k, v in batch.items()}
    feats = image_features(model, image_embeds, batch["qformer_input_ids"], batch["qformer_attention_mask"])
    embeds = _llm_embeds(model, batch["input_ids"], feats.pooler_output)
    tok = bundle.llm_tokenizer
    kwargs = dict(inputs_embeds=embeds, attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
                  num_beams=num_beams, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if bundle.llm_kind == "llama":
        out = lm.generate(input_ids=batch["input_ids"], **kwargs)
        out = out[:, batch["input_ids"].shape[1]:]  # decoder-only generate returns the prompt too
    else:
        out = lm.generate(**kwargs)
    return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]


# --- evaluating a split ----------------------------------------------------------------------------

def evaluate(bundle, examples: Sequence[Example], benchmark: str, embeds_of: Callable[[Sequence[Example]], torch.Tensor],
             *, batch_size: int = 16, max_prompt_tokens: int = 128, num_beams: int = 5, model=None,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             progress: bool = False, desc: str = "eval") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and per-item predictions of `examples` on one benchmark.

    embeds_of(examples) -> [B, P+1, Dv]: the frozen ViT's outputs (cached or computed). The model is
    put in eval mode and left there.
    """
    from tqdm import tqdm  # the terminal bar: in a notebook (no ipywidgets) tqdm.auto only warns

    model = bundle.model if model is None else model
    model.eval()
    preds: list[dict[str, Any]] = []
    chunks = [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        with autocast():
            embeds = embeds_of(chunk)
            if benchmark in MULTIPLE_CHOICE:
                scores = candidate_nll(bundle, embeds, [e.prompt for e in chunk], [e.candidates for e in chunk],
                                       max_prompt_tokens=max_prompt_tokens, model=model)
            else:
                texts = generate(bundle, embeds, [e.prompt for e in chunk], num_beams=num_beams,
                                 max_prompt_tokens=max_prompt_tokens, model=model, **GENERATION[benchmark])
        for j, ex in enumerate(chunk):
            row: dict[str, Any] = {"id": ex.id}
            if benchmark in MULTIPLE_CHOICE:
                nll = scores[j].float().cpu()
                pred = int(nll.argmin())
                row.update(pred=pred, answer=ex.answer, correct=pred == ex.answer, pred_text=ex.candidates[pred],
                           nll=[round(float(v), 6) for v in nll])
            else:
                row.update(pred_text=texts[j], answers=list(ex.answers))
            preds.append(row)
    return metrics_of(benchmark, examples, preds), preds


def metrics_of(benchmark: str, examples: Sequence[Example], preds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if benchmark in MULTIPLE_CHOICE:
        correct = [bool(p["correct"]) for p in preds]
        out: dict[str, Any] = {"accuracy": accuracy(correct), "n": len(correct)}
        if benchmark == "scienceqa":
            out["categories"] = scienceqa_categories([e.meta for e in examples], correct)
        return out
    if benchmark == "vizwiz":
        return {"vqa_acc": vqa_accuracy([p["pred_text"] for p in preds], [e.answers for e in examples]),
                "n": len(preds)}
    if benchmark == "flickr30k":
        cands = [p["pred_text"] for p in preds]
        refs = [e.answers for e in examples]
        return {"cider": cider(cands, refs), "bleu4": bleu4(cands, refs), "n": len(preds)}
    raise ValueError(f"no metrics for benchmark {benchmark!r}; choose one of {', '.join(PRIMARY)}")


# --- multiple-choice metrics ------------------------------------------------------------------------

def accuracy(correct: Sequence[bool]) -> float | None:
    """Percent of True; None for an empty set (a category with no items has no accuracy)."""
    return 100.0 * sum(bool(c) for c in correct) / len(correct) if len(correct) else None


SCIENCEQA_SUBJECTS = {"NAT": "natural science", "SOC": "social science", "LAN": "language science"}


def scienceqa_categories(metas: Sequence[Mapping[str, Any]], correct: Sequence[bool]) -> dict[str, float | None]:
    """The official ScienceQA evaluator's breakdown (utils_evaluate.py), in percent.

    NAT/SOC/LAN by subject; TXT: the hint (context) is non-empty; IMG: has an image; NO: neither hint
    nor image; G1-6 / G7-12 by grade ("grade1".."grade12"). meta keys: subject, grade, has_hint
    (or hint/context), has_image (or image).
    """
    def has(meta: Mapping[str, Any], flag: str, raw: tuple[str, ...]) -> bool:
        if flag in meta:
            return bool(meta[flag])
        return any(bool(meta.get(k)) for k in raw)

    def grade(meta: Mapping[str, Any]) -> int:
        g = str(meta.get("grade", ""))
        digits = re.sub(r"\D", "", g)
        if not digits:
            raise ValueError(f"ScienceQA item without a grade ('grade1'..'grade12'): meta={dict(meta)!r}")
        return int(digits)

    groups: dict[str, Callable[[Mapping[str, Any]], bool]] = {
        **{k: (lambda m, s=s: m.get("subject") == s) for k, s in SCIENCEQA_SUBJECTS.items()},
        "TXT": lambda m: has(m, "has_hint", ("hint", "context")),
        "IMG": lambda m: has(m, "has_image", ("image",)),
        "NO": lambda m: not has(m, "has_hint", ("hint", "context")) and not has(m, "has_image", ("image",)),
        "G1-6": lambda m: 1 <= grade(m) <= 6,
        "G7-12": lambda m: 7 <= grade(m) <= 12,
    }
    out = {k: accuracy([c for m, c in zip(metas, correct) if pick(m)]) for k, pick in groups.items()}
    out["Avg"] = accuracy(correct)
    return out


# --- VQA accuracy (VizWiz) -------------------------------------------------------------------------
# The normalisation of the official VQA / VizWiz evaluation (vqaEval.py): punctuation, digits as
# numerals, articles dropped, common contractions restored.

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id": "I'd", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "shant": "shan't", "shed": "she'd",
    "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "somebodys": "somebody's",
    "someones": "someone's", "somethings": "something's", "thats": "that's", "thered": "there'd",
    "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "wasnt": "wasn't", "wed": "we'd", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_answer(text: str) -> str:
    """vqaEval.py's processPunctuation + processDigitArticle."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """One question's VQA accuracy in [0, 1]: min(#humans who gave the answer / 3, 1), averaged over the
    10 ways of leaving one human out, as the official evaluation does (3 matches of 10 give 0.9)."""
    if not answers:
        raise ValueError("vqa_score: a question without human answers cannot be scored")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    scores = [min(1.0, sum(g == pred for j, g in enumerate(gts) if j != i) / 3.0) for i in range(len(gts))]
    return sum(scores) / len(scores)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float | None:
    """Mean VQA accuracy in percent."""
    if len(predictions) != len(answers):
        raise ValueError(f"vqa_accuracy: {len(predictions)} predictions but {len(answers)} answer lists")
    return 100.0 * sum(vqa_score(p, a) for p, a in zip(predictions, answers)) / len(answers) if answers else None


# --- captioning metrics (Flickr30k) ------------------------------------------------------------------
# pycocoevalcap's CiderScorer (CIDEr-D: clipped tf-idf n-gram cosine, Gaussian length penalty, x10)
# and BleuScorer (corpus BLEU, "closest" reference length). Its PTB tokenizer is java: here text is
# lower-cased and punctuation split off and dropped, which is what that tokenizer does to plain captions.

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def caption_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _ngrams(words: Sequence[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider(candidates: Sequence[str], references: Sequence[Sequence[str]], *, n: int = 4, sigma: float = 6.0) -> float | None:
    """Corpus CIDEr-D x 100 (pycocoevalcap's score x 100, as captioning papers print it)."""
    if len(candidates) != len(references):
        raise ValueError(f"cider: {len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        return None
    cands = [_ngrams(caption_tokens(c), n) for c in candidates]
    refs = [[_ngrams(caption_tokens(r), n) for r in rs] for rs in references]
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for g in r})
    log_n = math.log(float(len(refs)))

    def vec(counts: Counter):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            v[k][g] = tf * (log_n - math.log(max(1.0, df[g])))
            norm[k] += v[k][g] ** 2
            if k == 1:  # sic: pycocoevalcap measures length in bigrams
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for c, rs in zip(cands, refs):
        vc, nc, lc = vec(c)
        total = [0.0] * n
        for r in rs:
            vr, nr, lr = vec(r)
            penalty = math.exp(-((lc - lr) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vc[k].items())
                if nc[k] != 0 and nr[k] != 0:
                    val /= nc[k] * nr[k]
                total[k] += val * penalty
        scores.append(10.0 * (sum(total) / n) / len(rs))
    return 100.0 * sum(scores) / len(scores)


def bleu4(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float | None:
    """Corpus BLEU-4 x 100 as pycocoevalcap computes it (clipped counts, closest reference length)."""
    if len(candidates) != len(references):
        raise ValueError(f"bleu4: {len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        return None
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * 4, [0] * 4
    test_len = ref_len = 0
    for cand, rs in zip(candidates, references):
        words = caption_tokens(cand)
        ref_words = [caption_tokens(r) for r in rs]
        max_counts: Counter = Counter()
        for r in ref_words:
            max_counts |= _ngrams(r)
        for g, c in _ngrams(words).items():
            correct[len(g) - 1] += min(max_counts.get(g, 0), c)
        for k in range(4):
            guess[k] += max(0, len(words) - k)
        test_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
    score = 1.0
    for k in range(4):
        score *= (correct[k] + tiny) / (guess[k] + small)
    score **= 1.0 / 4
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
    return 100.0 * score

