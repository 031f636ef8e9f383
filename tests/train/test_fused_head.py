"""On CPU, TRL's fused LM head scores only labelled positions once tuneops patches it: same loss and gradients,
and the LM head sees only the trained tokens (prompt and padding positions are never projected)."""

import copy

import torch


def _loss_and_grad(model, ids, labels):
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    grad = model.model.embed_tokens.weight.grad
    return out.loss.detach(), (grad.clone() if grad is not None else None)


def test_cpu_fused_head_scores_only_trained_positions(tiny_model_dir, monkeypatch):
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from tuneops.train import sft

    # TRL's own decision (an earlier training in this process may have patched it already); undone after the test
    original = getattr(trl_utils._use_triton, "_tuneops_original", trl_utils._use_triton)
    monkeypatch.setattr(trl_utils, "_use_triton", original)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    full, compact = copy.deepcopy(base), copy.deepcopy(base)
    add_fused_lm_head(full)
    add_fused_lm_head(compact)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (3, 12), generator=gen)
    labels = ids.clone()
    labels[:, :7] = -100          # the prompt
    labels[2, 9:] = -100          # padding at the end of a shorter row
    n_trained = int((labels[:, 1:] != -100).sum())

    seen = []
    real_apply = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        seen.append(hidden.shape[0])
        return real_apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    want = _loss_and_grad(full, ids, labels)
    assert seen == [3 * 11]                 # TRL's CPU default: every position through the LM head
    assert sft.score_only_trained_positions() and sft.score_only_trained_positions()   # idempotent
    got = _loss_and_grad(compact, ids, labels)
    assert seen[-1] == n_trained < 3 * 11   # patched: only the trained positions
    assert torch.allclose(got[0], want[0], atol=1e-6), (got[0], want[0])
    assert torch.allclose(got[1], want[1], atol=1e-6)
    # and it is the ordinary next-token cross-entropy on the trained positions
    logits = base(input_ids=ids).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                           ignore_index=-100)
    assert torch.allclose(got[0], ce, atol=1e-5)
