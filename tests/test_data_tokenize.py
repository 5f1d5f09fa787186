"""Text examples -> token ids: boundaries, BOS/EOS, truncation, overlong policies, tokenizers."""

from __future__ import annotations

import numpy as np
import pytest

from data_fixtures import builtin_tokenizer, gpt2_tokenizer, needs_shared_data
from jaxalign.data import DataError, ExampleTokenizer, TextExample, load_tokenizer
from jaxalign.data.tokenize import Dropped


def pair(prompt, chosen, rejected, where="f.jsonl:7"):
    return TextExample(prompt, (((chosen, True),), ((rejected, True),)), where)


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_builtin_tokenizer_adds_bos_to_prompts_and_eos_to_completions():
    tok = builtin_tokenizer()
    example = ExampleTokenizer(tok, max_length=128)(pair("\n\nHuman: hi\n\nAssistant:", " Hello!", " Go away."))
    assert example.prompt.tolist() == [tok.bos_token_id] + encode(tok, "\n\nHuman: hi\n\nAssistant:")
    assert example.completions[0].tolist() == encode(tok, " Hello!") + [tok.eos_token_id]
    assert example.completions[1].tolist() == encode(tok, " Go away.") + [tok.eos_token_id]
    assert all(mask.all() for mask in example.loss_masks) and example.prompt.dtype == np.int32
    assert example.length == len(example.prompt) + sum(len(c) for c in example.completions)


@needs_shared_data
def test_gpt2_has_no_bos_and_splits_exactly_at_the_boundary():
    tok = gpt2_tokenizer()
    prompt, reply = "\n\nHuman: Hello\n\nAssistant:", " Hello world"
    example = ExampleTokenizer(tok, max_length=64)(TextExample(prompt, (((reply, True),),), "f:1"))
    assert example.prompt.tolist() == encode(tok, prompt)  # GPT-2's post-processor adds no BOS
    assert example.completions[0].tolist() == encode(tok, reply) + [50256]
    # Tokenized apart, the pieces equal the whole transcript here (the reply starts with a space).
    assert example.prompt.tolist() + example.completions[0].tolist()[:-1] == encode(tok, prompt + reply)


def test_chat_rendered_completions_get_no_extra_eos():
    tok = builtin_tokenizer()
    example = TextExample("\n\nHuman: hi\n\nAssistant:", (((" hello<|endoftext|>", True),),), "f:1", chat=True)
    ids = ExampleTokenizer(tok, max_length=64)(example).completions[0].tolist()
    assert ids == encode(tok, " hello") + [tok.eos_token_id]


def test_messages_pieces_become_loss_masks():
    tok = builtin_tokenizer()
    pieces = ((" hi<|endoftext|>", True), ("\n\nHuman: more\n\nAssistant:", False), (" ok<|endoftext|>", True))
    example = ExampleTokenizer(tok, max_length=64)(TextExample("\n\nHuman: a\n\nAssistant:", (pieces,), "f:1", chat=True))
    lengths = [len(encode(tok, text)) for text, _ in pieces]
    assert example.loss_masks[0].tolist() == [True] * lengths[0] + [False] * lengths[1] + [True] * lengths[2]
    everything = ExampleTokenizer(tok, max_length=64, loss_on_prompt=True)(
        TextExample("\n\nHuman: a\n\nAssistant:", (pieces,), "f:1", chat=True))
    assert everything.loss_masks[0].all() and everything.prompt_loss


def test_plain_text_without_bos_moves_the_first_token_into_the_prompt():
    tok = load_tokenizer("builtin")
    tok_ids = encode(tok, "hello there")
    no_bos = ExampleTokenizer(tok, max_length=64)
    no_bos.bos = None  # as for GPT-2
    example = no_bos(TextExample("", ((("hello there", True),),), "f:1"))
    assert example.prompt.tolist() == tok_ids[:1]
    assert example.completions[0].tolist() == tok_ids[1:] + [tok.eos_token_id]


