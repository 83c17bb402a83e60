"""Load, override and validate a pipeline YAML, reporting every problem at once with its dotted path.

Top level:
    run:    name, seed, output_dir, device
    data:   pipeline.data.DataConfig
    model:  arch (a registered model name)
    stages: a list; each item has `name`, `type` (a registered stage type) and that type's keys.
"""
from __future__ import annotations

import copy
import difflib
import typing
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from pipeline.engine.errors import ConfigError
from pipeline.engine.registry import STAGES
from pipeline.engine.schema import StrictModel


class DistributedSection(StrictModel):
    """How a run started by torchrun spreads over its processes (ignored in a single process)."""

    backend: Literal["auto", "nccl", "gloo"] = Field(default="auto", description="auto: nccl on CUDA, gloo on CPU (env PIPELINE_DIST_BACKEND overrides)")
    timeout_s: float = Field(default=600.0, gt=0, description="a collective waiting this long for a dead or stuck rank fails the run")
    batch_norm: Literal["global", "local"] = Field(default="global", description="global: BN statistics over the whole global batch (single-process semantics); local: per rank")


class RunSection(StrictModel):
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                             description="run folder name; default: the config file's stem")
    seed: int = Field(default=1, ge=0, description="seeds training, masks and attacks (seed 0 is a valid seed)")
    output_dir: Path = Field(default=Path("runs"), description="parent folder of run directories")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    distributed: DistributedSection = Field(default_factory=DistributedSection)


class ModelSection(StrictModel):
    arch: str = Field(default="small_cnn", description="registered model name (see `pipeline models`)")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        from pipeline.models.names import known_models

        names = known_models()
        if value not in names:
            raise ValueError(f"unknown model {value!r}; valid: {', '.join(names)}")
        return value


@dataclass
class PipelineConfig:
    run: RunSection
    data: Any  # pipeline.data.DataConfig
    model: ModelSection
    stages: list = field(default_factory=list)  # validated StageConfig instances, in order
    source: str | None = None
    warnings: list[str] = field(default_factory=list)  # shown by `validate` and `run`; nothing stops

    def stage(self, name: str):
        for st in self.stages:
            if st.name == name:
                return st
        raise KeyError(name)

    def resolved(self) -> dict:
        """The config exactly as run: every default filled in."""
        return {
            "run": self.run.model_dump(mode="json"),
            "data": self.data.model_dump(mode="json"),
            "model": self.model.model_dump(mode="json"),
            "stages": [s.model_dump(mode="json") for s in self.stages],
        }


# ---------------------------------------------------------------------------------------------
# error formatting

