"""Offline word-level tokenizers for the embedded models (the Q-Former and the LLM each get one).

The embedded presets cannot download BERT's or T5's vocabularies, so their tokenizers are built here
from the words of the synthetic benchmarks: one id per word, case kept (the paper keeps case), and
punctuation such as ( ) : . , { } split off as tokens of their own, so "(a)" is "(", "a", ")".
They are ordinary `PreTrainedTokenizerFast` objects: saved with `save_pretrained` next to the model
and read back with `AutoTokenizer.from_pretrained`, with no hub access.
"""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
# Fixed ids so that configs can rely on them: pad is 0 in both (T5 and BERT use 0 too).
LLM_SPECIALS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "bos_token": "<s>"}
QFORMER_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}

# Whitespace first, then every punctuation character becomes its own token.
_PRE_TOKENIZER = pre_tokenizers.Sequence(
    [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
)


def split_words(texts: Iterable[str]) -> list[str]:
    """The distinct pieces the tokenizers would see in `texts`, sorted (so order of input never matters)."""
    pieces: set[str] = set()
    for text in texts:
        pieces.update(piece for piece, _ in _PRE_TOKENIZER.pre_tokenize_str(text))
    return sorted(pieces)


def word_tokenizer(words: Iterable[str], *, role: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (any strings: they are split like model input is).

    role "llm": specials <pad>=0 </s>=1 <unk>=2 <s>=3 <image>=4 (bos only used by decoder-only LLMs);
    role "qformer": specials [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3.
    No special tokens are added automatically: `models.inputs.make_batch` adds them explicitly,
    the same way for these tokenizers and for the real BERT / T5 / LLaMA ones.
    """
    if role == "llm":
        specials, extra = LLM_SPECIALS, [IMAGE_TOKEN]
    elif role == "qformer":
        specials, extra = QFORMER_SPECIALS, []
    else:
        raise ValueError(f"word_tokenizer: role must be 'llm' or 'qformer', got {role!r}")
    reserved = list(specials.values()) + extra
    vocab = {token: i for i, token in enumerate(reserved)}
    for word in split_words(words):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials["unk_token"]))
    backend.pre_tokenizer = _PRE_TOKENIZER
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **specials,
        additional_special_tokens=extra,
        padding_side="right",
        truncation_side="left",  # docs/protocol.md §3: long prompts lose their start
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer
