"""Distillation on the tiny random Llama: the student's KL to a teacher falls (logits), or it learns the
teacher's greedy replies (responses); a teacher on another tokenizer is refused for logit distillation."""

import pytest
import torch

from tuneops.errors import InvalidInput
from tuneops.train.recipe import LoraSpec, ObjectiveSpec, TrainSpec
from tuneops.train.sft import train

ROWS = [{"messages": [{"role": "user", "content": f"Name colour number {i}."},
                      {"role": "assistant", "content": f"Colour {i} is blue, green and red."}]} for i in range(8)]
METHOD = LoraSpec(r=8, alpha=16, dropout=0.0)


@pytest.fixture(scope="module")
def teacher_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its transformer layers perturbed: same tokenizer and embeddings, so a LoRA
    student can move towards it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".layers." in name and "norm" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    out = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def padded(tok, rows):
    from tuneops.train.template import tokenize_rows

    toks = tokenize_rows(tok, rows, max_length=256)
    n = max(len(t.input_ids) for t in toks)
    ids = torch.tensor([t.input_ids + [tok.pad_token_id] * (n - len(t.input_ids)) for t in toks])
    labels = torch.tensor([t.labels + [-100] * (n - len(t.labels)) for t in toks])
    mask = torch.tensor([[1] * len(t.input_ids) + [0] * (n - len(t.input_ids)) for t in toks])
    return ids, mask, labels


def kl_to_teacher(student, teacher, tok, temperature) -> float:
    """Mean over assistant tokens of KL(teacher_T || student_T), computed here without TRL."""
    ids, mask, labels = padded(tok, ROWS)
    with torch.no_grad():
        s = (student(input_ids=ids, attention_mask=mask).logits[:, :-1] / temperature).log_softmax(-1)
        t = (teacher(input_ids=ids, attention_mask=mask).logits[:, :-1] / temperature).log_softmax(-1)
    keep = labels[:, 1:] != -100
    return float((t.exp() * (t - s)).sum(-1)[keep].mean())


