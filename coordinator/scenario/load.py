"""Loading a scenario: YAML text, `${ENV}` interpolation and `--set` overrides -> a validated
Scenario, or every problem with its key path."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import ssl
import stat
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from horde.agents.tls import make_ssl_context
from horde.coordinator.scenario.attachments import AttachmentError, Attachments, read_attachments
from horde.coordinator.scenario.models import (
    _NAME_MESSAGE,
    Loc,
    Scenario,
    _body_problems,
    _format_loc,
    _unique_name_problems,
    _workload_problems,
)
from horde.coordinator.scenario.overrides import (
    describe_kind,
    override_label,
    parse_override,
    sensitive_key_text,
    set_path,
)
from horde.coordinator.scenario.redact import Redactor, _is_secret, redact
from horde.coordinator.scenario.safe_yaml import parse_yaml, value_problems
from horde.coordinator.scenario.user_code import attach_user_code
from horde.coordinator.scenario.users import OTHER, UserEntry
from horde.coordinator.units import parse_duration

# --- loading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str  # key path (workload.stages[1].duration), FILE:LINE:COL, or "--set TEXT"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ScenarioError(Exception):
    """Every problem found in a scenario, one per line in str()."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class LoadedScenario:
    scenario: Scenario  # validated, with real values: what runs
    source: str  # where it came from (the file path)
    as_run: dict[str, Any]  # the data after interpolation and overrides, secrets redacted
    redactor: Redactor = field(default_factory=Redactor)  # the redaction rule with this scenario's ${ENV} values
    # The files it names (tls, data), read by load_scenario; parse_scenario reads none.
    attachments: Attachments = field(default_factory=Attachments)


