"""README.md and docs/ against the code: every relative link resolves, down to the heading its
anchor names; the settings table of docs/configuration.md names every environment variable
the broker reads and no `BROKER_*` or `VIDEO_DB_*` variable it does not; and the README stays
a newcomer's page that opens with the two commands."""

from __future__ import annotations

import ast
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from pydantic import AliasChoices

from app.config import Settings
from app.config.errors import env_name
from app.config.secret_files import SECRET_VARIABLES, file_variable

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 150

# `[text](target)` and `![alt](target)`, with an optional "title"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # https:, mailto: ... : not a file of ours
# a variable name in backticks; a trailing * makes it a pattern (`OTEL_EXPORTER_OTLP_*`)
VARIABLE = re.compile(r"`([A-Z][A-Z0-9_]*\*?)`")
OWN_PREFIXES = ("BROKER_", "VIDEO_DB_", "VIDEODB_")
# Rows for variables the libraries read on the broker's behalf (httpx and aiohttp: the egress
# proxy; ssl: the CA bundle), which no code of app/ names.
LIBRARY_VARIABLES = {"HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR"}


def _prose_lines(page: Path) -> list[str]:
    """The page's lines with fenced code blanked out (a `# comment` there is no heading, a
    `[x](y)` no link) and inline code removed."""
    lines: list[str] = []
    fence: str | None = None
    for line in page.read_text().splitlines():
        marker = line.lstrip()[:3]
        if fence is None and marker in ("```", "~~~"):
            fence = marker
            lines.append("")
        elif fence is not None:
            if marker == fence:
                fence = None
            lines.append("")
        else:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation but `-` and `_` dropped,
    each space a `-`."""
    text = re.sub(r"[ \t]+#+$", "", heading)  # a closing sequence of #s
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link reads as its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives the page's headings (a repeated one gets -1, -2, ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _heading_lines(page):
        slug = _slug(line)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _heading_lines(page: Path) -> list[str]:
    """The text of each heading outside fenced code, inline code kept (its words are in the
    anchor)."""
    raw = page.read_text().splitlines()
    prose = _prose_lines(page)
    return [
        match.group(1)
        for line, prose_line in zip(raw, prose, strict=True)
        if prose_line and (match := HEADING.match(line))
    ]


def _links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in the page's prose."""
    return [
        (number, match.group(1))
        for number, line in enumerate(_prose_lines(page), start=1)
        for match in LINK.finditer(line)
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading(page: Path) -> None:
    problems: list[str] = []
    for number, target in _links(page):
        if SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            problems.append(f"{where}: no such file")
        elif not linked.is_relative_to(ROOT):
            problems.append(f"{where}: outside the repository")
        elif anchor and linked.suffix != ".md":
            problems.append(f"{where}: an anchor into a file that is not a page")
        elif anchor and anchor not in _anchors(linked):
            problems.append(f"{where}: no heading of {linked.relative_to(ROOT)} makes that anchor")
    assert not problems, "\n".join(problems)


def test_the_slugs_are_githubs() -> None:
    assert _slug("Capture sessions (`BROKER_CAPTURE_SESSIONS=on`)") == (
        "capture-sessions-broker_capture_sessionson"
    )
    assert _slug("Rotate the identity provider's keys") == "rotate-the-identity-providers-keys"
    assert _slug("Tracing, decided first (#27)") == "tracing-decided-first-27"
    assert _slug("A [linked](x.md) heading ##") == "a-linked-heading"


def test_the_link_checker_reads_a_page_as_github_does(tmp_path: Path) -> None:
    """No heading or link inside fenced or inline code; a repeated heading gets -1."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n```sh\n# not a heading [x](gone.md)\n```\n\n"
        "See `[y](gone.md)` and [the title](#title).\n\n## Title\n"
    )
    assert _links(page) == [(7, "#title")]
    assert _anchors(page) == {"title", "title-1"}


def _setting_variables() -> dict[str, set[str]]:
    """Settings field -> the environment variables that set it, as pydantic-settings reads them
    (an alias replaces the `BROKER_` name)."""
    prefix = Settings.model_config.get("env_prefix", "")
    variables: dict[str, set[str]] = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names = {choice for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names = {alias}
        else:
            names = {f"{prefix}{field}".upper()}
        assert env_name(field) in names, field  # the name configuration errors give it
        variables[field] = names
    return variables


def _file_variables() -> set[str]:
    """Each secret's `<NAME>_FILE` (app/config/secret_files.py)."""
    settings = _setting_variables()
    for field, names in SECRET_VARIABLES.items():
        assert set(names) <= settings[field], field
    return {file_variable(field) for field in SECRET_VARIABLES}


def _is_os_environ(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """The module's constants holding a string (`MULTIPROC_ENV = "PROMETHEUS_..."`)."""
    strings: dict[str, str] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        value = getattr(node, "value", None)
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            strings.update({t.id: value.value for t in targets if isinstance(t, ast.Name)})
    return strings


def _variable_read(node: ast.AST) -> ast.expr | None:
    """What names the variable when `node` reads one: `os.environ[...]`,
    `os.environ.get(...)` (or `pop`, `setdefault`), `os.getenv(...)`; else None."""
    if isinstance(node, ast.Subscript) and _is_os_environ(node.value):
        return node.slice
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute)):
        return None
    func = node.func
    if _is_os_environ(func.value) and func.attr in ("get", "pop", "setdefault"):
        return node.args[0]
    if func.attr == "getenv" and isinstance(func.value, ast.Name) and func.value.id == "os":
        return node.args[0]
    return None


