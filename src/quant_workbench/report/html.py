"""A standalone HTML page from a report's Markdown (`quantize report RUN_DIR --format html`).

The converter covers the subset report.md and sweep.md use: headings, paragraphs, pipe tables (with the
alignment row and escaped pipes), nested `-` lists whose items may hold fenced code, fenced code blocks,
inline code, bold, links and images. Images that are local files are embedded as base64 data URIs and the
CSS is inline, so the page opens in a browser from anywhere and loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from pathlib import Path

from quant_workbench.core.artifacts import write_text

ImageSource = Callable[[str], str | None]  # a Markdown image path -> a data URI, or None when there is no such file

_FENCE = re.compile(r"^(`{3,})([\w-]*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_ITEM = re.compile(r"^( *)[-*] (.*)$")
_TABLE_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1, h2, h3, h4 { line-height: 1.2; margin-top: 1.6em; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d0d0; padding: .3em .6em; vertical-align: top; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
td.num, th.num { text-align: right; white-space: nowrap; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: .9em; background: #f3f3f3;
       padding: .05em .3em; border-radius: 3px; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; border-radius: 4px; }
pre code { background: none; padding: 0; }
img { max-width: 100%; height: auto; }
.missing { color: #a00; }
"""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def inline(text: str, image: ImageSource) -> str:
    """One line of Markdown text as HTML: code spans first (nothing inside them is formatted), then images, links, bold."""
    out: list[str] = []
    pos = 0
    for m in _CODE_SPAN.finditer(text):
        out.append(_formatted(text[pos : m.start()], image))
        out.append(f"<code>{html.escape(m.group(2).strip() or m.group(2))}</code>")
        pos = m.end()
    out.append(_formatted(text[pos:], image))
    return "".join(out)


def _formatted(text: str, image: ImageSource) -> str:
    def img(m: re.Match[str]) -> str:
        alt, src = html.unescape(m.group(1)), html.unescape(m.group(2))
        uri = image(src)
        if uri is None:
            return f'<span class="missing">[image not found: {html.escape(src)}]</span>'
        return f'<img src="{uri}" alt="{html.escape(alt, quote=True)}">'

    def link(m: re.Match[str]) -> str:
        return f'<a href="{m.group(2)}">{m.group(1)}</a>'

    escaped = html.escape(text, quote=False)
    escaped = _IMAGE.sub(img, escaped)
    escaped = _LINK.sub(link, escaped)
    return _BOLD.sub(r"<strong>\1</strong>", escaped)


def _cells(line: str) -> list[str]:
    """A pipe-table row's cells; `\\|` is a pipe inside a cell and `\\\\` a backslash (report._cell's escapes)."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    cells, current, i = [], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] in "|\\":
            current.append(body[i + 1])
            i += 2
            continue
        if ch == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    cells.append("".join(current).strip())
    return cells


def _table(lines: list[str], image: ImageSource) -> str:
    header = _cells(lines[0])
    right = [c.strip().endswith(":") for c in _cells(lines[1])]
    right += [False] * (len(header) - len(right))

    def cls(i: int) -> str:
        return ' class="num"' if i < len(right) and right[i] else ""

    out = ["<table>", "<thead><tr>" + "".join(f"<th{cls(i)}>{inline(c, image)}</th>" for i, c in enumerate(header)) + "</tr></thead>", "<tbody>"]
    for row in lines[2:]:
        out.append("<tr>" + "".join(f"<td{cls(i)}>{inline(c, image)}</td>" for i, c in enumerate(_cells(row))) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _list(lines: list[str], i: int, image: ImageSource) -> tuple[str, int]:
    indent = _indent(lines[i])
    items: list[list[str]] = []
    while i < len(lines):
        m = _ITEM.match(lines[i])
        if m is None or len(m.group(1)) != indent:
            break
        body = [m.group(2)]
        i += 1
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                j = i
                while j < len(lines) and not lines[j].strip():
                    j += 1
                if j < len(lines) and _indent(lines[j]) > indent:  # a blank line inside the item (before its code block)
                    body += [""] * (j - i)
                    i = j
                    continue
                break
            if _indent(line) <= indent:
                break
            body.append(line[indent + 2 :] if _indent(line) >= indent + 2 else line.lstrip(" "))
            i += 1
        items.append(body)
    rendered = []
    for body in items:
        inner = blocks(body, image)
        if inner.startswith("<p>") and inner.count("<p>") == 1:  # a one-paragraph item reads better without the <p>
            inner = inner[3:].replace("</p>", "", 1)
        rendered.append(f"<li>{inner}</li>")
    return "<ul>\n" + "\n".join(rendered) + "\n</ul>", i


def blocks(lines: list[str], image: ImageSource) -> str:
    """Block-level Markdown (a list of lines) as HTML."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
            continue
        fence = _FENCE.match(stripped)
        if fence:
            ticks, indent = fence.group(1), _indent(line)
            code: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != ticks:
                code.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            i += 1  # the closing fence
            out.append(f"<pre><code>{html.escape(chr(10).join(code))}</code></pre>")
            continue
        heading = _HEADING.match(stripped)
        if heading:
            level = len(heading.group(1))
            anchor = re.sub(r"[^a-z0-9]+", "-", heading.group(2).lower()).strip("-")
            out.append(f'<h{level} id="{anchor}">{inline(heading.group(2), image)}</h{level}>')
            i += 1
            continue
        if stripped.startswith("|") and i + 1 < len(lines) and _TABLE_SEPARATOR.match(lines[i + 1].strip()):
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            out.append(_table([x.strip() for x in lines[i:j]], image))
            i = j
            continue
        if _ITEM.match(line):
            html_list, i = _list(lines, i, image)
            out.append(html_list)
            continue
        para = [stripped]
        i += 1
        while i < len(lines) and lines[i].strip() and not _starts_block(lines, i):
            para.append(lines[i].strip())
            i += 1
        out.append(f"<p>{inline(' '.join(para), image)}</p>")
    return "\n".join(out)


def _starts_block(lines: list[str], i: int) -> bool:
    s = lines[i].strip()
    return bool(
        _FENCE.match(s) or _HEADING.match(s) or _ITEM.match(lines[i])
        or (s.startswith("|") and i + 1 < len(lines) and _TABLE_SEPARATOR.match(lines[i + 1].strip()))
    )


def markdown_to_html(markdown: str, image: ImageSource = lambda src: None) -> str:
    return blocks(markdown.split("\n"), image)


def embedded_images(folder: Path) -> ImageSource:
    """Local images (relative to `folder`, never outside it) as base64 data URIs."""
    root = folder.resolve()
    kinds = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}

    def source(src: str) -> str | None:
        if re.match(r"^[a-z][a-z0-9+.-]*:", src, re.IGNORECASE):  # http:, data:, file: ... : nothing is fetched
            return None
        path = (root / src).resolve()
        kind = kinds.get(path.suffix.lower())
        if kind is None or root not in path.parents or not path.is_file():
            return None
        return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"

    return source


def standalone_page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def write_html(markdown_path: Path, out_path: Path | None = None) -> Path:
    """`report.md` (or sweep.md) -> a standalone `.html` beside it, images embedded from its folder."""
    markdown = markdown_path.read_text(encoding="utf-8")
    title = next((line[2:].strip() for line in markdown.split("\n") if line.startswith("# ")), markdown_path.stem)
    body = markdown_to_html(markdown, embedded_images(markdown_path.parent))
    return write_text(out_path or markdown_path.with_suffix(".html"), standalone_page(title, body))
