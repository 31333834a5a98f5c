"""Nothing in the repository cites a document that is not in it: every docs/ page, README and relative link named
in the tree exists, and no file cites the design notes the project started from (the docs/ pages replace them)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "third_party", "build", "__pycache__", "results", ".pytest_cache"}
TEXT = {".py", ".md", ".toml", ".cpp", ".h", ".cu", ".cuh", ".cmake", ".txt", ".sh", ".map"}
TOP = ("docs", "plugins", "export", "benchmarks", "samples", "ssd_deploy", "tests")
# a path-like mention of a markdown file under one of the top-level folders, e.g. docs/op-contracts.md
MENTION = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*?\.md)\b" % "|".join(TOP))
LINK = re.compile(r"\]\(([^)#\s]+)")  # markdown links
DOCS = ["README.md", "architecture.md", "op-contracts.md", "graph-interface.md", "flavors.md", "verification.md",
        "performance.md", "extending.md"]


def text_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if path.is_file() and path.suffix in TEXT and not SKIP_DIRS & set(rel.parts[:-1]) \
                and not any(p.endswith(".egg-info") for p in rel.parts):
            yield path, rel


def test_the_docs_exist():
    assert all((ROOT / "docs" / name).is_file() for name in DOCS)


def test_every_cited_document_exists():
    missing = []
    for path, rel in text_files():
        text = path.read_text(errors="replace")
        for m in MENTION.finditer(text):
            if not (ROOT / m.group(1)).exists():
                missing.append(f"{rel}: {m.group(1)}")
        if path.suffix == ".md":
            for m in LINK.finditer(text):
                target = m.group(1)
                if "://" not in target and not target.startswith("mailto:") and \
                        not (path.parent / target).exists():
                    missing.append(f"{rel}: link {target}")
    assert not missing, "\n".join(missing)


def test_no_citation_of_documents_outside_the_repository():
    pattern = re.compile(r"DESIGN §|DESIGN\.md|REFERENCES\.md")
    found = [f"{rel}:{i + 1}" for path, rel in text_files() if path.name != "test_docs.py"
             for i, line in enumerate(path.read_text(errors="replace").splitlines()) if pattern.search(line)]
    assert not found, found


def test_graph_interface_lists_every_metadata_key():
    """docs/graph-interface.md's metadata table names exactly the keys an export writes."""
    from conftest import TINY
    from ssd_deploy.interface import ExportMetadata

    meta = ExportMetadata(config=TINY, flavor="ort", dtype="fp32", opset=18, exporter="x", checkpoint_sha256="0" * 64,
                          prefill="contrib", companion="decode", weights={"initializers": {"bytes": 1, "sha256": "0" * 64}},
                          quant="int4", quant_block=128, quant_format="matmulnbits")
    text = (ROOT / "docs" / "graph-interface.md").read_text()
    section = text[text.index("## Metadata"):]
    section = section[:section.index("\n## ", 1)]
    documented = set(re.findall(r"^\| `(ssd_deploy\.\w+)`", section, re.M))
    assert documented == set(meta.to_props())
