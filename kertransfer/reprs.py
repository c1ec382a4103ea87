"""Short text and HTML forms of kertransfer's objects (`repr`, notebooks).

`learn`, `data` and `interp` as a notebook cell's last line show a title and
a few `name: value` rows (arch, image size, classes, images per split, the
frozen groups, ...): `__repr__` builds the text from `text_repr`, and
`_repr_html_`, what Jupyter shows, the same rows as a small table from
`html_repr`. The standard library only.
"""

import html

__all__ = ["html_repr", "short_list", "text_repr"]


def short_list(names, limit=8):
    """`"a, b, c"`, or the first `limit` names and `...`.

    Example:

    >>> short_list(["ants", "bees"])
    'ants, bees'
    >>> short_list([str(i) for i in range(20)], limit=3)
    '0, 1, 2, ...'
    """
    names = [str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + ", ..."


def text_repr(title, rows):
    """`title`, then one indented `name: value` line per row.

    Args:
        title: first line, e.g. `"ConvLearner(arch='resnet34')"`.
        rows: `[(name, value)]`; rows whose value is None are left out.

    Returns:
        str.
    """
    lines = [title]
    lines += [f"  {name}: {value}" for name, value in rows if value is not None]
    return "\n".join(lines)


def html_repr(title, rows):
    """The rows of `text_repr` as a small HTML table under a bold title (escaped)."""
    body = "".join(
        f'<tr><th style="text-align:left">{html.escape(str(name))}</th>'
        f'<td style="text-align:left">{html.escape(str(value))}</td></tr>'
        for name, value in rows
        if value is not None
    )
    return f"<div><b>{html.escape(title)}</b><table>{body}</table></div>"
