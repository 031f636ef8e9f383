"""Signing and release commands: ``tuneops keys …`` and ``tuneops registry sign|verify|deprecate|promote``.

typer and rich only at import time; the store and ``cryptography`` load inside the commands.

``register`` also (1) replaces the registry's ``promote`` with one that takes ``--use`` (the alias's
declared use), and (2) wraps ``tuneops init`` and ``tuneops quickstart`` so that, on a machine without a
signing key, they create one (and say where): an artifact registered without a key is unsigned and can
be neither promoted nor served.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import typer

from tuneops.cli.render import emit, emit_one, note, record_dict, say

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
MOVE_FIELDS = ("seq", "action", "from_artifact", "to_artifact", "actor", "at", "reason")


def _store(*, create: bool = False):
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=create)


def _store_if_any():
    from tuneops.errors import NotFound

    try:
        return _store()
    except NotFound:
        return None


def _artifact(store, ref: str):
    from tuneops.release.registry import resolve_alias

    return store.get_artifact(ref) if ref.startswith("ad-") else resolve_alias(store, ref)


def ensure_signing_key(store, *, err: bool = False) -> None:
    """Create a signing key if this machine has none, and have a store that trusts no key yet trust it;
    say what happened (a line only when something changed). A broken key is reported, not replaced."""
    from tuneops.errors import TuneopsError
    from tuneops.release.signing import ensure_key, trusted_keys

    try:
        before, _ = trusted_keys(store)
        key, created = ensure_key(store)
        after, _ = trusted_keys(store)
    except TuneopsError as e:
        say(("signing key: ", "yellow"), f"{e.message} — artifacts will be registered unsigned "
            f"(fix: {e.hint or 'tuneops keys init'})", err=True)
        return
    trusted = key.key_id in after and key.key_id not in before
    if created:
        say("signing key ", (key.key_id, "bold"), f" created at {key.path} (the default for this user"
            + ("; trusted in this store)" if trusted else ")") + " · share it with `tuneops keys export-public`",
            err=err)
    elif trusted:
        say(f"signing key {key.key_id} ({key.path}) is now trusted in this store", err=err)


def register(app: typer.Typer, registry_app: typer.Typer) -> None:
    """Mount this module's commands on the main app and the registry group."""
    keys_app = typer.Typer(help="Signing keys: init, list, trust, revoke, export-public.", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")

    # -- keys ------------------------------------------------------------------------------
    @keys_app.command("init")
    def keys_init(name: Optional[str] = typer.Option(None, help="Who holds the key (recorded where it is trusted; "
                                                                "default: $TUNEOPS_ACTOR or the OS user)."),
                  new: bool = typer.Option(False, "--new", help="Create a new pair even if a default key exists."),
                  as_json: bool = JSON):
        """Create an ed25519 key pair (the default signing key) and trust its public half in this store."""
        from tuneops.release.signing import _holder, generate_key, key_dir, load_key, trust_key, try_load_key

        key, _ = (None, None) if new else try_load_key()
        created = key is None
        if created:
            from tuneops.release.signing import default_key_id

            if not new and default_key_id():
                load_key()  # a key is named but cannot be loaded: say why instead of replacing it
            key = generate_key()
        store = _store_if_any()
        trusted = None
        if store is not None:
            _, trusted = trust_key(store, key.public_b64, name=name or _holder(), how="keys init")
        out = {"key_id": key.key_id, "created": created, "private_key": str(key.path), "public_key": key.public_b64,
               "default": True, "key_dir": str(key_dir()),
               "trusted_in": str(store.home) if store is not None else None,
               "newly_trusted": trusted}
        emit_one(out, as_json=as_json, title=f"signing key {key.key_id}")
        if store is None:
            note("no store here: trust it in a store with `tuneops keys trust` (or run `tuneops keys init` "
                 "there again)")

    @keys_app.command("list")
    def keys_list(as_json: bool = JSON):
        """Local private keys and the public keys this store trusts (revoked ones marked)."""
        from tuneops.release.signing import key_dir, local_keys, trusted_rows

        rows: dict[str, dict] = {}
        for k in local_keys():
            rows[k["key_id"]] = {"key_id": k["key_id"], "name": None,
                                 "local": "default" if k["default"] else ("unreadable" if k.get("error") else "yes"),
                                 "trusted": "no", "added_by": None, "since": None, "path": k["path"]}
        store = _store_if_any()
        for t in trusted_rows(store) if store is not None else []:
            row = rows.setdefault(t.key_id, {"key_id": t.key_id, "local": "no", "path": None})
            row.update(name=t.name, added_by=t.added_by, since=t.created_at,
                       trusted="revoked " + t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "yes")
        emit(list(rows.values()), as_json=as_json,
             title="signing keys (local: a private key here, in " + str(key_dir()) + "; trusted: by this store)",
             columns=("key_id", "name", "local", "trusted", "added_by", "since"))

    @keys_app.command("trust")
    def keys_trust(public_key: str = typer.Argument(..., metavar="FILE_OR_B64",
                                                    help="A file written by `tuneops keys export-public`, "
                                                         "a PEM public key, or the base64 key itself."),
                   name: str = typer.Option(..., help="Who holds the key (recorded)."), as_json: bool = JSON):
        """Trust a public key in this store: artifacts it signs can be promoted and served."""
        from tuneops.release.signing import trust_key

        row, created = trust_key(_store(), public_key, name=name)
        emit_one({**record_dict(row, ("key_id", "name", "added_by", "created_at")), "created": created},
                 as_json=as_json, title="trusted key" if created else "already trusted")

    @keys_app.command("revoke")
    def keys_revoke(key_id: str, reason: Optional[str] = typer.Option(None, help="Why (logged)."),
                    as_json: bool = JSON):
        """Revoke a trusted key: nothing it signed verifies any more (promote, rollback and serve refuse it)."""
        from tuneops.release.registry import aliases_of
        from tuneops.release.signing import revoke_key
        from tuneops.store.schema import ArtifactRecord

        store = _store()
        row = revoke_key(store, key_id, reason=reason)
        signed = [a.id for a in store.all(ArtifactRecord)
                  if isinstance(a.signature, dict) and a.signature.get("key_id") == key_id]
        affected = {a: aliases_of(store, a) for a in signed}
        emit_one({**record_dict(row, ("key_id", "name", "revoked_at")), "artifacts_signed": signed,
                  "aliases_now_refused": sorted({x for v in affected.values() for x in v}) or None},
                 as_json=as_json, title=f"revoked {key_id}")
        if signed and not as_json:
            note(f"{len(signed)} artifact(s) it signed no longer verify; re-sign those you vouch for: "
                 "`tuneops registry sign ID --replace`")

    @keys_app.command("export-public")
    def keys_export_public(key_id: Optional[str] = typer.Argument(None, help="Default: the active signing key."),
                           as_json: bool = JSON):
        """Print a public key (base64 of the raw ed25519 key) to share: `tuneops keys trust FILE --name WHO`."""
        import json

        from tuneops.errors import NotFound
        from tuneops.release.signing import load_key, trusted_rows

        public, name = None, None
        try:
            key = load_key(key_id)
            key_id, public = key.key_id, key.public_b64
        except NotFound:
            store = _store_if_any()
            row = next((t for t in (trusted_rows(store) if store is not None else []) if t.key_id == key_id), None)
            if key_id is None or row is None:
                raise
            public, name = row.public_key, row.name
        if as_json:
            print(json.dumps({"key_id": key_id, "public_key": public, "name": name}))
        else:
            print(public)

    # -- registry: sign, verify, deprecate, promote ----------------------------------------
    @registry_app.command("sign")
    def registry_sign(artifact: str = typer.Argument(..., help="Artifact id or alias."),
                      replace: bool = typer.Option(False, "--replace", help="Replace a signature by an untrusted "
                                                                            "or revoked key with yours."),
                      as_json: bool = JSON):
        """Sign an artifact with your key (its intact files and the lineage recorded for them)."""
        from tuneops.release.registry import sign_artifact

        store = _store()
        art = _artifact(store, artifact)
        rec, changed = sign_artifact(store, art.id, replace=replace)
        emit_one({"artifact": rec.id, "signed_by": rec.signature["key_id"], "changed": changed,
                  "payload_sha256": rec.signature.get("payload_sha256")}, as_json=as_json,
                 title="signed" if changed else "already validly signed; nothing changed")

    @registry_app.command("verify")
    def registry_verify(artifact: str = typer.Argument(..., help="Artifact id or alias."), as_json: bool = JSON):
        """Check an artifact's files against their hashes, its signature against the trusted keys, and its
        sunset; exits non-zero naming the first failure (2 files or sunset, 5 signature)."""
        from tuneops.release.registry import artifact_dir, check_sunset, verify_artifact, verify_signature

        store = _store()
        art = _artifact(store, artifact)
        report = verify_artifact(store, art)
        dep = report["deprecation"]
        emit_one({"artifact": art.id, "ok": report["ok"],
                  "files": "intact" if not report["integrity_problems"] else report["integrity_problems"],
                  "signature": report["signature"]["message"],
                  "deprecation": dep["message"] if dep else None}, as_json=as_json, title=f"verify {art.id}")
        if report["integrity_problems"]:
            artifact_dir(store, art)  # raises IntegrityError naming the files
        if not report["signature"]["ok"]:
            verify_signature(store, art)  # raises SignatureError saying which
        check_sunset(art, "served")

    @registry_app.command("deprecate")
    def registry_deprecate(artifact: str = typer.Argument(..., help="Artifact id or alias."),
                           sunset: Optional[str] = typer.Option(None, help="YYYY-MM-DD: served with a warning "
                                                                           "until this day (UTC), refused after."),
                           reason: Optional[str] = typer.Option(None, help="Why (clients and the audit log see it)."),
                           undo: bool = typer.Option(False, "--undo", help="Lift the deprecation."),
                           as_json: bool = JSON):
        """Deprecate an artifact with a sunset date, or lift a deprecation (--undo). Logged."""
        from tuneops.release.registry import aliases_of, deprecate, deprecation_status

        store = _store()
        art = _artifact(store, artifact)
        rec = deprecate(store, art.id, sunset=sunset, reason=reason, undo=undo)
        status = deprecation_status(rec)
        emit_one({"artifact": rec.id, "deprecated": bool(status), "sunset": status["sunset"] if status else None,
                  "reason": status.get("reason") if status else None,
                  "refused_now": status["past_sunset"] if status else False,
                  "aliases": aliases_of(store, rec.id) or None}, as_json=as_json,
                 title="deprecation lifted" if undo else "deprecated")

    # `registry promote` with --use: replaces the plain one main.py defines.
    registry_app.registered_commands[:] = [c for c in registry_app.registered_commands
                                           if (c.name or getattr(c.callback, "__name__", "")) != "promote"]

    @registry_app.command("promote")
    def registry_promote(artifact: str,
                         alias: str = typer.Argument(..., help="name@stage, e.g. quickstart@production"),
                         use: Optional[str] = typer.Option(None, help="What the alias is for: commercial, internal "
                                                                      "or research (recorded; default: its declared "
                                                                      "use, else the recipe's data.use). The training "
                                                                      "data's licences must permit it."),
                         force: bool = typer.Option(False, help="Override failing or missing gates, the run's state "
                                                                "or a base change (needs --reason). Never files, "
                                                                "signature, sunset, taint or licence."),
                         reason: Optional[str] = typer.Option(None, help="Why (logged)."), as_json: bool = JSON):
        """Point an alias at an artifact: intact, signed by a trusted key, gates passed, untainted, licensed
        for the alias's use, before any sunset, on the alias's base."""
        from tuneops.release.registry import promote

        mv = promote(_store(create=True), artifact, alias, force=force, reason=reason, use=use)
        emit_one(record_dict(mv, MOVE_FIELDS), as_json=as_json, title=f"{mv.name}@{mv.stage} promoted")

    _wrap_key_creation(app)


def _wrap_key_creation(app: typer.Typer) -> None:
    """`tuneops init` and `tuneops quickstart` create a signing key on a machine that has none."""
    def after_init(original):
        @functools.wraps(original)
        def init_then_key(*args, **kwargs):
            result = original(*args, **kwargs)
            ensure_signing_key(_store())
            return result
        return init_then_key

    def key_then_quickstart(original):
        @functools.wraps(original)
        def quickstart_with_key(*args, **kwargs):
            ensure_signing_key(_store(create=True), err=bool(kwargs.get("as_json")))
            return original(*args, **kwargs)
        return quickstart_with_key

    wrappers = {"init": after_init, "quickstart": key_then_quickstart}
    for info in app.registered_commands:
        command = info.name or getattr(info.callback, "__name__", "")
        if command in wrappers and not getattr(info.callback, "_tuneops_ensures_key", False):
            info.callback = wrappers[command](info.callback)
            info.callback._tuneops_ensures_key = True
