"""A constitution: the principles a critique is asked against, and few-shot examples of the
critique-and-revise format (``default.yaml`` ships one written for jaxalign).

YAML layout (every key below; anything else is an error naming the key and the file)::

    name: my-constitution              # optional, shown in summaries
    principles:                        # one or more
      - name: harm                     # unique
        critique_request: "Point out ..."
        revision_request: "Rewrite the reply ..."
        judge_question: "Which reply ..."   # optional: the question `jaxalign label` asks
    examples:                          # optional few-shot transcripts, shown before every critique
      - prompt: "\\n\\nHuman: ...\\n\\nAssistant:"
        reply: " ..."
        principle: harm                # one of the principles above
        critique: " ..."
        revision: " ..."
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONSTITUTION = Path(__file__).with_name("default.yaml")


class ConstitutionError(ValueError):
    """A constitution file that does not match the layout above."""


@dataclasses.dataclass(frozen=True)
class Principle:
    name: str
    critique_request: str
    revision_request: str
    judge_question: str = ""


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str
    reply: str
    principle: str
    critique: str
    revision: str


@dataclasses.dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    examples: tuple[Example, ...] = ()
    name: str = ""
    source: str = ""  # the file it was read from

    def principle(self, name: str) -> Principle:
        for principle in self.principles:
            if principle.name == name:
                return principle
        raise ConstitutionError(f"{self.source}: no principle named {name!r}; the constitution has: "
                                + ", ".join(p.name for p in self.principles))


def _entry(cls: type, value: Any, where: str) -> Any:
    """``cls`` from a mapping: every required field present, no unknown key, every value a string."""
    if not isinstance(value, dict):
        raise ConstitutionError(f"{where}: expected a mapping with keys "
                                f"{', '.join(f.name for f in dataclasses.fields(cls))}, got {type(value).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            raise ConstitutionError(f"{where}: unknown key {key!r} (valid keys: {', '.join(fields)})")
    for name, field in fields.items():
        required = field.default is dataclasses.MISSING
        if name not in value:
            if required:
                raise ConstitutionError(f"{where}: missing field {name!r}")
            continue
        if not isinstance(value[name], str) or (required and not value[name].strip()):
            raise ConstitutionError(f"{where}: field {name!r} must be a non-empty string, got {value[name]!r}")
    return cls(**value)


def parse_constitution(tree: Any, source: str) -> Constitution:
    """A ``Constitution`` from parsed YAML; errors name the file, the entry and the field."""
    if not isinstance(tree, dict):
        raise ConstitutionError(f"{source}: the top level must be a mapping with 'principles' (and 'examples', 'name')")
    for key in tree:
        if key not in ("name", "principles", "examples"):
            raise ConstitutionError(f"{source}: unknown key {key!r} (valid keys: name, principles, examples)")
    entries = tree.get("principles")
    if not isinstance(entries, list) or not entries:
        raise ConstitutionError(f"{source}: missing field 'principles' (a non-empty list)")
    principles = tuple(_entry(Principle, entry, f"{source}: principles[{i}]") for i, entry in enumerate(entries))
    names = [p.name for p in principles]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConstitutionError(f"{source}: principle names must be unique; repeated: {', '.join(repeated)}")
    examples_tree = tree.get("examples") or []
    if not isinstance(examples_tree, list):
        raise ConstitutionError(f"{source}: 'examples' must be a list")
    examples = tuple(_entry(Example, entry, f"{source}: examples[{i}]") for i, entry in enumerate(examples_tree))
    for i, example in enumerate(examples):
        if example.principle not in names:
            raise ConstitutionError(f"{source}: examples[{i}]: principle {example.principle!r} is not one of the "
                                    f"principles ({', '.join(names)})")
    return Constitution(principles, examples, str(tree.get("name") or ""), source)


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Reads a constitution YAML (default: the shipped ``default.yaml``)."""
    path = Path(path) if path is not None else DEFAULT_CONSTITUTION
    if not path.is_file():
        raise ConstitutionError(f"constitution file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConstitutionError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from err
    return parse_constitution(tree, str(path))
