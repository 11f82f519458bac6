"""The one guard every command runs on its ``--out`` before writing anything.

No command deletes or overwrites what it did not write (docs/RELIABILITY.md). A command's output
folder carries a small marker file, :data:`MARKER_NAME` (JSON ``{"command": ..., "created": ...}``),
so a later run of the same command recognises its own earlier output; anything else is refused with
one :class:`~backbone_ssl.errors.UserError` line (exit 2) before a byte is written.

Call it first thing in a command (other helpers' commands included)::

    from backbone_ssl.outdir import prepare_out_dir
    out = prepare_out_dir(args.out, "cluster", sources=[args.data])
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from backbone_ssl.errors import UserError

#: Marker file naming the command that wrote a folder.
MARKER_NAME = ".backbone-ssl-output.json"
#: What an exported encoder folder may hold (``export`` recognises its own folders by content,
#: so the folder stays exactly a timm/hub model folder, with no marker in it).
EXPORT_FILES = frozenset({"config.json", "model.safetensors", "README.md"})


def output_command(path: str | os.PathLike) -> str | None:
    """The command recorded in ``path``'s marker file, or None (no marker / unreadable)."""
    marker = Path(path) / MARKER_NAME
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    cmd = data.get("command") if isinstance(data, dict) else None
    return cmd if isinstance(cmd, str) else None


def is_export_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` holds only an exported encoder's own files (config.json with a
    ``backbone_ssl`` block, model.safetensors, optionally README.md)."""
    p = Path(path)
    names = {c.name for c in p.iterdir()}
    if not names or not names <= EXPORT_FILES or "config.json" not in names:
        return False
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("backbone_ssl"), dict)


def _is_same_or_above(out: Path, source: Path) -> bool:
    """Whether ``out`` is ``source`` or one of the folders above it."""
    return out == source or out in source.parents


def prepare_out_dir(path: str | os.PathLike, command: str, *, force: bool = False,
                    sources: Iterable[str | os.PathLike | None] = (),
                    mark: bool = True) -> Path:
    """Check ``--out`` for ``command`` and create it; returns it as a Path.

    Refused (``UserError``, one line, exit 2), before anything is written, when ``path``:

    - is an existing file (or anything that is not a folder);
    - is a non-empty folder that is not an earlier output of the same ``command`` (its marker file
      :data:`MARKER_NAME` names another command, or there is none). For ``command == "export"``
      an earlier output is a folder holding only an export's own files (:func:`is_export_folder`),
      and replacing it also needs ``force=True`` (``export --force``; likewise for any command
      named ``export ...``, e.g. ``export ssupergan``);
    - is one of ``sources`` (the inputs: checkpoint, data, encoder, ...) or any folder above one
      (e.g. ``export RUN/checkpoints/last.ckpt --out RUN``);
    - cannot be created (unwritable, a file in the way).

    Otherwise the folder is created and, when ``mark`` is true, the marker file is written, so a
    later run of the same command may write there again. ``mark=False`` only checks (and that the
    parent is writable): the caller writes the folder atomically (``export``) or calls
    :func:`mark_out_dir` once it has succeeded (``export ssupergan``).
    """
    if path is None or str(path) == "":
        raise UserError(f"{command}: --out needs a folder path")
    out = Path(path).expanduser()
    resolved = out.resolve()
    for src in sources:
        if src is None or str(src) == "" or ":" in str(src) and not Path(str(src)).exists():
            continue  # random:<arch>, pixels:S, ... are not paths
        src_path = Path(src).expanduser().resolve()
        if _is_same_or_above(resolved, src_path):
            raise UserError(
                f"{command}: --out {out} is the input {src} or a folder above it; writing there "
                "could destroy the input; choose a new folder"
            )
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UserError(f"{command}: --out {out} exists and is not a folder; refusing to "
                            "replace it (choose a new folder)")
        if any(out.iterdir()):
            if command == "export":
                if not is_export_folder(out):
                    raise UserError(
                        f"export: --out {out} is a non-empty folder that is not an exported "
                        "encoder; refusing to overwrite it (choose a new folder)")
                if not force:
                    raise UserError(
                        f"export: --out {out} already holds an exported encoder; pass --force "
                        "to replace it, or choose a new folder")
            else:
                found = output_command(out)
                if found != command:
                    what = (f"the output of `{found}`" if found else
                            "not an output of backbone-ssl")
                    raise UserError(
                        f"{command}: --out {out} is a non-empty folder and {what}; refusing to "
                        "write into it (choose a new or empty folder)")
                if command.startswith("export") and not force:
                    raise UserError(
                        f"{command}: --out {out} already holds an earlier export; pass --force "
                        "to replace it, or choose a new folder")
    if mark:
        return mark_out_dir(out, command)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise UserError(f"{command}: cannot write to --out {out}: "
                        f"{exc.strerror or type(exc).__name__}") from None
    return out


def mark_out_dir(path: str | os.PathLike, command: str) -> Path:
    """Create ``path`` (if needed) and write its marker naming ``command``; returns the Path.

    :func:`prepare_out_dir` does this itself unless ``mark=False``; a command that must leave no
    folder behind when it fails later calls ``prepare_out_dir(..., mark=False)`` first and this
    once it has succeeded.
    """
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        if output_command(out) != command:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            (out / MARKER_NAME).write_text(
                json.dumps({"command": command, "created": stamp}) + "\n")
    except OSError as exc:
        raise UserError(f"{command}: cannot write to --out {out}: "
                        f"{exc.strerror or type(exc).__name__}") from None
    return out
