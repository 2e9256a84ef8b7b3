"""The HTML report as one offline page, assembled from the explorer's own static files.

`ui/static/report.html` is the page, `style.css` and `report.css` its style, and the script is
the explorer's ES modules (util, tokens, graph, panels) plus `report.js`, joined into one classic
script at build time: each module becomes a function scope whose exports the later modules'
imports read. The files are package data, so this works from an installed wheel.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources

MODULES = ("util.js", "tokens.js", "graph.js", "panels.js", "report.js")  # dependency order
STYLES = ("style.css", "report.css")
IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"\./([\w.-]+)";[ \t]*$', re.M)
EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:function\*?|const|let|class)\s+(\w+)", re.M)


def static_text(name: str) -> str:
    """One file of the explorer's static directory."""
    return (resources.files("lmscope") / "ui" / "static" / name).read_text(encoding="utf-8")


def bundle(modules: tuple[str, ...] = MODULES) -> str:
    """The ES modules as one classic script (no loader, no network, works from file://)."""
    parts = ["const modules = {};"]
    for name in modules:
        source = static_text(name)
        exports = EXPORT.findall(source)

        def imported(match: re.Match[str], name: str = name) -> str:
            dep = match.group(2)
            if dep not in modules[: modules.index(name)]:
                raise RuntimeError(f"{name} imports {dep}, which is not bundled before it")
            return f"const {{{match.group(1)}}} = modules[{json.dumps(dep)}];"

        body = IMPORT.sub(imported, source)
        body = re.sub(r"^export\s+", "", body, flags=re.M)
        if re.search(r"^\s*(import|export)\b", body, re.M):
            raise RuntimeError(f"{name} has an import or export form the report cannot bundle")
        parts.append(
            f"modules[{json.dumps(name)}] = (() => {{\n{body}\n"
            f"return {{ {', '.join(exports)} }};\n}})();"
        )
    script = '(() => {\n"use strict";\n' + "\n".join(parts) + "\n})();\n"
    return re.sub(r"</(script)", r"<\\/\1", script, flags=re.I)


def render_page(title: str, data_json: str) -> str:
    """The page with its style, data and script inlined (`data_json` must be safe inside a
    <script> element: no "</")."""
    values = {
        "{{title}}": html.escape(title),
        "/*{{css}}*/": "\n".join(static_text(name) for name in STYLES).replace("</", "<\\/"),
        "{{data}}": data_json,
        "/*{{script}}*/": bundle(),
    }
    page = static_text("report.html")
    for marker in values:
        if page.count(marker) != 1:
            raise RuntimeError(f"report.html must hold the {marker} marker once")
    # one pass over the template, so nothing inserted is read as a marker
    pattern = "|".join(re.escape(m) for m in values)
    return re.sub(pattern, lambda m: values[m.group(0)], page)
