"""Batched greedy chat generation: the one code path eval and the embedded server share."""

from typing import Callable, Sequence

import torch


def render_prompts(tokenizer, chats: Sequence[list[dict]]) -> list[str]:
    """Apply the base model's own chat template, exactly as training and serving do."""
    return [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in chats]


@torch.inference_mode()
def generate_chat(model, tokenizer, chats: Sequence[list[dict]], *, max_new_tokens: int = 64,
                  batch_size: int = 16, temperature: float = 0.0,
                  on_batch: Callable[[int], None] | None = None) -> list[dict]:
    """Greedy (or sampled) completions for a list of chats; returns text and token counts per chat."""
    prompts = render_prompts(tokenizer, chats)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every row ends at the prompt
    outputs: list[dict] = []
    try:
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: dict[int, dict] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            out = model.generate(**enc, **kwargs)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                toks = new_tokens[row]
                eos = (toks == tokenizer.eos_token_id).nonzero()
                finished = len(eos) > 0
                n = int(eos[0, 0]) + 1 if finished else len(toks)
                results[i] = {
                    "text": tokenizer.decode(toks, skip_special_tokens=True).strip(),
                    "prompt_tokens": int(enc["attention_mask"][row].sum()),
                    "completion_tokens": n,
                    "finish_reason": "stop" if finished else "length",
                }
            if on_batch:
                on_batch(len(idx))
        outputs = [results[i] for i in range(len(prompts))]
    finally:
        tokenizer.padding_side = old_side
    return outputs
