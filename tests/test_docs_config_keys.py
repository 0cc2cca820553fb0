"""docs/train.md lists every `bokeh train` config key with its true default.

The tables are written by hand; the reference is the code: the config dataclasses (trainer/config.py), the tiny
model's sizes (bokeh_models/tiny_model.py) and the adapters' constructor arguments.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import yaml

from bokeh_models.tiny_model import TINY_DEFAULTS
from trainer.config import SECTIONS

DOC = Path(__file__).resolve().parents[1] / "docs" / "train.md"
ROW = re.compile(r"^\| `(?P<key>[a-z_]+(?:\.[a-z_0-9]+)+)` \| (?P<default>[^|]*) \|")
CODE = re.compile(r"`([^`]*)`")


def documented() -> dict[str, str]:
    """{key: default cell} of the rows of the "Every config key" section."""
    text = DOC.read_text()
    section = text[text.index("## Every config key"):]
    section = section[:section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match["key"] not in rows, f"{match['key']} listed twice"
            rows[match["key"]] = match["default"].strip()
    return rows


def cell_values(cell: str) -> list:
    """The values written in backticks in a default cell, read as YAML; a word YAML 1.1 reads as a boolean
    (`no`) stays the word, as the config reads it for string settings."""
    values = []
    for code in CODE.findall(cell):
        value = yaml.safe_load(code)
        values.append(code if isinstance(value, bool) and code not in ("true", "false") else value)
    return values


def code_defaults() -> dict[str, object]:
    """{section.key: default} of every dataclass field and every tiny model size."""
    defaults: dict[str, object] = {}
    for name, field in SECTIONS.items():
        if name == "adapter":
            continue
        for f in dataclasses.fields(field.default_factory()):
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            defaults[f"{name}.{f.name}"] = value
    for key, value in TINY_DEFAULTS.items():
        defaults[f"model.tiny.{key}"] = value
    return defaults


def adapter_defaults() -> dict[str, list]:
    """{adapter.key: [default of each adapter that takes it]}."""
    from bokeh_models.flux_adapter import BokehFluxAdapter
    from bokeh_models.unet_adapter import BokehUNetAdapter

    found: dict[str, list] = {}
    for cls in (BokehUNetAdapter, BokehFluxAdapter):
        params = inspect.signature(cls.__init__).parameters
        for name in cls.config_fields:
            default = params[name].default
            found.setdefault(f"adapter.{name}", []).append(list(default) if isinstance(default, tuple) else default)
    return found


def test_every_config_key_is_listed_with_its_default():
    rows = documented()
    defaults = code_defaults()
    missing = sorted(set(defaults) - set(rows))
    assert not missing, f"docs/train.md lacks {missing}"
    for key, value in defaults.items():
        assert cell_values(rows[key]) == [value], f"{key}: documented {rows[key]!r}, code default {value!r}"


def test_every_adapter_key_is_listed_with_its_defaults():
    rows = documented()
    for key, values in adapter_defaults().items():
        assert key in rows, f"docs/train.md lacks {key}"
        listed = cell_values(rows[key])
        for value in values:
            assert value in listed, f"{key}: default {value!r} not in {rows[key]!r}"


def test_no_key_is_listed_that_the_code_does_not_take():
    known = set(code_defaults()) | set(adapter_defaults()) | {f"{name}" for name in SECTIONS}
    extra = sorted(set(documented()) - known)
    assert not extra, f"docs/train.md lists keys no config takes: {extra}"
