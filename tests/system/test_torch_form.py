"""The torch form of a model (workers.torchform), what workers run: equal to
sentence-transformers on tiny random models of each architecture and pooling, made of the
very tensors transformers loaded; a model it cannot take runs with transformers."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from helpers_models import POOLINGS, build, with_pooling

from benchmarks.corpus import load_texts
from supervisor.conf.settings import ModelSettings
from supervisor.daemon.models import preload

ARCHITECTURES = ("bert", "bert-no-types", "roberta", "xlm-roberta")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: build(kind, root / kind) for kind in (*ARCHITECTURES, "xlm-roberta-lower",
                                                          "distilbert")}


def _texts() -> list[str]:
    texts = load_texts()  # the project's corpus
    # Over every model's limit (64 or 128 tokens): truncated; and a few short ones.
    return [*texts, " ".join(texts[:12]), " ".join(texts[12:30]), "Ok.", "A", " spaced  out "]


def _worst_cosine(ours: list[list[float]], reference: object) -> float:
    worst = 1.0
    for a, b in zip(ours, reference):  # type: ignore[call-overload]
        b = b.tolist()
        dot = sum(x * y for x, y in zip(a, b))
        worst = min(worst, dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))
    return worst


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_the_torch_form_equals_sentence_transformers(models: dict[str, Path], kind: str,
                                                     pooling: str, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    path = with_pooling(models[kind], pooling, tmp_path / "model")
    encoder = preload({"tiny": ModelSettings(path=str(path), batch_tokens=2048)})["tiny"]
    assert (encoder.form, encoder.note) == ("torch", "")
    texts = _texts()
    ours = encoder.encode(texts)
    reference = SentenceTransformer(str(path), device="cpu").encode(
        texts, normalize_embeddings=True)
    assert len(ours) == len(texts) and len(ours[0]) == 32
    assert _worst_cosine(ours, reference) >= 0.9999
    # Truncated at the model's limit, special tokens included.
    assert max(encoder.token_counts(texts)) == encoder.max_tokens == (
        128 if kind.startswith("bert") else 64)


def test_do_lower_case_is_applied_as_sentence_transformers_does(models: dict[str, Path]
                                                                ) -> None:
    from sentence_transformers import SentenceTransformer

    path = str(models["xlm-roberta-lower"])
    encoder = preload({"tiny": ModelSettings(path=path)})["tiny"]
    texts = ["Upper And lower", "UPPER AND LOWER", *load_texts()[:50]]
    ours = encoder.encode(texts)
    assert ours[0] == ours[1]  # the cased tokenizer sees both lowercased
    reference = SentenceTransformer(path, device="cpu").encode(texts, normalize_embeddings=True)
    assert _worst_cosine(ours, reference) >= 0.9999


def test_the_torch_form_is_made_of_the_tensors_transformers_loaded(models: dict[str, Path]
                                                                   ) -> None:
    from workers.embedding import TransformersEncoder

    full = TransformersEncoder("tiny", str(models["bert"]), 0, 8192)
    full.share()
    light = full.torch_form()
    loaded = {t.data_ptr() for t in full.module.state_dict().values()}
    mine = [p.data_ptr() for p in light.module.parameters()]
    assert mine and set(mine) <= loaded  # no copies
    assert all(p.is_shared() for p in light.module.parameters())
    # The pooler is all it leaves out.
    size = sum(t.numel() for k, t in full.module.state_dict().items()
               if not k.startswith("pooler."))
    assert sum(p.numel() for p in light.module.parameters()) == size


def test_a_model_the_torch_form_cannot_take_runs_with_transformers(
        models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    from sentence_transformers import SentenceTransformer

    path = str(models["distilbert"])
    with caplog.at_level(logging.INFO, logger="supervisor.daemon"):
        encoder = preload({"tiny": ModelSettings(path=path)})["tiny"]
    assert encoder.form == "transformers"
    assert encoder.note == ("the torch form does not take it: model type distilbert is not "
                            "one it computes (bert, roberta, xlm-roberta)")
    fallbacks = [r.getMessage() for r in caplog.records if "workers run it with transformers"
                 in r.getMessage() and r.levelno == logging.WARNING]
    assert fallbacks == ["model tiny: workers run it with transformers (they import it, "
                         "about 2 s and 110 MiB more each): " + encoder.note]
    texts = load_texts()[:40]
    reference = SentenceTransformer(path, device="cpu").encode(texts, normalize_embeddings=True)
    assert _worst_cosine(encoder.encode(texts), reference) >= 0.9999


def test_a_torch_form_that_fails_its_probe_is_not_fatal(
        models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.torchform import CompactEncoder

    def broken(self: CompactEncoder, *args: object) -> None:
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(CompactEncoder, "forward", broken)
    encoder = preload({"tiny": ModelSettings(path=str(models["bert"]))})["tiny"]
    assert encoder.form == "transformers"
    assert encoder.note == "the torch form does not take it: RuntimeError: shapes do not match"
    assert len(encoder.encode(["still encodes"])[0]) == 32


def test_runtime_transformers_keeps_the_transformers_form(models: dict[str, Path]) -> None:
    encoder = preload({"tiny": ModelSettings(path=str(models["bert"]),
                                             runtime="transformers")})["tiny"]
    assert (encoder.form, encoder.note) == ("transformers", "")


def test_what_the_torch_form_refuses_is_named() -> None:
    from workers.torchform import Architecture, UnsupportedModel

    base = {"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4,
            "num_hidden_layers": 2, "hidden_act": "gelu", "pad_token_id": 0}
    assert Architecture.of(base).padding_idx is None
    assert Architecture.of({**base, "model_type": "xlm-roberta", "pad_token_id": 1}
                           ).padding_idx == 1
    for change, reason in [
            ({"model_type": "mpnet"}, "model type mpnet is not one it computes"),
            ({"position_embedding_type": "relative_key"}, "position_embedding_type relative_key"),
            ({"is_decoder": True}, "a decoder"),
            ({"hidden_act": "quick_gelu"}, "activation quick_gelu"),
            ({"num_attention_heads": 5}, "hidden_size 32 is not a multiple of 5 heads")]:
        with pytest.raises(UnsupportedModel) as refused:
            Architecture.of({**base, **change})
        assert str(refused.value).startswith(reason)
