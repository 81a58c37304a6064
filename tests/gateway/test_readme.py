"""The README's configuration table is the settings, no more and no less."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from gateway.config import Settings, env_name

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_table_with_its_default() -> None:
    text = README.read_text()
    section = text[text.index("## Configuration") : text.index("## Interfaces")]
    rows = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \|", section, flags=re.M))
    defaults = Settings()
    expected = {}
    for field in msgspec.structs.fields(Settings):
        value = getattr(defaults, field.name)
        shown = (
            "unset" if value is None else str(value).lower() if isinstance(value, bool) else value
        )
        expected[env_name(field.name)] = str(shown)
    assert rows == expected