def test_truncation_keeps_the_prompt_end_and_bos_then_cuts_completions():
    tok = builtin_tokenizer()
    prompt = "\n\nHuman: " + "please tell me about gardening and cooking and travel " * 4 + "\n\nAssistant:"
    chosen, rejected = " " + "Sure, here is a long answer. " * 6, " No."
    to_tokens = ExampleTokenizer(tok, max_length=40, max_prompt_length=16)
    example = to_tokens(pair(prompt, chosen, rejected))
    full_prompt = [tok.bos_token_id] + encode(tok, prompt)
    assert example.truncated
    assert example.prompt.tolist() == [tok.bos_token_id] + full_prompt[-15:]  # keeps its end, leading into the reply
    assert tok.decode(example.prompt[-3:]).endswith("Assistant:")
    assert example.completions[0].tolist() == (encode(tok, chosen) + [tok.eos_token_id])[:24]
    assert example.completions[1].tolist() == encode(tok, rejected) + [tok.eos_token_id]  # fits: untouched
    assert len(example.prompt) + len(example.completions[0]) == 40


def test_overlong_raise_names_row_and_field_and_drop_drops():
    tok = builtin_tokenizer()
    long_prompt = pair("\n\nHuman: " + "word " * 50 + "\n\nAssistant:", " ok", " no")
    with pytest.raises(DataError, match=r"f.jsonl:7: field 'prompt': prompt is \d+ tokens, over the limit of 8"):
        ExampleTokenizer(tok, max_length=32, max_prompt_length=8, on_overlong="raise")(long_prompt)
    long_reply = pair("Q", " " + "word " * 50, " no")
    with pytest.raises(DataError, match=r"field 'chosen': prompt \+ chosen is \d+ tokens, over max_length 32"):
        ExampleTokenizer(tok, max_length=32, max_prompt_length=8, on_overlong="raise")(long_reply)
    dropped = ExampleTokenizer(tok, max_length=32, max_prompt_length=8, on_overlong="drop")(long_prompt)
    assert dropped == Dropped("overlong", "f.jsonl:7")


def test_load_tokenizer_builtin_and_raw_json(tmp_path):
    tok = load_tokenizer("builtin")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert 500 <= len(tok) <= 2048 and tok.chat_template
    tok.backend_tokenizer.save(str(tmp_path / "raw.json"))
    raw = load_tokenizer(str(tmp_path / "raw.json"))
    assert raw.eos_token == "<|endoftext|>" and raw.pad_token == raw.eos_token


@pytest.mark.parametrize("name", ["builtin", "builtin:alignment"])
def test_builtin_tokenizers_load_as_autotokenizer_would_without_importing_torch(name):
    """A fresh interpreter loads the built-in tokenizer without torch (which AutoTokenizer's import
    pulls in: seconds of every run's start-up), and it encodes, decodes and renders chats exactly
    as AutoTokenizer's load of the same folder does."""
    import json
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from jaxalign.data.builtin import TOKENIZERS

    text = "\n\nHuman: How do I fix a flat bicycle tire?\n\nAssistant: Find the hole first."
    script = ("import json, sys; from jaxalign.data import load_tokenizer; t = load_tokenizer(sys.argv[1]); "
              "print(json.dumps([t(sys.argv[2])['input_ids'], t.pad_token_id, 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script, name, text], capture_output=True, text=True, check=True)
    ids, pad, imported_torch = json.loads(done.stdout.splitlines()[-1])
    assert not imported_torch
    ours, auto = load_tokenizer(name), AutoTokenizer.from_pretrained(str(TOKENIZERS[name][0]))
    assert ids == ours(text)["input_ids"] == auto(text)["input_ids"] and pad == auto.pad_token_id
    assert ours.decode(ids) == auto.decode(ids)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert ours.apply_chat_template(chat, tokenize=False) == auto.apply_chat_template(chat, tokenize=False)
    assert (ours.bos_token_id, ours.eos_token_id, ours.model_max_length) == (
        auto.bos_token_id, auto.eos_token_id, auto.model_max_length)


def test_eos_is_required():
    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="no EOS token"):
        ExampleTokenizer(NoEos(), max_length=8)