def load(path, adapter=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return (PeftModel.from_pretrained(model, adapter) if adapter else model).eval()


def test_logit_distillation_lowers_the_kl_to_the_teacher(tiny_model_dir, teacher_dir, tmp_path):
    from transformers import AutoTokenizer

    T = 2.0
    # one batch holds every row, so each logged loss is the KL over all of them at that step's weights
    result = train(tiny_model_dir, ROWS, method=METHOD, out_dir=tmp_path / "adapter", base_id="base-tiny",
                   objective=ObjectiveSpec(kind="distill", teacher="teacher", mode="logits", temperature=T),
                   spec=TrainSpec(max_steps=8, batch_size=8, learning_rate=3e-2, warmup_ratio=0.0, threads=1),
                   teacher_path=teacher_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    teacher = load(teacher_dir)
    before = kl_to_teacher(load(tiny_model_dir), teacher, tok, T)
    student = load(tiny_model_dir, result.adapter_dir)
    after = kl_to_teacher(student, teacher, tok, T)
    # the first step sees the untrained student (LoRA B = 0): its loss is the base's softened KL, computed above
    # independently — so TRL's loss gets the temperature, the assistant-token mask and padding-free rows right
    assert result.losses[0]["loss"] == pytest.approx(before, rel=1e-3)
    assert after < 0.7 * before, (before, after)
    kls = [e["loss"] for e in result.losses]
    assert kls[-1] < 0.7 * kls[0], kls
    assert result.extra["distill_mode"] == "logits" and result.extra["kl_last"] < result.extra["kl_first"]
    ids, mask, _ = padded(tok, ROWS[:2])
    with torch.no_grad():
        a = result.model.eval()(input_ids=ids, attention_mask=mask).logits
        b = student(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(a, b), (a - b).abs().max()
    got = [float(f"{k:.6g}") for k in kls]
    assert got == pytest.approx(GOLDEN_DISTILL_LOGITS, rel=1e-3), got


# Golden losses of the fixed tiny distillation runs here (TRL 1.16.0, PEFT 0.21.2, transformers 5.23, torch 2.13
# CPU, one thread). If an upgrade moves them, find the change (TRL's KL/temperature handling, the chat template,
# generation defaults for the teacher's replies) before re-pinning; say why in the commit.
GOLDEN_DISTILL_LOGITS = [0.0032624, 0.00179382, 0.00153688, 0.00139181, 0.00247702, 0.00128904, 0.00194523,
                         0.00126573]
GOLDEN_DISTILL_RESPONSES = [10.715121, 10.636189, 10.575791, 10.500855, 10.528023, 10.52225]


def test_logit_distillation_refuses_a_teacher_on_another_tokenizer(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<tuneops-extra-token>"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.resize_token_embeddings(len(tok))
    other = tmp_path / "other"
    model.save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(InvalidInput) as e:
        train(tiny_model_dir, ROWS, method=METHOD, out_dir=tmp_path / "adapter", base_id="base-tiny",
              objective=ObjectiveSpec(kind="distill", teacher="other", mode="logits"),
              spec=TrainSpec(max_steps=1, batch_size=4, threads=1), teacher_path=other)
    assert e.value.message.startswith("objective.teacher:") and "tokenizer" in e.value.message
    assert "objective.mode: responses" in e.value.hint
    # same number of ids but different tokens: the vocabularies are compared, not just their sizes
    from tuneops.train.distill import check_same_tokenizer

    with pytest.raises(InvalidInput, match="tokenizer differs"):
        check_same_tokenizer(AutoTokenizer.from_pretrained(tiny_model_dir), model, tok, model)
    assert not (tmp_path / "adapter").exists()


def test_response_distillation_trains_on_the_teachers_greedy_replies(tiny_model_dir, teacher_dir, tmp_path):
    from transformers import AutoTokenizer

    from tuneops.train.distill import teacher_replies

    teacher = load(teacher_dir)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    result = train(tiny_model_dir, ROWS, method=METHOD, out_dir=tmp_path / "adapter", base_id="base-tiny",
                   objective=ObjectiveSpec(kind="distill", teacher="teacher", mode="responses",
                                           max_completion_length=8),
                   spec=TrainSpec(max_steps=6, batch_size=4, learning_rate=3e-2, warmup_ratio=0.0, threads=1),
                   teacher_path=teacher_dir)
    assert result.extra["distill_mode"] == "responses"
    assert result.extra["teacher_rows_generated"] == len(ROWS) and result.extra["teacher_rows_empty"] == 0

    # the first reply, generated here straight from transformers: greedy, 8 new tokens at most
    prompt = tok.apply_chat_template(ROWS[0]["messages"][:1], add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)
    out = teacher.generate(**prompt, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)
    direct = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert result.extra["teacher_example"] == direct and direct

    # the student now finds the teacher's replies likelier than the base did
    replies = teacher_replies(teacher, tok, [r["messages"][:1] for r in ROWS], max_new_tokens=8)
    assert replies[0] == direct
    distilled = [{"messages": r["messages"][:1] + [{"role": "assistant", "content": a}]} for r, a in zip(ROWS, replies)]
    ids, mask, labels = padded(tok, distilled)

    def nll(model):
        with torch.no_grad():
            return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)

    student = load(tiny_model_dir, result.adapter_dir)
    before, after = nll(load(tiny_model_dir)), nll(student)
    assert after < before - 0.05, (before, after)
    with torch.no_grad():  # the trained model and the reloaded adapter give the same logits
        assert torch.equal(result.model.eval()(input_ids=ids, attention_mask=mask).logits,
                           student(input_ids=ids, attention_mask=mask).logits)
    got = [round(e["loss"], 6) for e in result.losses]
    assert got == pytest.approx(GOLDEN_DISTILL_RESPONSES, rel=1e-3), got
