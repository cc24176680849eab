"""Tiny random checkpoints written by transformers itself (save_pretrained, safetensors), so the
converter and runtime are tested on the real layouts; and a small byte-level BPE tokenizer."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
COMMON = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)


@lru_cache(maxsize=1)
def tokenizer_json(vocab_size: int = 384) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["The quick brown fox jumps over the lazy dog. What is the capital of France? Paris."] * 50
    tok.train_from_iterator(text, trainer)
    return tok.to_str()


def sentencepiece_model(lines: int, **options) -> bytes:
    """A tiny BPE SentencePiece model with byte fallback, as Llama/Mistral vocabularies are,
    trained on `lines` generated lines (`options`: more trainer settings)."""
    import io
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    words = (
        "the quick brown fox jumps over lazy dog hello world tokenizer model byte fallback runtime "
        "python numpy stream text space naïve café déjà vu"
    ).split()
    text = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) for _ in range(lines)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=buf,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
        num_threads=1,
        **options,
    )
    return buf.getvalue()


def write_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").write_text(tokenizer_json())
    cfg = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "chat_template": CHATML,
        "added_tokens_decoder": {
            str(i): {"content": c, "special": True} for i, c in enumerate(["<unk>", "<|im_start|>", "<|im_end|>"])
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


def make_config(arch: str, **overrides):
    import transformers as tf

    kw = {**COMMON, **overrides}
    if arch == "llama":
        return tf.LlamaConfig(tie_word_embeddings=False, **kw)
    if arch == "llama3":
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64, "rope_theta": 500000.0}
        return tf.LlamaConfig(tie_word_embeddings=True, rope_parameters=rope, **kw)
    if arch == "qwen2":
        return tf.Qwen2Config(tie_word_embeddings=False, **kw)
    if arch == "mistral":
        return tf.MistralConfig(tie_word_embeddings=False, sliding_window=24, **kw)
    if arch == "bitnet":
        return tf.BitNetConfig(tie_word_embeddings=True, **kw)
    raise ValueError(arch)


def save_tiny(arch: str, folder: Path, seed: int = 0, **overrides) -> Path:
    """A random model of `arch` saved by transformers; norms and biases perturbed so a
    forgotten norm weight or bias shows up in the logits."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    config = make_config(arch, **overrides)
    cls = {
        "llama": tf.LlamaForCausalLM,
        "llama3": tf.LlamaForCausalLM,
        "qwen2": tf.Qwen2ForCausalLM,
        "mistral": tf.MistralForCausalLM,
        "bitnet": tf.BitNetForCausalLM,
    }[arch]
    return randomise_and_save(cls(config).eval(), folder)


def randomise_and_save(model, folder: Path, norm_base: float = 1.0):
    """Random weights (norms around `norm_base`: 0 for Gemma's 1+w norms), saved with the test
    tokenizer; returns the folder."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(norm_base + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.08)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)
    return folder


def random_ids(n: int, vocab: int = COMMON["vocab_size"], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=n)
