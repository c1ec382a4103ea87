"""`format_report`: an export validation report as a plain-text table."""

__all__ = ["format_report"]


def human_size(num_bytes):
    """`num_bytes` as `"512 B"`, `"1.5 KB"`, ... `"2.0 GB"` (1 KB = 1024 bytes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return (f"{num_bytes:.0f} {unit}" if unit == "B"
                    else f"{num_bytes:.1f} {unit}")
        num_bytes /= 1024


def format_report(report):
    """Renders a validation report as a plain-text table.

    Args:
        report: the dict returned by `validate` or `export`.

    Returns:
        A multi-line string, one row per artifact plus the Keras reference.
    """
    multi_label = report.get("multi_label", False)
    agreement, score = ("tags_agreement", "f2") if multi_label else ("top1_agreement", "accuracy")
    header = ("artifact", "size", "ratio",
              "tags agree" if multi_label else "top-1 agree", "max |dp|",
              "mean |dp|", "F2" if multi_label else "accuracy", "ms/img", "ok")

    def pct(value):
        return "-" if value is None else f"{value:.1%}"

    keras_row = report["keras"]
    lines = [(
        "reference (kertransfer predict)",
        human_size(keras_row["size_bytes"]) if keras_row["size_bytes"]
        else "-", "-", "-", "-", "-", pct(keras_row.get(score)),
        str(keras_row["median_latency_ms"]), "",
    )]
    for row in report["artifacts"]:
        lines.append((
            row["name"], human_size(row["size_bytes"]),
            f"{row['size_ratio']:.2f}x {row['size_ratio_of']}",
            pct(row[agreement]), f"{row['max_abs_prob_diff']:.2e}",
            f"{row.get('mean_abs_prob_diff', float('nan')):.2e}",
            pct(row[score]), str(row["median_latency_ms"]),
            "yes" if row["passed"] else "NO: " + "; ".join(row["failures"]),
        ))
    widths = [max(len(line[i]) for line in [header] + lines)
              for i in range(len(header))]
    framing = report.get("framing") or {}
    valid = report.get("valid_accuracy")
    thresholds = report.get("thresholds")
    text = [
        f"{report['num_images']} validation images, {report['image_size']} "
        f"px (short side {framing.get('decode_size', '?')}, center crop), "
        f"weights {human_size(report['weights_bytes'])}"
        + ("" if valid is None else f", metrics.json valid_accuracy "
           f"{valid:.1%}")
        + ("" if not multi_label else f", multi-label, tag thresholds "
           f"{sorted(set(thresholds))}")
    ]
    for line in [header] + lines:
        text.append("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    if report.get("report_path"):
        text.append(f"report: {report['report_path']}")
    return "\n".join(text)
