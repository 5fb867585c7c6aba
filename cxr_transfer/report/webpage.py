"""The offline report: one self-contained HTML page, and the template that makes `dvc plots show`
work offline too.

Vega, Vega-Lite and Vega-Embed come inlined from vl-convert-python's JavaScript bundle, the
Grad-CAM grids are embedded as data URIs and every chart's data sits in its spec: the page loads
nothing from the network (hospital networks and compute clusters are often offline).
"""

from __future__ import annotations

import base64
import html
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_transfer.core.errors import CxrError

if TYPE_CHECKING:
    import pandas as pd

VL_VERSION = "5.21"  # DVC's plot templates are Vega-Lite 5 specs
SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"  # an identifier: never fetched
STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 0 24px 48px; color: #1d232a; }
h1 { margin: 28px 0 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #d8dee4; }
.sub { color: #57606a; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 10px 0 14px; font-size: 13.5px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } tr:nth-child(even) td { background: #fafbfc; }
code, pre { font: 12.5px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f3f5f7; }
pre { padding: 10px; overflow-x: auto; max-height: 420px; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
.chart { min-height: 120px; }
img.grid { max-width: 100%; border: 1px solid #d0d7de; margin: 8px 0 18px; }
nav a { margin-right: 14px; }
"""


def js_bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed in one script (window.vega, vegaLite, vegaEmbed), safe to
    place inside a <script> element."""
    import vl_convert

    return vl_convert.javascript_bundle(vl_version=VL_VERSION).replace("</script", "<\\/script")


class Bundle:
    """`js_bundle()` built in a child process: vl-convert holds the GIL for its 1.5-2.5 s, so the
    report stage starts this first and the bundle is built on the other core while it imports
    torch and draws (`get()` waits for it)."""

    def __init__(self):
        code = "import sys; from cxr_transfer.report.webpage import js_bundle; sys.stdout.write(js_bundle())"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def get(self) -> str:
        out, err = self.proc.communicate()
        if self.proc.returncode != 0 or "vegaEmbed" not in out:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise CxrError(
                f"the Vega bundle for the report page failed ({last}): is vl-convert-python installed?"
            )
        return out


def dvc_plots_template(bundle: str) -> str:
    """A page for `dvc plots show` (config plots.html_template): the bundle inlined and no
    {scripts} placeholder, so DVC's CDN script tags are left out."""
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n'
        "<title>DVC plots (offline)</title>\n<script>" + bundle + "</script>\n"
        "<style>table { border-spacing: 15px; } body { font-family: system-ui, sans-serif; }</style>\n"
        "</head>\n<body>\n{plot_divs}\n</body>\n</html>\n"
    )


def _values(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records"))


def _lines(df: pd.DataFrame, x: str, y: str, title: str, xt: str, yt: str, **extra) -> dict:
    axis = {"axis": {"tickMinStep": 1, "format": "d"}} if x == "epoch" else {}
    enc = {
        "x": {"field": x, "type": "quantitative", "title": xt, **axis},
        "y": {"field": y, "type": "quantitative", "title": yt, "scale": {"zero": False}},
        "color": {
            "field": "model",
            "type": "nominal",
            "title": None,
            "legend": {"orient": "bottom", "columns": 2},
        },
        "tooltip": [{"field": "model"}, {"field": x}, {"field": y, "format": ".3f"}],
        **extra,
    }
    return {
        "$schema": SCHEMA,
        "title": title,
        "width": 360,
        "height": 240,
        "data": {"values": _values(df)},
        "mark": {"type": "line", "point": len(df) <= 400},
        "encoding": enc,
    }


def curve_specs(curves: pd.DataFrame) -> dict[str, dict]:
    """Validation accuracy and the two losses per epoch, one line per model (and seed)."""
    acc = _lines(curves, "epoch", "val_acc", "Validation accuracy vs epoch", "epoch", "validation accuracy")
    loss = curves.melt(["epoch", "model"], ["train_loss", "val_loss"], "split", "loss")
    loss["split"] = loss["split"].str.replace("_loss", "")
    losses = _lines(
        loss,
        "epoch",
        "loss",
        "Loss vs epoch (solid: validation, dashed: train)",
        "epoch",
        "cross-entropy",
        strokeDash={
            "field": "split",
            "type": "nominal",
            "sort": ["val", "train"],
            "title": None,
            "legend": None,  # the title says which is which
        },
        detail={"field": "split"},
    )
    return {"val_accuracy": acc, "loss": losses}


def roc_pr_specs(roc: pd.DataFrame, pr: pd.DataFrame) -> dict[str, dict]:
    """ROC and precision-recall curves on the test split, points kept in their order."""
    roc, pr = roc.assign(i=range(len(roc))), pr.assign(i=range(len(pr)))
    order = {"order": {"field": "i", "type": "quantitative"}}
    r = _lines(
        roc, "fpr", "tpr", "ROC on the test split", "false positive rate", "true positive rate", **order
    )
    diagonal = {
        "data": {"values": [{"fpr": 0, "tpr": 0}, {"fpr": 1, "tpr": 1}]},
        "mark": {"type": "line", "strokeDash": [4, 4], "color": "#999"},
        "encoding": {
            "x": {"field": "fpr", "type": "quantitative"},
            "y": {"field": "tpr", "type": "quantitative"},
        },
    }
    r["mark"]["point"] = False
    roc_spec = {k: v for k, v in r.items() if k not in ("data", "mark", "encoding")}
    roc_spec["layer"] = [{"data": r["data"], "mark": r["mark"], "encoding": r["encoding"]}, diagonal]
    p = _lines(
        pr, "recall", "precision", "Precision-recall on the test split", "recall", "precision", **order
    )
    p["mark"]["point"] = False
    return {"roc": roc_spec, "pr": p}


def confusion_spec(conf: pd.DataFrame, classes: list[str]) -> dict:
    """One heat map of counts per model (rows: true class, columns: predicted)."""
    counts = conf.groupby(["model", "actual", "predicted"]).size().rename("n").reset_index()
    axis = {"type": "ordinal", "sort": list(classes)}
    return {
        "$schema": SCHEMA,
        "title": "Confusion matrices on the test split (counts)",
        "data": {"values": _values(counts)},
        "facet": {"column": {"field": "model", "type": "nominal", "title": None}},
        "spec": {
            "width": 150,
            "height": 150,
            "encoding": {
                "x": {"field": "predicted", **axis, "title": "predicted"},
                "y": {"field": "actual", **axis, "title": "true class"},
            },
            "layer": [
                {
                    "mark": "rect",
                    "encoding": {
                        "color": {
                            "field": "n",
                            "type": "quantitative",
                            "scale": {"scheme": "blues"},
                            "title": "images",
                        }
                    },
                },
                {
                    "mark": {"type": "text", "fontSize": 13},
                    "encoding": {"text": {"field": "n", "type": "quantitative"}},
                },
            ],
        },
        "resolve": {"scale": {"color": "shared"}},
    }


def image(path: Path, alt: str) -> str:
    """A PNG as an <img> with its bytes inlined."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img class="grid" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def markdown(text: str) -> str:
    """The report's Markdown (summary.md) as HTML: headings, tables, lists, emphasis, and nothing
    else. summary.md carries class, run and folder names from data and params; Python-Markdown
    passes raw HTML through and turns [x](javascript:...) into a link, so both are switched off:
    such text is shown as text (escaped), never run, on a page that is meant to be shared."""
    import markdown as md

    m = md.Markdown(extensions=["tables"])
    m.preprocessors.deregister("html_block")
    for name in ("html", "reference", "link", "image_link", "image_reference", "short_reference",
                 "short_image_ref", "autolink", "automail"):  # fmt: skip
        m.inlinePatterns.deregister(name)
    return m.convert(text)


def page(
    title: str, subtitle: str, sections: list[tuple[str, str]], charts: dict[str, dict], bundle: str
) -> str:
    """The whole page: `sections` are (heading, HTML) with <div data-chart="name"> placeholders
    where `charts[name]` is drawn (SVG, no action menu)."""
    nav = " ".join(f'<a href="#s{i}">{html.escape(h)}</a>' for i, (h, _) in enumerate(sections) if h)
    body = "\n".join(
        (f'<h2 id="s{i}">{html.escape(h)}</h2>\n' if h else "") + content
        for i, (h, content) in enumerate(sections)
    )
    # every < as \u003c: no name in the data can close this script or open another
    specs = json.dumps(charts).replace("<", "\\u003c")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
<script>{bundle}</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="sub">{html.escape(subtitle)}</p>
<nav>{nav}</nav>
{body}
<script>
const SPECS = {specs};
for (const el of document.querySelectorAll("[data-chart]")) {{
  vegaEmbed(el, SPECS[el.dataset.chart], {{renderer: "svg", actions: false}})
    .then(() => el.setAttribute("data-rendered", "yes"))
    .catch((e) => {{ el.textContent = "chart failed: " + e; el.setAttribute("data-rendered", "error"); }});
}}
</script>
</body>
</html>
"""


def chart_slot(name: str) -> str:
    return f'<div class="chart" data-chart="{html.escape(name)}"></div>'
