"""report.html's insight sections: calibration (ECE per split and the reliability diagram,
from calibration.json and reliability.png) and Grad-CAM (cam.json: where the model looked).

HTML only, from files the run folder holds (clfkit.run.calibration, clfkit.run.gradcam wrote
them); report_html places the sections on the page. Every image is an inlined base64 PNG.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from clfkit.run.run_folder import CALIBRATION_JSON, CAM_JSON, RELIABILITY_PNG

STYLE = """
.cams figure{width:320px} .cams img{margin-right:2px} .ok img{border-color:#171}
"""


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _b64(text: Any) -> str:
    """``text`` re-encoded after decoding: only base64 reaches the page (a ValueError otherwise)."""
    return base64.b64encode(base64.b64decode(str(text), validate=True)).decode("ascii")


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def calibration_section(run: Path) -> str:
    """ECE per split, the binning, and reliability.png inlined."""
    head = '<h2 id="calibration">Calibration</h2>'
    data = _read(run / CALIBRATION_JSON)
    if data is None:
        return (
            head
            + f'<p class="muted">no {CALIBRATION_JSON} (no labelled val or test split, or an older run)</p>'
        )
    if not isinstance(data.get("splits"), dict) or "binning" not in data:
        return head + f'<p class="muted">{CALIBRATION_JSON} cannot be shown (not the file clfkit writes)</p>'
    rows = []
    for name, r in data["splits"].items():
        if isinstance(r, dict):
            rows.append(
                f"<tr><td>{html.escape(str(name))}</td><td class=num>{_num(r.get('ece'))}</td>"
                f"<td class=num>{_num(r.get('accuracy'))}</td><td class=num>{_num(r.get('mean_confidence'))}</td>"
                f"<td class=num>{html.escape(str(r.get('images')))}</td></tr>"
            )
    table = (
        "<table><tr><th>split</th><th>ECE</th><th>accuracy</th><th>mean top-1 probability</th><th>images</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    intro = (
        f"<p>Expected calibration error of {html.escape(str(data.get('checkpoint')))}: "
        f"{html.escape(str(data.get('binning')))}; the image-weighted mean of |accuracy - confidence| per bin. "
        "Mean top-1 probability above accuracy: overconfident. <code>clfkit export --calibrate</code> "
        "fits a temperature on the val split so predict's probabilities match.</p>"
    )
    png = run / RELIABILITY_PNG
    img = (
        f'<img class="fig" alt="{RELIABILITY_PNG}" src="data:image/png;base64,'
        f'{base64.b64encode(png.read_bytes()).decode("ascii")}">'
        if png.is_file()
        else ""
    )
    return head + intro + table + img


def _cam_card(c: dict[str, Any], mistake: bool) -> str:
    where = html.escape(str(c.get("path") or f"#{c.get('index')}"))
    imgs = [
        f'<img alt="{where}" title="{where}" src="data:image/png;base64,{_b64(c["png_base64"])}">',
        (
            f'<img alt="map for {html.escape(str(c["predicted"]))}" title="where it looked for the predicted class" '
            f'src="data:image/png;base64,{_b64(c["cam_predicted"])}">'
        ),
    ]
    if mistake:
        imgs.append(
            f'<img alt="map for {html.escape(str(c["true"]))}" title="where it looked for the true class" '
            f'src="data:image/png;base64,{_b64(c["cam_true"])}">'
        )
    caption = (
        f'<span class="true">true: {html.escape(str(c["true"]))}</span><br>'
        f'<span class="pred">predicted: {html.escape(str(c["predicted"]))}</span>, p = {float(c["confidence"]):.3f}'
    )
    return f"<figure>{''.join(imgs)}<figcaption>{caption}</figcaption></figure>"


def cam_section(run: Path) -> str:
    """cam.json's maps: mistakes (image, map of the predicted class, map of the true class) and
    right answers per class (image, map); or why there are none."""
    head = '<h2 id="gradcam">Where the model looked (Grad-CAM)</h2>'
    data = _read(run / CAM_JSON)
    if data is None:
        return head + f'<p class="muted">no {CAM_JSON} (no labelled test or val split, or an older run)</p>'
    if not data.get("target_layer"):
        return (
            head
            + f'<p class="muted">{html.escape(str(data.get("note") or "no Grad-CAM for this model"))}</p>'
        )
    try:
        wrong = "".join(_cam_card(c, True) for c in data.get("mistakes") or [])
        right = "".join(_cam_card(c, False) for c in data.get("correct") or [])
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return (
            head
            + f'<p class="muted">{CAM_JSON} cannot be shown ({html.escape(type(e).__name__)}: {html.escape(str(e)[:120])})</p>'
        )
    intro = (
        f"<p>{html.escape(str(data.get('method')))} on layer <code>{html.escape(str(data['target_layer']))}</code> "
        f"of {html.escape(str(data.get('checkpoint')))}, {html.escape(str(data.get('split')))} split: red is where "
        f"the evidence for a class lies. Mistakes show the image, the map of the predicted class, then the map of "
        f"the true class.</p>"
    )
    if data.get("capped"):  # many classes: not every class's right answers have maps
        intro += f'<p class="muted">{html.escape(str(data["capped"]))}</p>'
    return (
        head
        + intro
        + "<h3>Most confident mistakes</h3>"
        + (f'<div class="grid cams">{wrong}</div>' if wrong else '<p class="muted">none</p>')
        + "<h3>Right, most confident per class</h3>"
        + (f'<div class="grid cams ok">{right}</div>' if right else '<p class="muted">none</p>')
    )
