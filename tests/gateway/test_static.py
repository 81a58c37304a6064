"""The dashboard's static files: served with the right types, complete, and self-contained.

The page must work on a machine without internet, so nothing in it may point outside the
server: every ``src``/``href`` is local and no file names an ``http(s)://`` address outside a
comment. The app is built around an in-memory node (no database, no sockets).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest

from gateway.app import STATIC_DIR
from tests.gateway.conftest import in_memory_app

JS_IMPORT = re.compile(r"""^\s*import\b[^'"]*['"](\./[^'"]+)['"]""", re.MULTILINE)
URL = re.compile(r"https?://", re.IGNORECASE)


def static_files() -> list[Path]:
    return sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())


def without_comments(path: Path) -> str:
    """The file's text without its comments (a comment may cite a URL; code may not)."""
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".html":
        return re.sub(r"<!--.*?-->", "", source, flags=re.DOTALL)
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.DOTALL)
    if path.suffix == ".js":
        # Line comments start a line or follow whitespace; "https://" in a string does neither.
        source = re.sub(r"(^|\s)//.*$", r"\1", source, flags=re.MULTILINE)
    return source


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in {"src", "href", "action"} and v is not None]


async def test_the_page_and_its_modules_are_served() -> None:
    client = in_memory_app().test_client()
    index = await client.get("/")
    assert index.status_code == 200
    assert index.content_type.startswith("text/html")
    page = await index.get_data(as_text=True)
    assert 'data-testid="login-form"' in page
    assert '<script type="module" src="/static/app.js"></script>' in page

    css = await client.get("/static/style.css")
    assert css.status_code == 200 and css.content_type.startswith("text/css")

    # Every module the page loads, followed through its imports.
    seen: set[str] = set()
    todo = ["app.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        response = await client.get(f"/static/{name}")
        assert response.status_code == 200, name
        # A module script with any other type is refused by the browser (with nosniff).
        assert "javascript" in response.content_type, (name, response.content_type)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        source = await response.get_data(as_text=True)
        todo += [m.removeprefix("./") for m in JS_IMPORT.findall(source)]
    assert seen == {p.name for p in static_files() if p.suffix == ".js"}

    missing = await client.get("/static/nothing-here.js")
    assert missing.status_code == 404


def test_the_page_names_no_outside_address() -> None:
    files = static_files()
    assert {p.name for p in files} >= {"index.html", "app.js", "style.css"}
    for path in files:
        found = URL.findall(without_comments(path))
        assert not found, f"{path.name} refers to an outside address"
    links = _Links()
    links.feed((STATIC_DIR / "index.html").read_text(encoding="utf-8"))
    assert links.links, "the page links its script and style sheet"
    for link in links.links:
        assert link.startswith(("/static/", "data:", "#")), link


def test_the_comment_filter_keeps_addresses_in_code(tmp_path: Path) -> None:
    """The check above would be blind if stripping comments also removed URLs in code."""
    script = tmp_path / "x.js"
    script.write_text(
        '// see https://example.org\nconst a = "https://cdn.example.org/lib.js"; // fine\n'
        "/* https://example.org */ const b = `${s}//${host}`;\n"
    )
    assert URL.findall(without_comments(script)) == ["https://"]


@pytest.mark.parametrize("name", ["index.html", "app.js", "style.css"])
def test_static_files_are_package_data(name: str) -> None:
    """The editable install (and a wheel) ship the page: pyproject lists gateway/static."""
    assert resources.files("gateway").joinpath("static", name).is_file()
