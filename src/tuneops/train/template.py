"""Chat template hygiene: how a chat row becomes training tokens and a loss mask, and the preflight
that proves it before step one.

Every row is rendered with the model's own chat template (``tokenizer.apply_chat_template`` — the
call eval and serving make). The loss mask is found by rendering, for each assistant turn, the
chat *up to* that turn with the generation prompt (exactly what serving feeds the model) and the
chat *through* that turn: the tokens in between are the assistant's reply and its end-of-turn
token. Both renderings must be token prefixes of the full row — a template that renders history
differently from how it renders the live turn (the ecosystem's most common silent bug) is refused,
naming the row. SmolLM2's template inserts a default system prompt when a chat has none; because
all three paths make this one call, training, eval and serving see the same system prompt, and the
preflight checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneops.errors import InvalidInput
from tuneops.store.ids import sha256_bytes


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken
    truncated: int = 0  # tokens cut by max_length
    trained_turns: int = 0
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, message index) per trained turn


@dataclass
class Preflight:
    """What the preflight checked and found (recorded on the run as the ``preflight`` event)."""

    template_sha256: str
    rows_checked: int
    rows: int
    max_length: int
    over_max_length: int = 0
    longest: int = 0
    truncated_tokens: int = 0
    # Rows whose trained tokens were all cut by max_length: they teach nothing (and a batch of only such rows
    # has no loss at all), so they are left out of training and counted here.
    rows_without_trained_tokens: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    default_system_prompt: str | None = None
    example: str = ""
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "example"}


def template_text(tokenizer) -> str:
    tpl = getattr(tokenizer, "chat_template", None)
    if not isinstance(tpl, str) or not tpl.strip():
        raise InvalidInput("the tokenizer has no chat template, so chat rows cannot be rendered",
                           hint="set train.chat_template to a Jinja template (file path or text)")
    return tpl


def template_sha256(tokenizer) -> str:
    return sha256_bytes(template_text(tokenizer).encode())


def apply_template_override(tokenizer, override: str | None, *, base_dir: Path | None = None,
                            where: str = "train.chat_template") -> str | None:
    """Install a recipe's chat-template override (a file path or the template text) on ``tokenizer``;
    returns the template text installed, or None when there is no override."""
    if not override:
        return None
    text = override
    if "{" not in override and "\n" not in override:  # a path, not Jinja
        path = Path(override)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise InvalidInput(f"{where}: no such template file {override!r}",
                               hint="give a Jinja file path (relative to the recipe) or the template text itself")
        text = path.read_text(encoding="utf-8")
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        ImmutableSandboxedEnvironment().parse(text)
    except Exception as e:  # jinja2.TemplateSyntaxError and friends
        raise InvalidInput(f"{where}: not a valid Jinja template ({e})", hint="fix the template syntax") from None
    tokenizer.chat_template = text
    return text


def _ids(tokenizer, messages: list[dict], *, generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                        return_dict=False)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def _where(row_no: int | None, turn: int) -> str:
    return (f"row {row_no}, " if row_no is not None else "") + f"messages[{turn}]"


def tokenize_chat(tokenizer, messages: list[dict], *, max_length: int | None, all_turns: bool = True,
                  train_on_prompt: bool = False, row_no: int | None = None) -> Tokenized:
    """Token ids and labels for one chat row: the loss on every assistant turn (or only the last),
    each turn's end-of-turn token included; with ``train_on_prompt`` on every token."""
    full = _ids(tokenizer, messages, generation_prompt=False)
    labels = list(full) if train_on_prompt else [-100] * len(full)
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not turns:
        raise InvalidInput(f"{_where(row_no, 0)}: the chat has no assistant turn, so there is nothing to learn",
                           hint="every training chat ends with an assistant reply")
    if not all_turns:
        turns = turns[-1:]
    trained, spans = 0, []
    for k in turns:
        prompt = _ids(tokenizer, messages[:k], generation_prompt=True)
        through = _ids(tokenizer, messages[:k + 1], generation_prompt=False)
        if full[:len(prompt)] != prompt:
            raise InvalidInput(
                f"{_where(row_no, k)}: the chat template renders the prompt for this assistant turn (what serving "
                "sends) differently from the same turn inside the whole chat (what training sees)",
                hint="fix the template so rendering is prefix-stable (no content that depends on later turns), "
                     "or set train.chat_template")
        if full[:len(through)] != through or len(through) <= len(prompt):
            raise InvalidInput(
                f"{_where(row_no, k)}: the chat template does not render this assistant turn as a suffix of its "
                "generation prompt", hint="fix the template (or set train.chat_template)")
        end = len(through)
        eos = tokenizer.eos_token_id
        if eos is not None and eos in through[len(prompt):]:  # stop at the end-of-turn token: what follows
            end = len(through) - through[::-1].index(eos)   # ("\n") is template layout, never generated
        for j in range(len(prompt), end):
            labels[j] = full[j]
        spans.append((len(prompt), end, k))
        trained += 1
    truncated = 0
    if max_length is not None and len(full) > max_length:
        truncated = len(full) - max_length
        full, labels = full[:max_length], labels[:max_length]
    return Tokenized(input_ids=full, labels=labels, truncated=truncated, trained_turns=trained, spans=spans)


