"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, and fresh stores.

Set TUNEOPS_TEST_PG_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres) to also run
the store-level tests against a real PostgreSQL server; .ci/run starts one.
"""

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PG_URL = os.environ.get("TUNEOPS_TEST_PG_URL")


@pytest.fixture(scope="session", autouse=True)
def signing_key(tmp_path_factory):
    """Every test (and every CLI subprocess it starts: the variables are in os.environ) signs with one
    ed25519 key made for the session in a temp dir, never the user's own keys. A fresh store trusts it
    on its first signature; tests of untrusted or revoked keys make their own."""
    from tuneops.release.signing import generate_key

    saved = {k: os.environ.get(k) for k in ("TUNEOPS_KEY_DIR", "TUNEOPS_SIGNING_KEY")}
    folder = tmp_path_factory.mktemp("signing-keys")
    os.environ["TUNEOPS_KEY_DIR"] = str(folder)
    os.environ.pop("TUNEOPS_SIGNING_KEY", None)
    key = generate_key(folder)
    yield key
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer (from the embedded GGUF), saved once per session."""
    from transformers import AutoTokenizer

    from tuneops.models.base import embedded_gguf_path

    gguf = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm-tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(smollm_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random Llama that speaks SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _pg_database_url(server_url: str | None = None) -> str:
    """A fresh, empty database on the test PostgreSQL server (or on ``server_url``)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"tuneops_test_{uuid.uuid4().hex[:10]}"
    server_url = server_url or PG_URL
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite"] + (["postgresql"] if PG_URL else []))
def store(request, tmp_path):
    """A fresh store; store-level tests run once on SQLite and once on PostgreSQL when available."""
    from tuneops.store import Store

    url = _pg_database_url() if request.param == "postgresql" else None
    s = Store(tmp_path / "store", db_url=url)
    yield s
    s.engine.dispose()


@pytest.fixture
def sqlite_store(tmp_path):
    from tuneops.store import Store

    return Store(tmp_path / "store")


@pytest.fixture
def tiny_env(sqlite_store, tiny_model_dir):
    """A SQLite store holding the tiny base and the bundled task's train/eval datasets."""
    from tuneops.data.bundled import json_extraction_rows
    from tuneops.data.ingest import ingest_rows
    from tuneops.models.base import import_local

    base, _ = import_local(sqlite_store, tiny_model_dir, name="tiny-llama")
    train_rows, eval_rows = json_extraction_rows(16, 6, seed=1)
    ingest_rows(sqlite_store, train_rows, name="tiny-train")
    ingest_rows(sqlite_store, eval_rows, name="tiny-eval")
    return sqlite_store, base


def tiny_recipe(base_id: str, **overrides):
    """A recipe sized for the tiny model: a handful of steps, short generations."""
    from tuneops.train.recipe import parse_recipe

    spec = {
        "name": "tiny", "base": base_id, "data": {"train": "tiny-train", "eval": "tiny-eval"},
        "method": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 8, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0, "threads": 2},
        "eval": {"suites": ["json_extraction", {"use": "forgetting", "per_tag": 2}], "max_new_tokens": 6,
                 "batch_size": 8},
        # A random tiny model cannot learn the task in 8 steps; the task gate only asks it not to get worse.
        "gates": [{"metric": "json_extraction.field_accuracy", "max_relative_drop": 1.0},
                  {"metric": "forgetting.accuracy", "max_relative_drop": 0.05}],
        "target": {"alias": "tiny", "stage": "production"},
    }
    for key, value in overrides.items():
        spec[key] = value
    return parse_recipe(spec, source="tiny recipe")
