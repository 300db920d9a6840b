"""The report in a real browser: headless Chromium opens the pages from disk, offline, and every chart
paints pixels. Each chart is screenshot alone (a copy of the page whose CSS hides everything else), so a
chart that fails to draw cannot hide behind the tables around it."""
import io
import re
import shutil
import subprocess

import nbformat
import numpy as np
import pytest
from fixtures.study_runs import write_study
from PIL import Image

from qformer_peft import paper, report
from qformer_peft import report_charts as rc

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs the chromium binary (.ci/run installs Debian's "
                                                         "chromium; locally: apt-get install -y chromium)")
ONLY = """<style>
body * {{ visibility: hidden !important; }}
#{id}, #{id} * {{ visibility: visible !important; }}
#{id} {{ position: absolute !important; left: 0 !important; top: 0 !important; margin: 0 !important; }}
#{id} figcaption {{ display: none !important; }}
</style></head>"""


def screenshot(page, tmp_path):
    png = page.with_suffix(".png")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1400,1000",
           page.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert png.exists(), f"chromium wrote no screenshot of {page}"
    return Image.open(io.BytesIO(png.read_bytes())).convert("RGB")


def painted(img):
    """(share of non-white pixels, number of distinct colours) of a screenshot."""
    px = np.asarray(img).reshape(-1, 3)
    return float((px.min(axis=1) < 235).mean()), len(np.unique(px, axis=0))


def alone(page, element_id, tmp_path, text=None):
    """A copy of the page, beside it (same relative links), showing only one element."""
    text = text if text is not None else page.read_text()
    copy = page.with_name(f"_only_{element_id}.html")
    copy.write_text(text.replace("</head>", ONLY.format(id=element_id), 1))
    return screenshot(copy, tmp_path)


@pytest.mark.slow
def test_every_chart_of_the_report_draws_in_chromium(tmp_path):
    runs_dir = write_study(tmp_path, ranks=(2, 8), seeds=(42, 43), benchmarks=("iconqa",), rows=paper.CLAIM_ROWS,
                           adalora=("iconqa", "scienceqa"))
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    svg = rc.to_svg(rc.heatmap(rc.heatmap_values(rc.final_ranks(rc.ranks_frame(rc.runs_frame(runs_dir))))))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Section"), nbformat.v4.new_code_cell(
        "chart", outputs=[nbformat.v4.new_output("display_data", {"image/svg+xml": svg, "text/plain": "c"})])])
    nbformat.write(nb, str(nb_dir / "adalora_t5_iconqa.ipynb"))
    index = report.build_report(runs_dir, notebooks_dir=nb_dir, out=tmp_path / "reports", full_size={},
                                log=lambda m: None)
    page = index.read_text()
    ids = re.findall(r"<figure class='chart' id='([^']+)'", page)
    # the paper's charts, then whatever the open-question sections add (seeds here): each must draw
    assert ids[:2] == ["chart-figure2", "chart-heatmaps"] and len(ids) == len(set(ids))
    for fid in ids:
        ink, colours = painted(alone(index, fid, tmp_path))
        assert ink > 0.003 and colours > 20, f"{fid}: {ink:.4f} of the pixels painted, {colours} colours"

    # a chart inside a notebook section (nbconvert embeds it as an SVG data URI)
    section = tmp_path / "reports" / "sections" / "adalora_t5_iconqa.html"
    text = re.sub(r'<img (?=[^>]*src="data:image/svg\+xml)', '<img id="qfp-chart" ', section.read_text(), count=1)
    ink, colours = painted(alone(section, "qfp-chart", tmp_path, text))
    assert ink > 0.003 and colours > 20, f"section chart: {ink:.4f} painted, {colours} colours"

    # the check can fail: an element with nothing drawn in it is blank
    blank = page.replace("</body>", "<figure class='chart' id='empty'><svg width='400' height='300'></svg></figure></body>")
    ink, colours = painted(alone(index, "empty", tmp_path, blank))
    assert ink < 0.001 and colours <= 2
