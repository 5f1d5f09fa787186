"""Tiny reward-model folders and tokenizers for the rollout-layer and PPO tests."""

from __future__ import annotations

from jaxalign.models import ModelConfig, init_model, save_pretrained


def tiny_config(vocab: int, **extra) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                       num_kv_heads=1, max_position_embeddings=128, **extra)


def save_reward_model(folder, vocab: int, tokenizer=None) -> None:
    """A random tiny ``*ForSequenceClassification`` folder (with ``tokenizer`` saved beside it, if given)."""
    save_pretrained(init_model(tiny_config(vocab), head="score", seed=2), folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def bpe_tokenizer(texts):
    """A byte-level BPE of 300 tokens trained on ``texts``: it can encode anything, differently."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")


def narrow_tokenizer():
    """A three-word vocabulary: almost every word of real text becomes its unknown token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "hello": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]")
