"""The chat template and the loss mask: what training trains on, proven before step one."""

import pytest

from tuneops.errors import InvalidInput
from tuneops.train.template import (default_system_prompt, preflight, render_masked, tokenize_chat, tokenize_rows,
                                    apply_template_override)

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "age of Bob, 42?"}, {"role": "assistant", "content": '{"age": 42}'}]


@pytest.fixture
def tok(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


def trained_text(tok, t):
    return tok.decode([i for i, lab in zip(t.input_ids, t.labels) if lab != -100])


def test_every_assistant_turn_and_its_eos_is_trained_nothing_else(tok):
    t = tokenize_chat(tok, CHAT, max_length=None)
    assert t.trained_turns == 2
    assert trained_text(tok, t) == 'Hello there!<|im_end|>{"age": 42}<|im_end|>'
    marked = render_masked(tok, t)
    assert "[[Hello there!<|im_end|>]]" in marked and '[[{"age": 42}<|im_end|>]]' in marked
    assert "hi" not in trained_text(tok, t) and "SmolLM" not in trained_text(tok, t)


def test_last_turn_only_and_train_on_prompt(tok):
    last = tokenize_chat(tok, CHAT, max_length=None, all_turns=False)
    assert trained_text(tok, last) == '{"age": 42}<|im_end|>'
    everything = tokenize_chat(tok, CHAT, max_length=None, train_on_prompt=True)
    assert everything.labels == everything.input_ids


def test_the_generation_prompt_is_the_training_prefix(tok):
    """What serving sends for turn k (generation prompt) is exactly the tokens training saw before turn k."""
    t = tokenize_chat(tok, CHAT, max_length=None)
    for start, _end, k in t.spans:
        served = tok.apply_chat_template(CHAT[:k], tokenize=True, add_generation_prompt=True, return_dict=False)
        assert t.input_ids[:start] == list(served)


def test_truncation_is_counted_not_silent(tok):
    rows = [{"messages": CHAT}, {"messages": CHAT[:2]}]  # 62 and 36 tokens; the first reply ends at token 35
    report = preflight(tok, rows, max_length=34)
    toks = tokenize_rows(tok, rows, max_length=34, report=report)
    assert all(len(t.input_ids) <= 34 for t in toks)
    assert report.over_max_length == 2 and report.truncated_tokens == (62 - 34) + (36 - 34)
    assert report.longest == 62 and report.rows_without_trained_tokens == 0


def test_rows_whose_trained_tokens_are_all_cut_are_left_out_and_counted(tok):
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    rows = [{"messages": CHAT}, {"messages": long_prompt}, {"messages": CHAT[:2]}]
    report = preflight(tok, rows, max_length=64)
    toks = tokenize_rows(tok, rows, max_length=64, report=report)
    assert len(toks) == 2 and all(any(lab != -100 for lab in t.labels) for t in toks)
    assert report.rows_without_trained_tokens == 1
    assert any("row 2" in p and "max_length 64" in p for p in report.problems)
    with pytest.raises(InvalidInput, match="every row loses all its trained tokens"):
        tokenize_rows(tok, [{"messages": long_prompt}], max_length=64)


def test_default_system_prompt_is_found_and_applied(tok):
    assert default_system_prompt(tok).startswith("You are a helpful AI assistant named SmolLM")
    report = preflight(tok, [{"messages": CHAT}], max_length=256)
    assert report.default_system_prompt and not report.problems
    assert "You are a helpful AI assistant named SmolLM" in report.example


def test_preflight_catches_a_template_that_drops_the_end_of_turn_token(tok):
    tok.chat_template = tok.chat_template.replace("<|im_end|>", "")
    with pytest.raises(InvalidInput, match=r"row 1, messages\[1\]: the loss mask leaves out the end-of-turn token"):
        preflight(tok, [{"messages": CHAT}], max_length=256)


def test_preflight_catches_a_template_that_renders_history_differently(tok):
    """A template that marks the *last* message differently renders turn 1 one way when it is being generated
    and another way inside the whole chat: serving and training would disagree."""
    tok.chat_template = tok.chat_template.replace("<|im_start|>' + message['role']",
                                                  "<|im_start|>' + (message['role'] if not loop.last else "
                                                  "message['role'] + ' (latest)')")
    assert "(latest)" in tok.chat_template
    with pytest.raises(InvalidInput, match="renders the prompt for this assistant turn"):
        preflight(tok, [{"messages": CHAT}], max_length=256)


def test_preflight_catches_a_template_that_adds_text_to_replies(tok):
    tok.chat_template = tok.chat_template.replace("message['content']", "message['content'] + ' [end]'")
    with pytest.raises(InvalidInput, match="does not cover exactly the assistant's reply"):
        preflight(tok, [{"messages": CHAT}], max_length=256)


def test_template_override_file_and_errors(tok, tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text(tok.chat_template)
    class T:
        chat_template = None
    assert apply_template_override(T, "t.jinja", base_dir=tmp_path) == tok.chat_template
    with pytest.raises(InvalidInput, match="no such template file"):
        apply_template_override(T, "missing.jinja", base_dir=tmp_path)
    with pytest.raises(InvalidInput, match="not a valid Jinja template"):
        apply_template_override(T, "{% for x in %}", base_dir=tmp_path)
