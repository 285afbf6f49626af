"""Finding and loading runbooks: YAML → `Runbook`, with every problem reported as `path:line`."""

from __future__ import annotations

import difflib
from pathlib import Path

from pydantic import ValidationError

from ktlo.errors import KtloError, Problem, RunbookInvalid
from ktlo.runbook.model import Runbook
from ktlo.runbook.problems import pydantic_problems
from ktlo.runbook.validation import check_runbook
from ktlo.runbook.yamlsrc import Source, load_yaml
from ktlo.settings import get_settings

RUNBOOK_SUFFIXES = (".yaml", ".yml")


def parse_runbook(source: Source) -> Runbook:
    """Structural validation only (the schema); see `ktlo.runbook.validation` for the rest."""
    if not isinstance(source.data, dict):
        raise RunbookInvalid([source.problem((), "a runbook must be a YAML mapping")])
    try:
        runbook = Runbook.model_validate(source.data)
    except ValidationError as exc:
        raise RunbookInvalid(pydantic_problems(source, exc, Runbook)) from None
    runbook._source = source
    return runbook


_Stamp = tuple[int, int, int]
_handed_over: dict[Path, tuple[_Stamp, Runbook]] = {}


def _stamp(path: Path) -> _Stamp:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def hand_over(runbook: Runbook) -> None:
    """Let the next `load_runbook` of this file in this process take `runbook` as it is.

    `ktlo run` validates a runbook before it starts the flow, and the flow loads it by path;
    in one process the second parse and validation would only repeat the first. The file's
    stamp (mtime, size, inode) must still match, so an edit in between is read again.
    """
    if runbook.path is not None:
        path = runbook.path.resolve()
        _handed_over[path] = (_stamp(path), runbook)


def load_runbook(path: Path, *, check: bool = True) -> Runbook:
    """Load and fully validate one runbook file; raises `RunbookInvalid` listing every problem."""
    handed = _handed_over.pop(path.resolve(), None)
    if handed is not None and check and handed[0] == _stamp(path.resolve()):
        return handed[1]
    runbook = parse_runbook(load_yaml(path))
    if check:
        problems = check_runbook(runbook)
        if problems:
            raise RunbookInvalid(problems)
    return runbook


def runbook_files(directory: Path | None = None) -> list[Path]:
    directory = directory or get_settings().runbooks_dir
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in RUNBOOK_SUFFIXES and p.is_file())


def fingerprint(directory: Path | None = None) -> dict[str, float]:
    """Each runbook file's modification time: it differs once a runbook is added, changed or removed."""
    return {str(p): p.stat().st_mtime for p in runbook_files(directory)}


def looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith(RUNBOOK_SUFFIXES)


def find_runbook(ref: str, directory: Path | None = None) -> Path:
    """A runbook by file path or by `name` in the runbooks directory."""
    if looks_like_path(ref):
        path = Path(ref)
        if not path.is_file():
            raise KtloError(f"{ref}: no such runbook file")
        return path
    directory = directory or get_settings().runbooks_dir
    for suffix in RUNBOOK_SUFFIXES:
        candidate = directory / f"{ref}{suffix}"
        # An unparseable file named after the runbook is still "the" runbook: report its problems.
        if candidate.is_file() and _name_of(candidate) in (ref, None):
            return candidate
    names: dict[str, Path] = {}
    for path in runbook_files(directory):
        name = _name_of(path)
        if name:
            names.setdefault(name, path)
    if ref in names:
        return names[ref]
    close = difflib.get_close_matches(ref, list(names), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise KtloError(f"no runbook named '{ref}' in {directory}{hint}")


def _name_of(path: Path) -> str | None:
    try:
        data = load_yaml(path).data
    except RunbookInvalid:
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def load_all(directory: Path | None = None) -> tuple[list[Runbook], list[Problem]]:
    """Every runbook in the directory, plus the problems of those that are invalid."""
    runbooks: list[Runbook] = []
    problems: list[Problem] = []
    names: dict[str, str] = {}
    for path in runbook_files(directory):
        try:
            runbook = load_runbook(path)
        except RunbookInvalid as exc:
            problems.extend(exc.problems)
            continue
        if runbook.name in names:
            line = runbook.source.line_of(("name",)) if runbook.source else 1
            problems.append(
                Problem(
                    str(path),
                    line,
                    f"runbook name '{runbook.name}' is also used by {names[runbook.name]}",
                )
            )
            continue
        names[runbook.name] = str(path)
        runbooks.append(runbook)
    return runbooks, problems
