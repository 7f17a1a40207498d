"""``prose/<package>``: English prose from installed dependency packages, with code and markup cleaned out.

The docstrings of each package's ``.py`` files plus the README in its distribution ``METADATA``; see
`clean_prose` for what is dropped. Paragraphs are de-duplicated across all packages (transformers copies
docstrings between models); one source file's prose is cut into documents of at most `MAX_DOC_CHARS` characters.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import re
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

from crl.sae_training.corpus.doc import Doc

MAX_DOC_CHARS = 2000

_DOCSTRING = re.compile(r'(?:"""|\'\'\')(.*?)(?:"""|\'\'\')', re.S)
_ROLE = re.compile(r":[a-z]+:`~?([^`]*)`")  # :class:`Foo` -> Foo
_LINK = re.compile(r"\[`~?([^`\]]*)`\](?:\([^)]*\))?")  # [`Foo`] -> Foo
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")  # [text](url) -> text
_HTML = re.compile(r"<[^>]{1,200}>")
_SECTION = re.compile(
    r"^(args|arguments|parameters|params|returns?|raises|yields|examples?|notes?|attributes|see also|"
    r"references|warnings?|shape|inputs|outputs|usage|todo)\s*:?$",
    re.I,
)
_CODEY = re.compile(r"[{};]|==|->|=>|\bdef |\bimport |\breturn |\bself\.|%\(|\w+\(\w*=")


def clean_prose(raw: str) -> list[str]:
    """English paragraphs of a docstring or Markdown text, with code and markup removed."""
    lines = textwrap.dedent(raw.expandtabs(4)).strip("\n").split("\n")
    kept: list[str] = []
    in_fence = False
    literal_indent: int | None = None
    for line in lines:
        s = line.strip()
        if s.startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:  # inside a reST literal block: skip its indented body
            if not s or indent > literal_indent:
                continue
            literal_indent = None
        if s.startswith((">>>", "... ", "$ ", "In [", "Out[", "|", "#!")) or s == "...":
            continue
        if s.startswith(".. "):  # reST directive (code-block, math, note...): drop it and its body
            literal_indent = indent
            continue
        if len(s) >= 3 and set(s) <= set("-=~^*+#_"):  # section underline: drop it and its title
            if kept and kept[-1]:
                kept.pop()
            kept.append("")
            continue
        if _SECTION.match(s.lstrip("#").strip()):
            kept.append("")
            continue
        if s.endswith("::"):
            literal_indent = indent
            s = s[:-1]
        kept.append(s.lstrip("#").strip() if s.startswith("#") else s)
    paragraphs: list[str] = []
    current: list[str] = []
    for s in [*kept, ""]:
        if s:
            current.append(s)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return [p for p in (_normalize(p) for p in paragraphs) if _is_prose(p)]


def _normalize(p: str) -> str:
    p = _MD_LINK.sub(r"\1", _LINK.sub(r"\1", _ROLE.sub(r"\1", p)))
    p = _HTML.sub("", p).replace("`", "").replace("**", "").replace("*", "")
    return re.sub(r"\s+", " ", p).strip()


def _is_prose(p: str) -> bool:
    words = p.split()
    if len(words) < 6 or _CODEY.search(p):
        return False
    chars = [c for c in p if not c.isspace()]
    if sum(c.isalpha() for c in chars) / len(chars) < 0.78:
        return False
    return sum(w.strip(".,;:()'\"!?").isalpha() for w in words) / len(words) >= 0.6


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _readme(name: str) -> str:
    dists = md.packages_distributions().get(name, [])
    for dist in dists:
        try:
            body = md.distribution(dist).metadata.get_payload()
        except md.PackageNotFoundError:
            continue
        if isinstance(body, str) and body.strip():
            return body
    return ""


def _split_doc(paragraphs: list[str]) -> Iterator[str]:
    piece: list[str] = []
    size = 0
    for p in paragraphs:
        if piece and size + len(p) > MAX_DOC_CHARS:
            yield "\n\n".join(piece)
            piece, size = [], 0
        piece.append(p)
        size += len(p) + 2
    if piece:
        yield "\n\n".join(piece)


def prose_documents(packages: Iterable[str]) -> dict[str, list[Doc]]:
    """Package -> documents (one file's de-duplicated prose per group). Missing packages are skipped."""
    seen: set[bytes] = set()
    out: dict[str, list[Doc]] = {}
    for name in packages:
        root = _package_dir(name)
        if root is None:
            continue
        docs: list[Doc] = []
        sources = [(f"{name}:README", _readme(name))]
        files = sorted(root.rglob("*.py"))
        for path, text in [*sources, *((p, None) for p in files)]:
            if text is None:
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                raws = [m.group(1) for m in _DOCSTRING.finditer(text)]
            else:
                raws = [text]
            paragraphs = []
            for raw in raws:
                for p in clean_prose(raw):
                    key = hashlib.md5(p.lower().encode()).digest()
                    if key not in seen:
                        seen.add(key)
                        paragraphs.append(p)
            where = path.relative_to(root.parent) if isinstance(path, Path) else path
            docs.extend(
                Doc(f"prose/{name}", f"prose:{where}#{i}", piece) for i, piece in enumerate(_split_doc(paragraphs))
            )
        if docs:
            out[name] = docs
    return out