def _environment_reads() -> dict[str, str]:
    """Variable -> where app/ reads it itself, beside the settings."""
    reads: dict[str, str] = {}
    for path in sorted((ROOT / "app").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        strings = _module_strings(tree)
        for node in ast.walk(tree):
            key = _variable_read(node)
            if key is None:
                continue
            where = f"{path.relative_to(ROOT)}:{key.lineno}"
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                name = key.value
            elif isinstance(key, ast.Name) and key.id in strings:
                name = strings[key.id]
            else:
                raise AssertionError(f"{where}: a variable whose name this test cannot read")
            reads.setdefault(name, where)
    return reads


def _settings_table() -> list[list[str]]:
    """The rows of the table under docs/configuration.md's `## Settings`, as cells."""
    lines = CONFIGURATION.read_text().splitlines()
    start = lines.index("## Settings")
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])])
        elif rows:
            break  # the table has ended
    assert rows[0][0] == "variable", rows[0]
    return rows[2:]  # past the header and its --- line


def _documented() -> tuple[set[str], set[str]]:
    """(the names in the table's first column, every name or pattern anywhere in it)."""
    rows = _settings_table()
    first = {name for row in rows for name in VARIABLE.findall(row[0]) if not name.endswith("*")}
    anywhere = {name for row in rows for cell in row for name in VARIABLE.findall(cell)}
    return first, anywhere


def test_every_setting_and_its_file_variable_has_a_row() -> None:
    first, _ = _documented()
    wanted = set().union(*_setting_variables().values()) | _file_variables()
    missing = sorted(wanted - first)
    assert not missing, f"docs/configuration.md's settings table lacks {missing}"


def test_every_variable_app_reads_itself_is_in_the_table() -> None:
    reads = _environment_reads()
    assert {"PORT", "HOST", "PROMETHEUS_MULTIPROC_DIR"} <= set(reads)  # the scan sees them
    _, anywhere = _documented()
    patterns = [name for name in anywhere if name.endswith("*")]
    missing = [
        f"{name} ({where})"
        for name, where in sorted(reads.items())
        if name not in anywhere and not any(fnmatchcase(name, p) for p in patterns)
    ]
    assert not missing, f"docs/configuration.md's settings table lacks {missing}"


def test_the_table_names_no_variable_the_broker_does_not_read() -> None:
    first, anywhere = _documented()
    real = set().union(*_setting_variables().values()) | _file_variables()
    own = {name for name in anywhere if name.startswith(OWN_PREFIXES)}
    unknown = sorted(
        name
        for name in own
        if not (any(fnmatchcase(r, name) for r in real) if name.endswith("*") else name in real)
    )
    assert not unknown, f"not settings of the broker: {unknown}"
    others = first - real - set(_environment_reads()) - LIBRARY_VARIABLES
    assert not others, f"rows for variables nothing reads: {sorted(others)}"


def test_the_readme_is_short_and_opens_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
    assert lines[:3] == ["# videodb-token-broker", "", "```sh"]
    block = lines[3 : lines.index("```", 3)]
    assert [line.split("#")[0].strip() for line in block] == ["make demo", "make test"]
    assert all("# " in line for line in block)  # each with its one-line comment
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_the_readme_links_every_docs_page() -> None:
    linked = {target.partition("#")[0] for _, target in _links(README)}
    missing = [page.name for page in PAGES[1:] if f"docs/{page.name}" not in linked]
    assert not missing, f"README.md links none of {missing}"