def load_scenario(
    path: str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> LoadedScenario:
    """Read, interpolate (env defaults to os.environ), override and validate a scenario file."""
    source = os.fspath(path)
    text = _read_text(source)
    loaded = parse_scenario(text, source=source, overrides=overrides, env=os.environ if env is None else env)
    problems = attach_user_code(loaded.scenario, os.path.dirname(os.path.abspath(source)))
    if problems:
        raise ScenarioError([Problem(where, msg) for where, msg in problems])
    return with_attachments(loaded)


def with_attachments(loaded: LoadedScenario) -> LoadedScenario:
    """`loaded` with the files its scenario names read, relative to its source file
    (coordinator/scenario/attachments.py); ScenarioError lists every bad file."""
    base = os.path.dirname(loaded.source)

    def read(rel: str, limit: int) -> bytes:
        return _read_bounded(os.path.join(base, rel), limit)

    try:
        attachments = read_attachments(loaded.scenario, read)
    except AttachmentError as exc:
        raise ScenarioError([Problem(path, loaded.redactor.text(msg)) for path, msg in exc.problems]) from None
    if attachments.tls.ca_pem or attachments.tls.cert_pem:
        # The agents build the same context: a CA or a key that does not load fails here,
        # before any agent starts (the message names no key material).
        try:
            make_ssl_context(attachments.tls)
        except (ssl.SSLError, ValueError) as exc:
            which = "tls.cert" if attachments.tls.cert_pem else "tls.ca"
            reason = getattr(exc, "reason", None) or str(exc).split(" (_ssl")[0] or type(exc).__name__
            raise ScenarioError([Problem(which, f"the TLS files do not load: {reason}")]) from None
    return dataclasses.replace(loaded, attachments=attachments)


MAX_SCENARIO_BYTES = 1024 * 1024


def _read_bounded(path: str, limit: int) -> bytes:
    """A regular file's bytes, at most `limit`; OSError or ValueError saying why not. Opened
    without blocking and checked with fstat before any read, so a FIFO, a device
    (/dev/zero, /dev/urandom) or a directory is refused at once rather than waited on or
    read without end. For the scenario and the files it names (tls, data)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"not a regular file ({'a directory' if stat.S_ISDIR(mode) else 'a pipe, socket or device'})")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes" + (" (1 MiB)" if limit == 1 << 20 else "") + ", the limit")
    return data


def _read_text(source: str) -> str:
    """The scenario file's UTF-8 text, at most MAX_SCENARIO_BYTES (`_read_bounded`)."""
    shown = source if source.isprintable() else repr(source)

    def fail(reason: str) -> ScenarioError:
        return ScenarioError([Problem(shown, f"cannot read the scenario: {reason}")])

    try:
        data = _read_bounded(source, MAX_SCENARIO_BYTES)
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None
    except ValueError as exc:  # not a regular file, too large, or a NUL in the name
        text = str(exc)
        raise fail(text + " for a scenario file" if text.endswith(", the limit") else text) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None


def parse_scenario(
    text: str,
    *,
    source: str = "<scenario>",
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> LoadedScenario:
    """Like load_scenario for text in hand; pure: env None means no variables are set."""
    env = {} if env is None else env
    problems: list[Problem] = []
    redactor = _redactor(text, overrides, env)

    parsed_overrides = []
    for text_ in overrides:
        try:
            parsed_overrides.append((text_, *parse_override(text_)))
        except ValueError as exc:
            problems.append(Problem(override_label(text_), str(exc)))

    data, yaml_problems = _read_yaml(text, source)
    if data is None:
        raise ScenarioError(_scrubbed(yaml_problems + problems, redactor))
    problems[:0] = yaml_problems

    data, secrets, interpolation_problems = _interpolate(data, env)
    problems.extend(Problem(_format_loc(loc), msg) for loc, msg in interpolation_problems)
    unusable = {_format_loc(loc) for loc, _ in interpolation_problems}

    for text_, loc, value in parsed_overrides:
        try:
            set_path(data, loc, value)
        except ValueError as exc:
            problems.append(Problem(override_label(text_), str(exc)))
            continue
        secrets = {s for s in secrets if s[: len(loc)] != loc}

    # Control characters, out-of-range integers, non-finite floats: named here by key path,
    # and left out of the model's own messages about the same values.
    for loc, msg in value_problems(data):
        problems.append(Problem(_format_loc(loc) or source, msg))
        unusable.add(_format_loc(loc))

    scenario: Scenario | None = None
    try:
        scenario = Scenario.model_validate(copy.deepcopy(data), context=_reference_context(data))
    except ValidationError as exc:
        found = _validation_problems(exc, data, secrets)
        found += [p for p in _raw_cross_problems(data) if p not in found]
        for problem in found:
            if not any(problem.path == p or problem.path.startswith((p + ".", p + "[")) for p in unusable):
                problems.append(problem)

    if problems or scenario is None:
        raise ScenarioError(_scrubbed(problems, redactor))
    return LoadedScenario(scenario=scenario, source=source, as_run=redact(data, secrets, redactor), redactor=redactor)


_REFERENCED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _redactor(text: str, overrides: Sequence[str], env: Mapping[str, str]) -> Redactor:
    """The rule with every value the scenario may take from the environment or from a `--set`
    with a secret-looking key. Read off the text, so a reference in a comment counts too:
    redacting one value too many is the safe side."""
    values = [env[name] for name in set(_REFERENCED.findall(text)) if env.get(name)]
    for text_ in overrides:
        key, sep, raw = text_.partition("=")
        if sep and sensitive_key_text(key):
            values.append(raw.strip().strip("'\""))
    return Redactor.of(values)


def _scrubbed(problems: Sequence[Problem], redactor: Redactor) -> list[Problem]:
    """Problems as shown: no ${ENV} value, URL userinfo or secret query value in them."""
    return [Problem(redactor.text(p.path), redactor.text(p.message)) for p in problems]


# YAML: safe and bounded (depth, alias expansion, integer length, control characters), without
# timestamps (a date-like value stays the text it was), duplicate keys noted: safe_yaml.py.
def _read_yaml(text: str, source: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    data, found, parsed = parse_yaml(text, source)
    problems = [Problem(where, message) for where, message in found]
    expected = "a mapping of keys (name, target, ...)"
    if not parsed:
        return None, problems
    if data is None:
        return None, [*problems, Problem(source, f"the scenario is empty; expected {expected}")]
    if not isinstance(data, dict):
        return None, [*problems, Problem(source, f"expected {expected} at the top, got {describe_kind(data)}")]
    return data, problems


# Interpolation.
_REFERENCE = re.compile(r"(\$?)\$\{([^}]*)(\}?)")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_DATA_REFERENCE = re.compile(r"data\.[A-Za-z0-9_-]+\.[^}]+")


def _flow_captures(data: Any) -> dict[int, set[str]]:
    """Per request index, the variables its flow captures (left to the flow, not the env)."""
    out: dict[int, set[str]] = {}
    requests = data.get("requests") if isinstance(data, dict) else None
    if isinstance(requests, list):
        for i, r in enumerate(requests):
            if isinstance(r, dict) and isinstance(r.get("flow"), list):
                out[i] = {
                    k
                    for st in r["flow"]
                    if isinstance(st, dict) and isinstance(st.get("capture"), dict)
                    for k in st["capture"]
                }
    return out


def _interpolate(data: Any, env: Mapping[str, str]) -> tuple[Any, set[Loc], list[tuple[Loc, str]]]:
    secrets: set[Loc] = set()
    problems: list[tuple[Loc, str]] = []
    captures = _flow_captures(data)

    def expand(text: str, loc: Loc) -> str:
        used = False

        def one(m: re.Match[str]) -> str:
            nonlocal used
            if m.group(1):
                return m.group(0)[1:]  # $${ is a literal ${
            if not m.group(3):
                problems.append((loc, "unclosed '${': expected ${NAME} or ${NAME:-default}"))
                return ""
            if _DATA_REFERENCE.fullmatch(m.group(2)):
                return m.group(0)  # a data file's column, filled per request at run time (agents/data.py)
            var = _VARIABLE.fullmatch(m.group(2))
            if var is None:
                problems.append((loc, f"invalid reference {m.group(0)!r}: expected ${{NAME}} or ${{NAME:-default}}"))
                return ""
            name, default = var.group(1), var.group(2)
            if (
                default is None
                and len(loc) > 2
                and loc[0] == "requests"
                and loc[2] == "flow"
                and isinstance(loc[1], int)
                and name in captures.get(loc[1], ())
            ):
                return m.group(0)  # a flow variable, filled at run time
            used = True
            value = env.get(name)
            if default is not None and not value:
                return default
            if value is None:
                problems.append(
                    (loc, f"environment variable {name} is not set (give a default with ${{{name}:-default}})")
                )
                return ""
            return value

        out = _REFERENCE.sub(one, text)
        if used:
            secrets.add(loc)
        return out

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, str):
            return expand(node, loc) if "${" in node else node
        if isinstance(node, dict):
            return {key: walk(value, (*loc, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, (*loc, i)) for i, value in enumerate(node)]
        return node

    return walk(data, ()), secrets, problems


# Validation errors -> problems.
def _reference_context(data: dict[str, Any]) -> dict[str, Any]:
    requests = data.get("requests")
    workload = data.get("workload")
    stages = workload.get("stages") if isinstance(workload, dict) else None

    def name(entry: Any) -> str:
        value = entry.get("name") if isinstance(entry, dict) else None
        return value if isinstance(value, str) else ""

    names = None
    if isinstance(requests, list):
        names = [n for n in map(name, requests) if n]
        names += [f"{name(r)}/{sub}" for r in requests if isinstance(r, dict) and "user" in r for sub in _declared(r)]
    return {
        "request_names": names,
        "stage_names": [name(s) for s in stages] if isinstance(stages, list) else None,
    }


def _declared(entry: dict[str, Any]) -> list[str]:
    """A raw user entry's sub-endpoint names (its declared requests, then `other`)."""
    requests = entry.get("requests")
    declared = [r for r in requests if isinstance(r, str)] if isinstance(requests, list) else []
    return [*declared, OTHER]


def _raw_cross_problems(data: dict[str, Any]) -> list[Problem]:
    """The cross-field checks on raw data, for models whose own validators did not get to run."""

    def seconds(value: Any) -> float | None:
        try:
            return parse_duration(value)
        except ValueError:
            return None

    def number(value: Any) -> float | None:
        if isinstance(value, bool):
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    found: list[tuple[Loc, str]] = []
    requests = data.get("requests")
    if isinstance(requests, list):
        entries = [r if isinstance(r, dict) else {} for r in requests]
        names = [r.get("name") for r in entries]
        found += [(("requests", *loc), msg) for loc, msg in _unique_name_problems(names, "requests")]
        for i, r in enumerate(entries):
            found += [(("requests", i, *loc), msg) for loc, msg in _body_problems(r.get("json"), r.get("body"))]
    workload = data.get("workload")
    if isinstance(workload, dict) and isinstance(workload.get("stages"), list):
        stages = [s if isinstance(s, dict) else {} for s in workload["stages"]]
        plain = [(seconds(s.get("duration")), number(s.get("target")), s.get("name")) for s in stages]
        found += [
            (("workload", *loc), msg)
            for loc, msg in _workload_problems(workload.get("model"), number(workload.get("start", 0)), plain)
        ]
    return [Problem(_format_loc(loc), msg) for loc, msg in found]


def _validation_problems(exc: ValidationError, data: dict[str, Any], secrets: set[Loc]) -> list[Problem]:
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        if len(loc) > 2 and loc[0] == "requests" and loc[2] in ("request", "user"):
            loc = loc[:2] + loc[3:]  # the mix entry's union tag (models.MixEntry) is no key
        if error["type"] == "horde_problems":
            problems.extend(Problem(_format_loc(loc + sub), msg) for sub, msg in error["ctx"]["problems"])
            continue
        if loc[:1] == ("target",) and isinstance(data.get("target"), str):
            loc = ("target",)  # the short form has no sub-keys to point at
        problems.append(Problem(_format_loc(loc), _message(error, loc, data, secrets)))
    return problems


def _message(error: Mapping[str, Any], loc: Loc, data: dict[str, Any], secrets: set[Loc]) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return _unknown_key_message(loc, data)
    if kind == "string_pattern_mismatch":
        msg = _NAME_MESSAGE
    elif kind == "too_short" and error.get("ctx", {}).get("min_length") == 1:
        return "must have at least one entry"
    elif kind in ("value_error", "assertion_error"):
        return re.sub(r"^(Value error|Assertion failed), ", "", msg)
    msg = re.sub(r"^Input should be ", "must be ", msg)
    value = error.get("input")
    if isinstance(value, (str, int, float, bool)) and not _is_secret(loc, secrets):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        msg += f" (got {shown})"
    return msg


def _unknown_key_message(loc: Loc, data: dict[str, Any]) -> str:
    model = _model_at(loc[:-1])
    if len(loc) == 3 and loc[0] == "requests" and isinstance(loc[1], int):
        entries = data.get("requests")
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        if isinstance(entry, dict) and "user" in entry:
            model = UserEntry
    known = [field.alias or name for name, field in model.model_fields.items()] if model else []
    key = str(loc[-1]) if loc else ""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    if known:
        return f"unknown key; expected one of: {', '.join(known)}"
    return "unknown key"


def _model_at(loc: Loc) -> type[BaseModel] | None:
    annotation: Any = Scenario
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(part, int):
            if typing.get_origin(annotation) is not list:
                return None
            annotation = typing.get_args(annotation)[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = next((f for n, f in annotation.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return None
            annotation = field.annotation
        else:
            return None
    annotation = _unwrap(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg)
            if typing.get_origin(inner) is list or (isinstance(inner, type) and issubclass(inner, BaseModel)):
                return inner
    return annotation
