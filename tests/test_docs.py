"""Every claim in README.md and docs/ that a command can check: outputs, links, signatures, pages."""

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import docs_outputs  # noqa: E402

PAGES = docs_outputs.PAGES
DOCS = sorted((REPO / "docs").glob("*.md"))


def test_every_checked_output_is_what_the_command_prints_now():
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "docs_outputs.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, (
        "run python tools/docs_outputs.py; it differs:\n" + done.stdout[-6000:] + done.stderr[-2000:]
    )


def test_every_console_block_with_output_is_checked_or_says_where_it_was_measured():
    commits = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--git-dir"], capture_output=True).returncode == 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in docs_outputs.blocks(text):
            if not docs_outputs.shows_output(block["body"]):
                continue
            where = f"{page.name}: block starting {block['body'].splitlines()[0]!r}"
            marker = block["marker"].strip()
            if marker == docs_outputs.CHECKED:
                continue
            measured = docs_outputs.MEASURED.fullmatch(marker)
            assert measured, f"{where} shows output but is neither checked nor marked as measured"
            if commits:
                known = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", measured["commit"] + "^{commit}"])
                assert known.returncode == 0, f"{where}: commit {measured['commit']} is not in this repository"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")} | set(
        re.findall(r'<a id="([^"]+)"', text)
    )


def test_every_relative_link_and_anchor_resolves():
    for page in [*PAGES, REPO / "CHANGELOG.md"]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor and linked.suffix == ".md":
                assert anchor in anchors(linked), f"{page.name} links to {target}: no such heading"


def test_the_repository_stands_alone():
    for path in [
        *PAGES,
        REPO / "CHANGELOG.md",
        *sorted((REPO / "src").rglob("*.py")),
        *sorted((REPO / "configs").rglob("*.yaml")),
    ]:
        text = path.read_text(encoding="utf-8")
        for outside in ("REFERENCE-FACTS", "../shared", "shared/paper"):
            assert outside not in text, f"{path.relative_to(REPO)} points at {outside}, outside the repository"
        assert "pip install 'cnl[" not in text and 'pip install "cnl[' not in text, (
            f"{path.relative_to(REPO)}: cnl is not published; from a checkout it is pip install -e '.[extra]'"
        )


def test_every_docs_page_is_in_the_readme_and_the_architecture():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    architecture = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    for page in DOCS:
        assert f"(docs/{page.name})" in readme, f"README's table of contents lacks docs/{page.name}"
        assert page.name == "architecture.md" or page.name in architecture, f"docs/architecture.md lacks {page.name}"


def parameters(arguments: str) -> list[str]:
    """The parameter names of ``a, b=(1, 2), *c, **d``: commas inside brackets do not split."""
    names, depth, current = [], 0, ""
    for char in arguments + ",":
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            if current.strip():
                names.append(current.split("=")[0].strip().lstrip("*"))
            current = ""
        else:
            current += char
    return names


def api_rows():
    for line in (REPO / "docs" / "api.md").read_text(encoding="utf-8").splitlines():
        yield from re.findall(r"`(cnl(?:\.\w+)+)\(([^`]*)\)`", line.split("|")[1] if "|" in line else "")


@pytest.mark.parametrize("name,arguments", list(api_rows()))
def test_api_md_gives_each_function_its_parameters(name, arguments):
    module_name, _, attribute = name.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except ModuleNotFoundError:  # a class's method: cnl.pkg.Class.method
        module_name, _, owner = module_name.rpartition(".")
        target = getattr(getattr(importlib.import_module(module_name), owner), attribute)
    documented = parameters(arguments)
    actual = [p.name for p in inspect.signature(target).parameters.values() if p.name != "self"]
    assert documented == actual, f"docs/api.md: {name}({arguments}), but the code takes {actual}"


def test_every_device_flag_defaults_to_auto_as_the_docs_say():
    for name, _, parser in docs_outputs.parser_commands():
        for action in parser._actions:
            if "--device" in action.option_strings and name not in ("train", "ablate"):
                assert action.default == "auto", f"cnl {name} --device defaults to {action.default}"


def test_the_files_a_project_is_expected_to_have():
    import tomllib
    import yaml  # noqa: I001

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "MIT"
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "WITHOUT WARRANTY" in license_text
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["version"] == project["version"]
    assert citation["license"] == "MIT"
    paper = citation["preferred-citation"]
    assert paper["title"] == "Associating Multi-Scale Receptive Fields for Fine-Grained Recognition"
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Ye", "Hu"] and paper["year"] == 2020
    readme = (REPO / "README.md").read_text()
    assert "arxiv.org/abs/2005.09153" in readme and "github.com/FouriYe/CNL-ICIP2020" in readme
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## {project['version']}" in changelog or "## Unreleased" in changelog


