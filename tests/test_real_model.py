"""The real path on the embedded SmolLM2-135M-Instruct (slow: tens of seconds on 2 cores)."""

import pytest

from tuneops.data.bundled import json_extraction_rows
from tuneops.data.ingest import ingest_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    from tuneops.models.base import import_embedded
    from tuneops.store import Store

    store = Store(tmp_path_factory.mktemp("real-store"))
    base, created = import_embedded(store)
    assert created
    again, created_again = import_embedded(store)
    assert again.id == base.id and not created_again  # second import: reuse, no re-import
    return store, base


def test_import_pins_base_by_weights_hash(real_store):
    store, base = real_store
    assert base.id.startswith("base-") and base.id[5:] == base.weights_sha256[:16]
    assert base.license == "Apache-2.0" and 134_000_000 < base.num_parameters < 135_000_000
    assert store.blobs.verify_tree(base.tree)


def test_real_generation_is_coherent(real_store):
    from tuneops.eval.generate import generate_chat
    from tuneops.models.base import load_base

    store, base = real_store
    model, tok = load_base(store, base)
    (out,) = generate_chat(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]],
                           max_new_tokens=16)
    assert "Paris" in out["text"]


def test_a_few_real_training_steps(real_store):
    from tests.conftest import tiny_recipe
    from tuneops.pipeline import run_recipe

    store, base = real_store
    train_rows, eval_rows = json_extraction_rows(16, 4, seed=3)
    ingest_rows(store, train_rows, name="tiny-train")
    ingest_rows(store, eval_rows, name="tiny-eval")
    recipe = tiny_recipe(base.id, method={"r": 8, "alpha": 16}, eval={"suites": ["json_extraction"],
                         "max_new_tokens": 40, "batch_size": 4},
                         train={"max_steps": 4, "batch_size": 4, "learning_rate": 5e-4, "threads": 2},
                         gates=[{"metric": "json_extraction.valid_json", "min_value": 0.0}])
    out = run_recipe(store, recipe)
    losses = [e.payload["loss"] for e in store.run_events(out.run.id, "metrics")]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses)
    assert losses[-1] < losses[0]
    assert out.report.metrics["json_extraction.valid_json"]["n"] == 4
    assert out.artifact.lineage["base"] == base.id
