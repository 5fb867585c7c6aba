"""The offline report's pieces: valid Vega-Lite specs that draw their data, a DVC template
without CDN scripts, a page that loads nothing from the network."""

import re

import numpy as np
import pandas as pd
import pytest

from cxr_transfer.report import webpage

vlc = pytest.importorskip("vl_convert")


def _curves():
    rows = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_acc": 0.5 + e / 20, "model": m}
        for m in ("a-fe", "a-ft")
        for e in range(1, 4)
    ]
    return pd.DataFrame(rows)


def drawn(svg: str) -> dict[str, int]:
    """Vega's marks in an SVG: for each mark type, how many shapes its groups hold."""
    out: dict[str, int] = {}
    for kind, body in re.findall(r'<g class="mark-(\w+) role-mark[^"]*"[^>]*>(.*?)</g>', svg, re.S):
        out[kind] = out.get(kind, 0) + len(re.findall(r"<(?:path|text|line)\b", body))
    return out


def test_every_chart_spec_compiles_and_draws_its_data():
    roc = pd.DataFrame({"fpr": [0, 0, 0.5, 1], "tpr": [0, 0.5, 1, 1], "model": "a-fe"})
    pr = pd.DataFrame({"recall": [0, 0.5, 1], "precision": [1, 0.8, 0.5], "model": "a-fe"})
    conf = pd.DataFrame(
        {"actual": ["Covid", "Covid", "Normal"], "predicted": ["Covid", "Normal", "Normal"], "model": "a-fe"}
    )
    specs = {
        **webpage.curve_specs(_curves()),
        **webpage.roc_pr_specs(roc, pr),
        "confusion": webpage.confusion_spec(conf, ["Normal", "Covid"]),
    }
    assert set(specs) == {"val_accuracy", "loss", "roc", "pr", "confusion"}
    want = {  # marks drawn, counted against the data: an empty chart also has a <path> and a <rect>
        "val_accuracy": {"line": 2, "symbol": 6},  # a line per model, a point per (model, epoch)
        "loss": {"line": 4, "symbol": 12},  # a line per (model, train/val)
        "confusion": {"rect": 3, "text": 3},  # a cell and its count per (actual, predicted) row
        "roc": {"line": 2},  # the model's curve and the chance diagonal
        "pr": {"line": 1},
    }
    for name, spec in specs.items():
        svg = vlc.vegalite_to_svg(spec, vl_version=webpage.VL_VERSION)
        assert drawn(svg) == want[name], name
        assert spec["title"] in svg or spec["title"].replace("'", "&#39;") in svg, name
    conf_svg = vlc.vegalite_to_svg(specs["confusion"], vl_version=webpage.VL_VERSION)
    cells = re.search(r'<g class="mark-text role-mark[^"]*"[^>]*>(.*?)</g>', conf_svg, re.S).group(1)
    texts = re.findall(r"<text[^>]*>(\d+)</text>", cells)
    assert sorted(texts) == ["1", "1", "1"]
    loss = specs["loss"]["data"]["values"]
    assert len(loss) == 12 and {r["split"] for r in loss} == {"train", "val"}  # 2 models x 3 epochs x 2
    counts = {(r["actual"], r["predicted"]): r["n"] for r in specs["confusion"]["data"]["values"]}
    assert counts == {("Covid", "Covid"): 1, ("Covid", "Normal"): 1, ("Normal", "Normal"): 1}


def test_the_dvc_template_inlines_the_bundle_and_drops_the_cdn_scripts():
    page = webpage.dvc_plots_template("window.vegaEmbed = 1;")
    assert "{plot_divs}" in page and "{scripts}" not in page and "window.vegaEmbed = 1;" in page
    assert not re.search(r"""src=["']?https?:""", page)


def test_the_bundle_defines_vega_embed_and_cannot_close_its_script_early():
    bundle = webpage.js_bundle()
    assert "window.vegaEmbed" in bundle and "</script" not in bundle.lower()
    assert len(bundle) > 300_000  # vega, vega-lite and vega-embed, not a loader stub


def test_the_page_puts_each_chart_in_its_slot_and_loads_nothing_remote(tmp_path):
    png = tmp_path / "g.png"
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    blocks = [("Curves", webpage.chart_slot("val_accuracy")), ("Grad-CAM", webpage.image(png, "grid <a>"))]
    page = webpage.page("T", "sub", blocks, webpage.curve_specs(_curves()), "/* bundle */")
    assert page.count('data-chart="val_accuracy"') == 1 and '"val_accuracy": {' in page
    assert 'src="data:image/png;base64,' in page and 'alt="grid &lt;a&gt;"' in page
    assert '<a href="#s0">Curves</a>' in page and '<h2 id="s1">Grad-CAM</h2>' in page
    assert not re.search(r"""(src|href)=["']?https?:""", page)


HOSTILE = 'Covid<script>alert("cls")</script>'


def test_names_from_data_params_and_folders_are_text_on_the_page_never_markup():
    """A class name, a stray run folder and a Markdown link in summary.md reach the page as text:
    no element, no handler, no javascript: link is created from them."""
    from cxr_transfer.report import sections

    stale = "eval/<img src=x onerror=alert(1)>"
    md = (
        f"| NETWORK | {HOSTILE} images |\n| --- | --- |\n| a-ft | 10 |\n\n"
        f"{stale}: left by an earlier run. [click](javascript:alert(2)) <javascript:alert(3)>\n"
    )
    conf = pd.DataFrame(
        {"model": ["m"] * 4, "actual": [0, 0, 1, 1], "predicted": [0, 1, 0, 1], "n": [3, 1, 2, 4]}
    )
    charts = {"confusion": webpage.confusion_spec(conf, ["Normal", HOSTILE])}
    data = sections.data_html(
        {
            "root": "data/<b>raw</b>",
            "images": 3,
            "per_class": {HOSTILE: 2, "Normal": 1},
            "skipped": 1,
            "skipped_by_reason": {"not an image (.txt)": 1},
            "skipped_files": [{"path": "<script>x</script>.txt", "reason": "not an image (.txt)"}],
            "duplicate_sets": 0,
            "duplicate_images": 0,
            "groups": 3,
        },
        {"counts": {"train": {HOSTILE: 1}}, "seed": 42, "fractions": [0.64], "group_overlap": 0},
    )
    page = webpage.page("T", HOSTILE, [("", webpage.markdown(md)), (HOSTILE, data)], charts, "/* bundle */")
    assert page.count("<script") == 2  # the bundle's and the chart specs'
    assert "<img" not in page and "<b>" not in page and 'href="javascript' not in page
    assert "javascript:alert(2)" in page  # shown as the text it is
    assert "Covid&lt;script&gt;alert(&quot;cls&quot;)&lt;/script&gt;" in page or (
        'Covid&lt;script&gt;alert("cls")&lt;/script&gt;' in page
    )
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
