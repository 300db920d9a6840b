"""Golden prompt strings (docs/protocol.md §3, as the paper's code built them), targets, cleaning, left truncation."""
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from qformer_peft.data import Record
from qformer_peft.templates import candidates, clean, letter, options_text, prompt, target, truncate_left

SQA = Record(id="7", dataset="scienceqa", split="test", image="x.png", question="Which animal's legs are adapted "
             "for wading?", choices=("bar-tailed godwit", "Arctic fox"), answer=0,
             context="Godwits live near water.", lecture="An adaptation is an inherited trait!")
ICON = Record(id="12", dataset="iconqa", split="val", image="x.png", question="How many dots are there?",
              choices=("3", "5", "9"), answer=2)
VIZ = Record(id="VizWiz_val_00000001", dataset="vizwiz", split="val", image="x.jpg", question="What is this? ",
             answers=("soup", "tomato soup", "tomato soup", "soup", "unanswerable", "soup", "tomato soup",
                      "can", "soup", "tomato soup"))
FLICKR = Record(id="1000092795", dataset="flickr30k", split="test", image="x.jpg", question="",
                answers=("Two young guys with shaggy hair look at their hands.", "Two friends enjoy time."))


def test_scienceqa_golden_prompt_has_braces_newline_terminated_options_and_cleaning():
    # "!" is removed from the lecture (cleaning), options each end with "\n" (the code's loop), no period
    assert prompt(SQA) == ("Context: {Godwits live near water. An adaptation is an inherited trait} "
                           "Question: {Which animal's legs are adapted for wading?} "
                           "Options: {(a) bar-tailed godwit\n(b) Arctic fox\n} Answer:")


def test_scienceqa_empty_hint_keeps_the_codes_leading_space():
    no_hint = Record(id="8", dataset="scienceqa", split="test", image=None, question="Q?", choices=("x",),
                     answer=0, context="", lecture="L.")
    assert prompt(no_hint) == "Context: { L.} Question: {Q?} Options: {(a) x\n} Answer:"


def test_iconqa_vizwiz_flickr_golden_prompts():
    assert prompt(ICON) == "<Image> Question: How many dots are there? Options: (a) 3 (b) 5 (c) 9. Short answer:"
    assert prompt(VIZ) == "<Image> Question: What is this?  Short answer:"
    assert prompt(FLICKR) == "<Image> A short image description:"


def test_options_letters_and_targets():
    assert options_text(ICON) == "(a) 3 (b) 5 (c) 9"
    assert options_text(SQA) == "(a) bar-tailed godwit\n(b) Arctic fox\n"
    assert candidates(ICON) == ["(a) 3", "(b) 5", "(c) 9"]
    assert target(ICON) == "(c) 9" and target(SQA) == "(a) bar-tailed godwit"
    assert letter(0) == "a" and letter(25) == "z"
    with pytest.raises(ValueError):
        letter(26)


def test_open_ended_targets_majority_with_earliest_tie_and_first_caption():
    assert target(VIZ) == "soup"  # soup 4 x, tomato soup 4 x: the earlier one wins the tie
    assert target(FLICKR) == "Two young guys with shaggy hair look at their hands."
    with pytest.raises(ValueError, match="no answers"):
        target(Record(id="1", dataset="vizwiz", split="test", image="x", question="q"))


def test_clean_strips_only_the_four_characters_and_trailing_spaces():
    assert clean("Hi! a*b #c; d  ") == "Hi ab c d"
    assert clean("Keep Case: (a) x\n") == "Keep Case: (a) x\n"


def _word_tokenizer(text: str) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation(behavior="isolated")])
    for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text):
        vocab.setdefault(piece, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation(behavior="isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def test_truncate_left_keeps_the_last_tokens_verbatim():
    text = prompt(SQA)
    tok = _word_tokenizer(text)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert truncate_left(text, tok, max_tokens=len(ids)) == text  # fits: unchanged
    cut = truncate_left(text, tok, max_tokens=12)
    assert text.endswith(cut)  # the start is lost, the end is verbatim
    assert tok(cut, add_special_tokens=False)["input_ids"] == ids[-12:]
    assert cut == "bar-tailed godwit\n(b) Arctic fox\n} Answer:"


def test_truncate_left_without_offsets_falls_back_to_decoding():
    class NoOffsets:  # a slow tokenizer: one token per word, no offset mapping
        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            if return_offsets_mapping:
                raise NotImplementedError
            return {"input_ids": text.split()}

        def decode(self, ids):
            return " ".join(ids)

    assert truncate_left("one two three four", NoOffsets(), max_tokens=2) == "three four"
    assert truncate_left("one two", NoOffsets(), max_tokens=5) == "one two"
