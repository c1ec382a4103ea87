"""The pieces of the HTML report: escaping, sections, tables, inline PNGs.

`kertransfer.report.write_report` assembles a self-contained page from
these: every picture a base64 PNG data URI (`img`), tables from pandas
(`table`), notes for what is missing (`note`). No external resources.
"""

import base64
import html
import io

__all__ = [
    "IMAGE_CHECK_SCRIPT",
    "STYLE",
    "esc",
    "figure_png",
    "format_number",
    "format_seconds",
    "img",
    "note",
    "png_file",
    "png_or_note",
    "section",
    "table",
]

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.6em 0; }
.note { color: #8a6d3b; background: #fcf8e3; padding: 0.4em 0.8em; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; }
.card .value { font-size: 1.6em; font-weight: bold; }
td.cm-diag { background: #e6f2e6; font-weight: bold; }
code { font-size: 0.9em; }
"""

# Counts decoded and broken <img> once everything has loaded; a headless
# browser reads the attributes back with --dump-dom.
IMAGE_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, broken = 0;
  for (var i = 0; i < images.length; i++) {
    if (!images[i].complete || images[i].naturalWidth === 0) { broken++; }
  }
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.length - broken;
  document.body.dataset.imagesBroken = broken;
});
"""


def esc(value):
    return html.escape(str(value), quote=True)


def note(text):
    return f'<p class="note">{esc(text)}</p>'


def section(section_id, title, parts):
    body = "\n".join(parts)
    return f'<section id="{section_id}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def img(png_bytes, alt):
    data = base64.b64encode(png_bytes).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def figure_png(fig):
    """PNG bytes of a matplotlib figure; closes the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def png_file(path):
    """PNG bytes of an image file (re-encoded if it is not a PNG), or None."""
    from PIL import Image

    raw = path.read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            if image.format == "PNG":
                return raw
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
    except (OSError, ValueError):
        return None


def format_number(value, digits=4):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_seconds(seconds):
    if seconds is None:
        return "n/a"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s"


def table(frame, table_id=None, float_digits=4, index=True):
    """HTML table from a DataFrame (pandas escapes the cell text)."""
    return frame.to_html(
        border=0,
        index=index,
        float_format=lambda x: f"{x:.{float_digits}f}",
        table_id=table_id,
        na_rep="n/a",
    )


def png_or_note(run_dir, filename, alt):
    path = run_dir / filename
    if not path.is_file():
        return note(f"{filename} not found in the run folder; skipped.")
    png = png_file(path)
    if png is None:
        return note(f"{filename} is not a readable image; skipped.")
    return img(png, alt)