def format_loc(loc: tuple | list, prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _message(err: dict, known_keys: list[str] | None = None) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"must be {_BOUNDS[kind]} {bound} (got {err.get('input')!r})"
    if kind == "extra_forbidden":
        key = err["loc"][-1] if err["loc"] else "?"
        close = difflib.get_close_matches(str(key), known_keys or [], n=1)
        return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


def validation_problems(exc: ValidationError, model_cls, prefix: str) -> list[str]:
    problems = []
    for err in exc.errors():
        err = dict(err)
        known = _known_keys(model_cls, err["loc"][:-1])
        msg = _message(err, known)
        # A model-level validator names the field at fault at the start of its message: "path: ...".
        head, sep, rest = msg.partition(": ")
        fields = _known_keys(model_cls, err["loc"])
        if sep and head in fields:
            err["loc"] = (*err["loc"], head)
            msg = rest
        problems.append(f"{format_loc(err['loc'], prefix)}: {msg}")
    return problems


def _model_class(annotation):
    """The pydantic model inside an annotation such as `X`, `X | None` or `Optional[X]`."""
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_class(arg)
        if found is not None:
            return found
    return None


def _known_keys(model_cls, loc) -> list[str]:
    cls = model_cls
    for part in loc:
        if isinstance(part, int) or cls is None or not hasattr(cls, "model_fields"):
            return []
        field_info = cls.model_fields.get(part)
        cls = _model_class(getattr(field_info, "annotation", None))
    return list(getattr(cls, "model_fields", {}) or {})


# ---------------------------------------------------------------------------------------------
# overrides: --set a.b=value, stages.<name>.key=value, stages[2].key=value

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_override(text: str) -> tuple[list, Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. stages.warmup.epochs=3")
    key, raw = text.split("=", 1)
    parts: list = []
    for name, index in _PART.findall(key.strip()):
        parts.append(int(index) if index else name)
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(tree: dict, parts: list, value: Any, text: str) -> None:
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if isinstance(part, str) and part.isdigit():
                part = int(part)
            if isinstance(part, str):  # a stage addressed by its name
                # a stage's name defaults to its type, as in validation
                match = [s for s in node if isinstance(s, dict) and s.get("name", s.get("type")) == part]
                if not match:
                    names = [s.get("name", s.get("type")) for s in node if isinstance(s, dict)]
                    raise ConfigError(f"--set {text}: no stage named {part!r} (stages: {', '.join(map(str, names))})")
                node = match[0]
                continue
            if not 0 <= part < len(node):
                raise ConfigError(f"--set {text}: index {part} out of range (0..{len(node) - 1})")
            node = node[part]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"--set {text}: {format_loc(parts[:i + 1])} is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        raise ConfigError(f"--set {text}: cannot replace a whole list item; set one of its keys")
    if not isinstance(node, dict):
        raise ConfigError(f"--set {text}: {format_loc(parts[:-1])} is not a mapping")
    node[last] = value


# ---------------------------------------------------------------------------------------------

class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *alias` may override keys, by design
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports an unhashable key
            if key in seen:
                raise _DuplicateKey(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                    f"(first at line {seen[key] + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found", source=None) from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a text (UTF-8) file: byte {exc.start} is 0x{exc.object[exc.start]:02x}; "
                          "is this a binary file?") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    if "\x00" in text:
        raise ConfigError(f"{p}: contains NUL bytes; not a YAML text file")
    try:
        tree = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: YAML syntax error{where}: {getattr(exc, 'problem', exc)}") from None
    if tree is None:
        tree = {}
    # YAML aliases share one object between stages; a later --set must change only the stage it names.
    tree = copy.deepcopy(tree)
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: the top level must be a mapping with run/data/model/stages")
    return tree


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    tree = read_yaml(path)
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(tree, parts, value, text)
    cfg = validate_tree(tree, source=str(path))
    if cfg.run.name is None:
        stem = Path(path).stem
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stem):
            raise ConfigError(f"run.name: not set, and the file name {stem!r} is not a valid run name "
                              "(letters, digits, '_', '.', '-'); set run.name", source=str(path))
        cfg.run.name = stem
    return cfg


def validate_tree(tree: dict, source: str | None = None) -> PipelineConfig:
    from pipeline.data import DataConfig

    problems: list[str] = []
    unknown = sorted(set(tree) - {"run", "data", "model", "stages"})
    for key in unknown:
        close = difflib.get_close_matches(key, ["run", "data", "model", "stages"], n=1)
        problems.append(f"{key}: unknown top-level key" + (f" (did you mean {close[0]!r}?)" if close else ""))

    def section(key: str, cls):
        raw = tree.get(key) or {}
        if not isinstance(raw, dict):
            problems.append(f"{key}: must be a mapping")
            return None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, cls, key))
            return None

    run = section("run", RunSection)
    data = section("data", DataConfig)
    model = section("model", ModelSection)

    raw_stages = tree.get("stages")
    stages: list = []
    if raw_stages is None or raw_stages == []:
        problems.append("stages: at least one stage is required")
        raw_stages = []
    elif not isinstance(raw_stages, list):
        problems.append("stages: must be a list of stages")
        raw_stages = []

    seen: dict[str, int] = {}
    types: dict[str, str] = {}  # validated stage name -> its type
    warnings: list[str] = []
    previous: str | None = None
    for i, raw in enumerate(raw_stages):
        where = f"stages[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a mapping with at least `name` and `type`")
            continue
        stype = raw.get("type")
        if stype is None:
            problems.append(f"{where}.type: required key is missing (valid: {', '.join(STAGES.names())})")
            continue
        try:
            cls = STAGES.get(str(stype))
        except KeyError as exc:
            problems.append(f"{where}.type: {exc.args[0]}")
            continue
        raw = dict(raw)
        raw.setdefault("name", stype)
        name = raw["name"]
        if name in seen:
            problems.append(f"{where}.name: duplicate stage name {name!r} (also stages[{seen[name]}])")
        else:
            seen[name] = i
        try:
            st = cls.Config.model_validate(raw)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, cls.Config, where))
            previous = name
            continue
        if cls.input_mode == "none" and st.input is not None:
            problems.append(f"{where}.input: stage type {stype!r} takes no input")
        elif cls.input_mode == "required" and st.input is None:
            if previous is None:
                problems.append(f"{where}.input: stage type {stype!r} needs an earlier stage to read from")
            else:
                st.input = previous
        if st.input is not None and st.input not in seen or (st.input == name):
            if st.input is not None:
                problems.append(f"{where}.input: {st.input!r} is not an earlier stage (earlier: {', '.join(n for n in seen if n != name) or 'none'})")
        elif st.input in types:
            cls.follow_input(st, types[st.input])
        problems.extend(_training_sanity(st, where, warnings))
        stages.append(st)
        types[name] = str(stype)
        previous = name

    if problems:
        raise ConfigError(problems, source=source)
    return PipelineConfig(run=run, data=data, model=model, stages=stages, source=source, warnings=warnings)


# Values that pass their types but cannot be meant: SGD diverges at once past these.
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 0.1


def _training_sanity(st, where: str, warnings: list[str]) -> list[str]:
    """Cross-field checks of a training stage's config (stages whose Config has epochs/optimizer/schedule)."""
    problems: list[str] = []
    opt, sched, epochs = getattr(st, "optimizer", None), getattr(st, "schedule", None), getattr(st, "epochs", None)
    if opt is not None and hasattr(opt, "lr"):
        if opt.lr > MAX_LR:
            problems.append(f"{where}.optimizer.lr: {opt.lr:g} is far above any usable SGD learning rate "
                            f"(at most {MAX_LR:g}; the papers use 0.1)")
        if getattr(opt, "weight_decay", 0) > MAX_WEIGHT_DECAY:
            problems.append(f"{where}.optimizer.weight_decay: {opt.weight_decay:g} would shrink the weights to "
                            f"nothing (at most {MAX_WEIGHT_DECAY:g}; the papers use 5e-4)")
    if getattr(st, "mode", None) == "fast" and sched is not None and sched.kind != "cyclic" \
            and "schedule" not in st.model_fields_set:
        # early_bird defaults fast AT to the reference's cyclic lr; elsewhere the default is only said
        warnings.append(f"{where}.schedule: mode 'fast' trains with this stage's default {sched.kind} schedule; "
                        "FGSM-RS fast AT (Wong et al., spec §2.1) uses schedule: {kind: cyclic, peak_fraction: 0.4} "
                        "with optimizer.lr: 0.2")
    if sched is not None and isinstance(epochs, int) and getattr(sched, "kind", None) == "multistep":
        late = [m for m in sched.milestones if m >= epochs]
        if late:
            text = (f"{where}.schedule.milestones: {late} are not before the stage's last epoch "
                    f"(epochs: {epochs}), so the learning rate never drops there")
            # written by the user only when the stage's own schedule block names them (a stage type's
            # default schedule, e.g. early_bird's [50, 150], sets milestones without the user writing any)
            if "schedule" in st.model_fields_set and "milestones" in sched.model_fields_set:
                problems.append(text + "; use milestones < epochs")
            else:  # the papers' default [100, 150] with a shortened run: worth saying, not refusing
                warnings.append(text + " (default milestones; set schedule.milestones or schedule.kind)")
    return problems