def render_masked(tokenizer, tok: Tokenized, *, open_mark: str = "[[", close_mark: str = "]]") -> str:
    """The row as text with the trained (unmasked) spans marked ``[[…]]``: what the preflight prints."""
    out, cur, trained = [], [], None
    for t, lab in zip(tok.input_ids, tok.labels):
        on = lab != -100
        if trained is not None and on != trained:
            out.append((trained, tokenizer.decode(cur)))
            cur = []
        cur.append(t)
        trained = on
    if cur:
        out.append((trained, tokenizer.decode(cur)))
    return "".join(f"{open_mark}{text}{close_mark}" if on else text for on, text in out)


def default_system_prompt(tokenizer) -> str | None:
    """The system prompt the template inserts when a chat has none (SmolLM2 has one), or None."""
    probe = [{"role": "user", "content": "\u2063probe\u2063"}]
    with_system = [{"role": "system", "content": "\u2063sys\u2063"}, *probe]
    bare = tokenizer.apply_chat_template(probe, tokenize=False)
    explicit = tokenizer.apply_chat_template(with_system, tokenize=False)
    head_bare = bare.split("\u2063probe\u2063")[0]
    head_explicit = explicit.split("\u2063probe\u2063")[0]
    if head_bare == head_explicit.replace("\u2063sys\u2063", ""):
        return None
    # the inserted text sits where the explicit system content sits
    before, _, after = head_explicit.partition("\u2063sys\u2063")
    if head_bare.startswith(before) and head_bare.endswith(after):
        return head_bare[len(before):len(head_bare) - len(after)] or None
    return head_bare


def preflight(tokenizer, rows: list[dict], *, max_length: int, all_turns: bool = True, train_on_prompt: bool = False,
              sample: int = 64) -> Preflight:
    """Check the template and loss mask on a sample of rows (every row for length counts is the
    caller's job via :func:`tokenize_rows`), before any training step:

    - the mask covers exactly the assistant tokens and each turn's end-of-turn (EOS) token, nothing of
      the prompt (unless ``train_on_prompt``);
    - the serving-time generation prompt is a token prefix of the training row;
    - a row without a system message gets the same default system prompt as serving would insert.
    Raises InvalidInput naming the row on the first failure."""
    tpl_hash = template_sha256(tokenizer)
    eos = tokenizer.eos_token_id
    n = min(sample, len(rows))
    report = Preflight(template_sha256=tpl_hash, rows_checked=n, rows=len(rows), max_length=max_length,
                       default_system_prompt=default_system_prompt(tokenizer))
    for i in range(n):
        msgs = rows[i]["messages"]
        tok = tokenize_chat(tokenizer, msgs, max_length=None, all_turns=all_turns, train_on_prompt=train_on_prompt,
                            row_no=i + 1)
        for start, end, k in tok.spans:
            span = tok.input_ids[start:end]
            if eos is not None and eos not in span:
                raise InvalidInput(f"{_where(i + 1, k)}: the loss mask leaves out the end-of-turn token "
                                   f"{tokenizer.convert_ids_to_tokens(eos)!r}, so the model would never learn to stop",
                                   hint="fix the chat template so each assistant turn ends with the EOS token")
            content = msgs[k].get("content")
            if isinstance(content, str) and not msgs[k].get("tool_calls"):
                got = tokenizer.decode(span, skip_special_tokens=True).strip()
                if got != content.strip():
                    raise InvalidInput(
                        f"{_where(i + 1, k)}: the loss mask does not cover exactly the assistant's reply: it trains "
                        f"on {got[:80]!r} where the reply is {content.strip()[:80]!r}",
                        hint="the template adds or drops text around assistant turns; fix it or set "
                             "train.chat_template")
        if msgs and msgs[0].get("role") != "system" and report.default_system_prompt:
            rendered = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
            if report.default_system_prompt not in rendered:
                report.problems.append(f"row {i + 1}: the default system prompt is not applied")
        if i == 0:
            report.example = render_masked(tokenizer, tok)
    return report


def tokenize_rows(tokenizer, rows: list[dict], *, max_length: int, all_turns: bool = True,
                  train_on_prompt: bool = False, report: Preflight | None = None) -> list[Tokenized]:
    """Every row tokenized and masked; truncation counted into ``report`` (never silent).

    A row with no trained token left after truncation (its prompt fills ``max_length``) is dropped and
    counted (``rows_without_trained_tokens``, and the first row numbers in ``problems``); if no row is left,
    InvalidInput says to raise ``train.max_length``."""
    out, dropped = [], []
    for i, r in enumerate(rows, start=1):
        tok = tokenize_chat(tokenizer, r["messages"], max_length=max_length, all_turns=all_turns,
                            train_on_prompt=train_on_prompt, row_no=i)
        trained = sum(1 for lab in tok.labels if lab != -100)
        if report is not None:
            length = len(tok.input_ids) + tok.truncated
            report.longest = max(report.longest, length)
            if tok.truncated:
                report.over_max_length += 1
                report.truncated_tokens += tok.truncated
        if trained == 0:
            dropped.append(i)
            continue
        out.append(tok)
        if report is not None:
            report.tokens += len(tok.input_ids)
            report.trained_tokens += trained
    if dropped and report is not None:
        report.rows_without_trained_tokens += len(dropped)
        shown = ", ".join(map(str, dropped[:5])) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        report.problems.append(f"{len(dropped)} row(s) left out: max_length {max_length} cuts every trained token "
                               f"(row {shown}); raise train.max_length to keep them")
    if rows and not out:
        raise InvalidInput(f"every row loses all its trained tokens to max_length {max_length} (the prompts alone "
                           f"fill it)", hint="raise train.max_length, or shorten the prompts")
    return out