def bench_commands(text: str) -> set[tuple[str, frozenset[str]]]:
    """``(job, flags)`` of every ``cnl bench JOB --flag ...`` in a text."""
    found = set()
    for job, rest in re.findall(r"cnl bench (model|module|input|predict)((?:[ \t]+(?:\\\n[ \t]*)?[^\s`|]+)*)", text):
        found.add((job, frozenset(re.findall(r"(?<![\w-])(--[\w-]+)", rest))))
    return found


def test_every_bench_command_in_the_docs_is_one_the_benchmark_scripts_run():
    scripts = "\n".join(
        (REPO / "benchmarks" / name).read_text().replace("$cnl", "cnl").replace("$py -m cnl", "cnl")
        for name in ("run_cpu.sh", "run_gpu.sh")
    )
    run = bench_commands(scripts)
    for job, flags in bench_commands((REPO / "docs" / "benchmarks.md").read_text()):
        assert any(job == ran_job and flags <= ran_flags for ran_job, ran_flags in run), (
            f"docs/benchmarks.md shows cnl bench {job} {' '.join(sorted(flags))}, which no benchmark script runs"
        )


def test_no_measured_speed_is_claimed_in_the_code():
    """Speeds are measured by commands and quoted in docs/ with their machine; a docstring
    that says "twice as fast" drifts from them (it did: "twice" there, "four times" here)."""
    claim = re.compile(r"\b(twice|\w+ times) as fast\b|\d+(\.\d+)?x faster", re.I)
    for path in sorted((REPO / "src").rglob("*.py")):
        assert not claim.search(path.read_text()), f"{path.relative_to(REPO)} claims a speed"


def test_datasets_md_shows_what_a_complete_copy_prints():
    from collections import Counter

    from cnl.data.check import OFFICIAL, SplitReport, compare_official, published_splits

    text = (REPO / "docs" / "datasets.md").read_text()
    for name, (sizes, classes) in OFFICIAL.items():
        reports = [
            SplitReport(split, sizes[split], [str(k) for k in range(classes)], Counter())
            for split in published_splits(name)
        ]
        (line,) = compare_official(name, reports)
        assert f"| {line} |" in text, f"docs/datasets.md should show {line!r} for {name}"


def test_every_test_the_docs_name_exists():
    """docs/ names tests as evidence (reliability.md's tables): each must be a test in tests/."""
    defined = set()
    for path in (REPO / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)\(", path.read_text(), re.M))
    # timm's own tests, which the conftest of tools/timm_suite names in its skip rules
    defined |= set(re.findall(r'"(test_\w+)"', (REPO / "tools" / "timm_suite" / "conftest.py").read_text()))
    for page in DOCS:
        for name in re.findall(r"(?<![\w/.])(test_\w+)(?=[`:\[,\s)]|$)", page.read_text(encoding="utf-8")):
            if "_" in name[5:] and not name.endswith("_py"):
                assert name in defined, f"{page.name} names {name}, which no test in tests/ defines"
        for file, name in re.findall(r"(tests/test_\w+\.py)::(test_\w+)", page.read_text(encoding="utf-8")):
            text = (REPO / file).read_text() if (REPO / file).is_file() else ""
            assert re.search(rf"^def {name}\(", text, re.M), f"{page.name} names {file}::{name}, not defined there"


def slow_tests_of(session: pytest.Session) -> int | None:
    """How many of this session's tests are marked slow, when it collected every test file
    and deselected nothing (``pytest -q``, as CI runs it); None otherwise."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    files = {Path(item.path) for item in session.items}
    if reporter is None or reporter.stats.get("deselected") or files != set(Path(__file__).parent.glob("test_*.py")):
        return None
    return sum(item.get_closest_marker("slow") is not None for item in session.items)


@pytest.mark.slow  # when run alone, it starts pytest, so it is one of the tests it counts
def test_the_readme_counts_the_tests_that_the_fast_subset_leaves_out(request):
    stated = re.search(r"leaves out the (\d+) slowest tests", (REPO / "README.md").read_text())
    assert stated, "README.md no longer says how many tests -m 'not slow' leaves out"
    counted = slow_tests_of(request.session)
    if counted is None:  # a part of the suite: collect the whole of it
        collected = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow", "-p", "no:cacheprovider", "tests"],
            capture_output=True, text=True, cwd=REPO, timeout=300,
        )  # fmt: skip
        summary = re.search(r"(\d+)/\d+ tests collected", collected.stdout)
        assert summary, collected.stdout[-2000:] + collected.stderr[-2000:]
        counted = int(summary.group(1))
    assert int(stated.group(1)) == counted


def test_the_api_page_names_every_dataset_of_the_catalog():
    from cnl.data.catalog import CATALOG

    (row,) = [line for line in (REPO / "docs" / "api.md").read_text().splitlines() if "cnl.data.build_dataset(" in line]
    assert re.findall(r"`(\w+)`", row.split("|")[2]) == [*CATALOG, "auto"]
