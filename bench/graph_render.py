"""Route-graph drawing time in headless Chromium: the explorer's graph.js now against an older
revision's, on the same synthetic graph (30 layers x 200 tokens, ~32k edges, as at a small tau).

Prints, per redraw (one tau slider step), the milliseconds spent in renderGraph's JavaScript, in
style and layout, and until the next frame is painted, each measured with performance.now().
Needs Debian's chromium and playwright (as the browser tests do).

    python bench/graph_render.py [--rev 7f0ebb0] [--runs 5]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "src" / "lmscope" / "ui" / "static"
sys.path.insert(0, str(REPO / "tests"))

PAGE = """<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="new/style.css">
</head><body><div id="graph-wrap" class="graph-wrap" style="width:1200px;height:800px;overflow:auto">
<div class="graph-inner"><svg id="graph-layers" class="layer-labels"></svg><svg id="graph"></svg>
</div></div></body></html>"""

RUN = """async ([which, runs]) => {
  const g = await import(`/${which}/graph.js`);
  let seed = 1;
  const rnd = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  const L = 30, T = 200, nodes = [], links = [];
  const pre = (l, p) => (l === 0 ? `embed/${p}` : `L${l - 1}/resid_post/${p}`);
  for (let p = 0; p < T; p++) {
    nodes.push({ id: `embed/${p}`, kind: "embed", layer: -1, position: p });
    for (let l = 0; l < L; l++) {
      for (const kind of ["resid_mid", "mlp", "resid_post"]) nodes.push({ id: `L${l}/${kind}/${p}`, kind, layer: l, position: p });
      const mid = `L${l}/resid_mid/${p}`, post = `L${l}/resid_post/${p}`, w = () => 0.001 + rnd() * rnd();
      links.push({ source: pre(l, p), target: mid, kind: "residual", layer: l, weight: w(), raw: 0.5 });
      links.push({ source: mid, target: post, kind: "residual", layer: l, weight: w(), raw: 0.5 });
      links.push({ source: `L${l}/mlp/${p}`, target: post, kind: "mlp_out", layer: l, weight: w(), raw: 0.5 });
      links.push({ source: mid, target: `L${l}/mlp/${p}`, kind: "mlp_in", layer: l, weight: w(), raw: 0.5 });
      for (let j = 0, k = 1 + Math.floor(rnd() * 1.6); j < k; j++) {
        const s = Math.floor(rnd() * (p + 1));
        links.push({ source: pre(l, s), target: mid, kind: s === p ? "self_attention" : "attention", layer: l, weight: w(), raw: 0.5, heads: [0.1, 0.2] });
      }
    }
  }
  const routes = { graph: { tau: 0.001, targets: [T - 1], n_layers: L, renormalise: false }, nodes, links };
  const svg = document.getElementById("graph");
  const opts = { tokenStrs: Array.from({ length: T }, (_, i) => "tok" + i), target: T - 1, nLayers: L,
    box: { width: 1200, height: 800 }, labels: document.getElementById("graph-layers") };
  const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const out = [];
  for (let i = 0; i <= runs; i++) {
    await frame();
    const t0 = performance.now();
    g.renderGraph(svg, routes, { ...opts, zoom: 1 + 0.001 * i });
    const t1 = performance.now();
    document.body.offsetHeight; // style and layout
    const t2 = performance.now();
    await frame(); // painted
    if (i > 0) out.push([t1 - t0, t2 - t1, performance.now() - t2]);
  }
  return { edges: links.length, elements: svg.querySelectorAll("*").length, ms: out };
}"""


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="7f0ebb0", help="the older revision (git) to compare")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from browser_support import CHROMIUM_ARGS, playwright_or_skip

    api = playwright_or_skip()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(STATIC, root / "new")
        (root / "old").mkdir()
        for name in ("graph.js", "util.js"):
            text = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{args.rev}:src/lmscope/ui/static/{name}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (root / "old" / name).write_text(text)
        (root / "index.html").write_text(PAGE)
        handler = functools.partial(Quiet, directory=tmp)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        from browser_support import CHROMIUM

        with api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for which in ("old", "new"):
                page = browser.new_page(viewport={"width": 1300, "height": 900})
                page.goto(url)
                r = page.evaluate(RUN, [which, args.runs])
                js, layout, paint = (statistics.median(t[i] for t in r["ms"]) for i in range(3))
                print(
                    f"{which:>3} ({args.rev if which == 'old' else 'working tree'}): "
                    f"{r['edges']} edges, {r['elements']} SVG elements; median ms per redraw: "
                    f"js {js:.0f} + layout {layout:.0f} + paint {paint:.0f} = "
                    f"{js + layout + paint:.0f}"
                )
                page.close()
            browser.close()
        server.shutdown()


if __name__ == "__main__":
    main()
