"""The README's configuration reference is the one generated from the settings classes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from service.settings import PREFIX, Settings
from service.settings_doc import BEGIN, END, main, replace_table, settings_table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _variables() -> list[str]:
    names = []
    for group in msgspec.structs.fields(Settings):
        if isinstance(group.type, type) and issubclass(group.type, msgspec.Struct):
            names += [PREFIX + f.name.upper() for f in msgspec.structs.fields(group.type)]
    return names


def test_readme_table_is_the_generated_one() -> None:
    text = README.read_text()
    assert replace_table(text, settings_table()) == text, (
        "README.md's configuration reference differs from service/settings.py: run "
        "`python -m service.settings_doc --write README.md`"
    )


def test_every_setting_has_a_row_with_its_default() -> None:
    rows = settings_table().splitlines()[2:]
    variables = [re.match(r"\| `(\w+)`", row).group(1) for row in rows]
    assert variables == [PREFIX + "CONFIG", *_variables()]
    row = next(r for r in rows if r.startswith(f"| `{PREFIX}MAX_IMAGES_PER_REQUEST`"))
    assert f"`{Settings().limits.max_images_per_request}`" in row
    assert "integer >= 1" in row


def test_readme_names_only_real_settings() -> None:
    mentioned = set(re.findall(r"\b" + PREFIX + r"[A-Z0-9_]+\b", README.read_text()))
    assert mentioned <= {PREFIX + "CONFIG", *_variables()}, "stale variable names in README.md"


def test_check_fails_on_a_drifted_copy(tmp_path: Path) -> None:
    drifted = tmp_path / "README.md"
    drifted.write_text(f"# x\n{BEGIN}\n| old table |\n{END}\n")
    assert main(["--check", str(drifted)]) == 1
    assert main(["--write", str(drifted)]) == 0
    assert main(["--check", str(drifted)]) == 0
    assert settings_table() in drifted.read_text()


def test_module_runs_as_a_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service.settings_doc"], capture_output=True, text=True, check=True
    ).stdout
    assert out == settings_table()


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="markers"):
        replace_table("no markers here", settings_table())
