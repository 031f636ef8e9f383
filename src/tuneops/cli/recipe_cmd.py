"""``tuneops recipe fields | schema | validate``: what a recipe may say, a JSON Schema for editors,
and a dry run that checks a recipe, its datasets and suites without training. Heavy imports stay
inside the commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Recipes: list the fields, print a JSON Schema, validate one without training.",
                  no_args_is_help=True)


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=False)


def _type_name(info) -> str:
    from typing import Literal, get_args, get_origin

    def name(ann) -> str:
        if get_origin(ann) is Literal:
            return "|".join(str(a) for a in get_args(ann))
        args = get_args(ann)
        if args and get_origin(ann) is not None and getattr(get_origin(ann), "__name__", "") in ("Union", "UnionType"):
            return " or ".join(name(a) for a in args)
        if args:
            return f"{getattr(get_origin(ann), '__name__', str(get_origin(ann)))}[{', '.join(name(a) for a in args)}]"
        return "null" if ann is type(None) else getattr(ann, "__name__", str(ann))

    return name(info.annotation)


def recipe_fields() -> list[dict]:
    """Every recipe field, dotted, with its type, default and description (from the pydantic models)."""
    from pydantic import BaseModel

    from tuneops.train.recipe import Recipe

    out: list[dict] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            path = f"{prefix}{name}"
            ann = info.annotation
            nested = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
            default = info.get_default(call_default_factory=True) if not info.is_required() else None
            if isinstance(default, BaseModel):
                default = None
            out.append({"field": path, "type": "section" if nested else _type_name(info),
                        "default": "(required)" if info.is_required() else json.dumps(default),
                        "description": info.description or (nested[0].__doc__ or "").strip().split("\n")[0]
                        if nested else info.description or ""})
            for sub in nested:
                if sub.__name__ not in ("Gate",):
                    walk(sub, path + ".")

    walk(Recipe, "")
    return out


@app.command("fields")
def fields(section: Optional[str] = typer.Argument(None, help="Only fields under this section (e.g. method)."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Every field a recipe may set, with its type, default and meaning."""
    from tuneops.cli.render import emit

    rows = [r for r in recipe_fields() if section is None or r["field"] == section or
            r["field"].startswith(section + ".")]
    if not rows:
        from tuneops.errors import InvalidInput

        raise InvalidInput(f"no recipe section {section!r}",
                           hint="try one of name, base, data, method, objective, train, eval, gates, target")
    emit(rows, as_json=as_json, title="recipe fields", columns=["field", "type", "default", "description"])


@app.command("schema")
def schema(out: Optional[Path] = typer.Option(None, "--out", help="Write to this file instead of stdout.")):
    """A JSON Schema of the recipe (for editors: YAML language servers read it)."""
    from tuneops.train.recipe import Recipe

    text = json.dumps(Recipe.model_json_schema(mode="validation"), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)


@app.command("validate")
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML."),
             probe: int = typer.Option(0, "--probe", min=0, max=20,
                                       help="Also train N steps on a sample to time this machine."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text.")):
    """Check a recipe, its datasets, suites and gates, and the chat template on every row, without
    training: steps, tokens, rows over max_length and an estimated time."""
    from tuneops.cli.render import emit_one, print_json, say
    from tuneops.pipeline import dry_run
    from tuneops.train.recipe import load_recipe

    parsed = load_recipe(recipe)
    result = dry_run(_store(), parsed, probe_steps=probe)
    if as_json:
        print_json(result)
        return
    pf = result["preflight"]
    summary = {k: result[k] for k in ("recipe", "base", "train", "rows", "method", "objective", "steps",
                                      "rows_per_step", "planned_tokens")}
    summary["suites"] = ", ".join(result["suites"])
    summary["gates"] = "; ".join(result["gates"]) or "(none)"
    summary["template sha256"] = pf["template_sha256"][:16]
    summary["longest row (tokens)"] = pf["longest"]
    summary["rows over max_length"] = f"{pf['over_max_length']} (max_length {pf['max_length']}, " \
                                      f"{pf['truncated_tokens']} tokens cut)"
    summary["default system prompt"] = pf["default_system_prompt"] or "(none)"
    est = result.get("estimate")
    summary["estimated train time"] = (f"{est['train_seconds']} s ({est['from']})" if est and est.get("train_seconds")
                                       else "unknown: run with --probe 2")
    emit_one(summary, as_json=False, title="recipe ok")
    from tuneops.pipeline import example_caption

    say(example_caption(parsed.objective), err=False)
    typer.echo(result["example"])
    if pf["over_max_length"]:
        say((f"warning: {pf['over_max_length']} row(s) longer than train.max_length {pf['max_length']} will be "
             f"truncated; raise max_length (the longest is {pf['longest']} tokens) or shorten them", "yellow"))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="recipe")
