"""Finding and loading runbooks: YAML → `Runbook`, with every problem reported as `path:line`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from ktlo.errors import KtloError, Problem, RunbookInvalid
from ktlo.runbook.model import Runbook
from ktlo.runbook.yamlsrc import MISSING, Loc, Source, child, load_yaml
from ktlo.settings import get_settings

RUNBOOK_SUFFIXES = (".yaml", ".yml")


def describe_loc(data: Any, loc: Sequence[str | int]) -> str:
    """A readable location: `step 'dump': with.dsn` rather than `steps.3.with.dsn`."""
    parts = list(loc)
    prefix = ""
    if len(parts) >= 2 and parts[0] == "steps" and isinstance(parts[1], int):
        steps = data.get("steps") if isinstance(data, dict) else None
        if isinstance(steps, list) and parts[1] < len(steps) and isinstance(steps[parts[1]], dict):
            step_id = steps[parts[1]].get("id")
            if step_id:
                prefix = f"step '{step_id}'"
                parts = parts[2:]
    text = ".".join(str(p) for p in parts)
    if prefix:
        return f"{prefix}: {text}" if text else prefix
    return text


def data_loc(data: Any, loc: Sequence[str | int]) -> Loc:
    """The part of a pydantic error location that exists in the YAML data (drops union tags)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(part, int) and isinstance(node, dict):
            continue  # a single mapping given where a list is accepted (`schedule:`)
        found = child(node, part)
        if found is MISSING:
            if isinstance(node, dict | list):
                out.append(part)  # a missing or unknown key: still worth naming
            break
        node = found
        out.append(part)
    return tuple(out)


def pydantic_problems(
    source: Source,
    exc: ValidationError,
    model: type[BaseModel],
    base: Loc = (),
    skip: Callable[[Loc], bool] | None = None,
) -> list[Problem]:
    """Map a pydantic error list onto YAML lines; `skip` drops errors at templated values."""
    problems: list[Problem] = []
    seen: set[Loc] = set()
    root = source.data
    for err in exc.errors():
        if skip is not None and skip(tuple(err["loc"])):
            continue
        loc = data_loc(root, (*base, *err["loc"]))
        if loc in seen:
            continue
        seen.add(loc)
        allowed = allowed_keys(model, tuple(err["loc"]))
        problems.append(source.problem(loc, error_message(root, loc, err, allowed)))
    return problems


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model accepts where an unknown key `loc[-1]` was found."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        if part in fields:
            current = _submodel(fields[part].annotation)
    if current is None:
        return []
    return [f.alias or n for n, f in current.model_fields.items()]


def error_message(root: Any, loc: Loc, err: Any, allowed: Sequence[str] = ()) -> str:
    where = describe_loc(root, loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        *parent, key = loc if loc else ("",)
        hint = ""
        if allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        container = describe_loc(root, tuple(parent))
        return f"{container + ': ' if container else ''}unknown key '{key}'{hint}"
    if kind == "missing":
        return f"{where}: required" if where else "required"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{where}: {msg}" if where else msg


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


def load_runbook(path: Path, *, check: bool = True) -> Runbook:
    """Load and fully validate one runbook file; raises `RunbookInvalid` listing every problem."""
    runbook = parse_runbook(load_yaml(path))
    if check:
        from ktlo.runbook.validation import check_runbook

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
