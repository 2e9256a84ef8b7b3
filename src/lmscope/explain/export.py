"""Writing results: route graphs as node-link JSON or GraphML, explanations as an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmscope.explain.errors import ExplainInputError
from lmscope.explain.routes import RouteGraph
from lmscope.files import atomic_write

if TYPE_CHECKING:
    import networkx as nx

    from lmscope.explain.api import Explanation

FORMATS = (".json", ".graphml", ".html")


def graphml_ready(graph: RouteGraph) -> nx.MultiDiGraph:
    """The route graph with only scalar attributes (GraphML cannot hold lists)."""
    g = graph.to_networkx()
    for key, value in list(g.graph.items()):
        if isinstance(value, list):
            g.graph[key] = ",".join(str(v) for v in value)
    for _, _, data in g.edges(data=True):
        if "heads" in data:
            data["heads"] = ",".join(f"{h:.7g}" for h in data["heads"])
    for _, data in g.nodes(data=True):
        for key, value in list(data.items()):
            if value is None:
                del data[key]
    return g


def write_graphml(graph: RouteGraph, path: str | Path) -> Path:
    import networkx as nx

    path = Path(path)
    nx.write_graphml(graphml_ready(graph), path)
    return path


def write_json(graph: RouteGraph, path: str | Path) -> Path:
    path = Path(path)
    graph.to_json(path, indent=None)
    return path


def save(result: Explanation | RouteGraph, path: str | Path) -> Path:
    """Write a route graph (.json node-link, .graphml) or an explanation (also .html)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ExplainInputError(
            f"cannot write {path.name!r}: use a .json, .graphml or .html file name"
        )
    graph = result if isinstance(result, RouteGraph) else result.routes
    if suffix == ".json":
        return write_json(graph, path)
    if suffix == ".graphml":
        return write_graphml(graph, path)
    if isinstance(result, RouteGraph):
        raise ExplainInputError("an HTML report needs a full explanation (lmscope.explain.explain)")
    from lmscope.explain.report import render_report

    page = render_report(result)

    def write(tmp: Path) -> None:
        tmp.write_text(page, encoding="utf-8")

    atomic_write(path, write)
    return path
