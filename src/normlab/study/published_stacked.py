"""Published Stacked MNIST results, to show beside normlab's stacked-digits numbers.

Read from PacGAN (Lin, Khetan, Fanti, Oh, NeurIPS 2018), Tables 2 and 3 (see
``/work/shared/benchmarks.md`` in the project notes). Those are on 28x28 MNIST with DCGAN-type
networks, 128,000 training images and a pretrained MNIST classifier; normlab's ``stacked-digits``
is the same protocol on scikit-learn's 1,797 8x8 digits, so the numbers are comparable in kind,
not in value. They are never expected values in tests.

``STACKED_MNIST`` holds one dict per table: ``rows`` maps a label to ``(modes, modes_se, kl,
kl_se)`` (``None`` where the paper gives no standard error).
"""

from __future__ import annotations

from typing import Any

#: The caveat printed wherever these rows stand next to normlab's.
CAVEAT = (
    "Published rows are Stacked MNIST on 28x28 MNIST (DCGAN-type networks, a pretrained MNIST "
    "classifier, 26,000 samples); normlab's stacked-digits uses the same protocol on "
    "scikit-learn's 8x8 digits with its own networks and schedule: comparable in kind, not in "
    "value."
)

Row = tuple[float, float | None, float, float | None]

STACKED_MNIST: dict[str, dict[str, Any]] = {
    "table3_d_quarter": {
        "title": "PacGAN Table 3, D = 1/4 G (Unrolled GAN's setting, 50 trials)",
        "setting": "D: 3x3 convs with 2-4-8 channels",
        "rows": {
            "DCGAN (PacGAN's implementation)": (78.5, 17.6, 5.21, None),
            "Unrolled GAN, 10 steps": (327.2, 74.7, 4.66, None),
            "PacDCGAN2": (484.5, 33.0, 2.61, None),
            "PacDCGAN3": (601.3, 32.2, 2.00, None),
            "PacDCGAN4": (667.4, 29.0, 1.81, None),
        },
    },
    "table3_d_half": {
        "title": "PacGAN Table 3, D = 1/2 G (Unrolled GAN's setting, 50 trials)",
        "setting": "D: 3x3 convs with 4-8-16 channels",
        "rows": {
            "DCGAN (PacGAN's implementation)": (487.7, 34.6, 2.24, None),
            "Unrolled GAN, 10 steps": (817.4, 37.9, 1.43, None),
            "PacDCGAN2": (840.7, 15.9, 1.00, None),
            "PacDCGAN3": (866.6, 12.1, 0.90, None),
            "PacDCGAN4": (820.2, 25.5, 1.15, None),
        },
    },
    "table2_veegan": {
        "title": "PacGAN Table 2 (VEEGAN's setting: DCGAN, 128,000 images, 50 epochs)",
        "setting": "D and G of DCGAN",
        "rows": {
            "DCGAN (as VEEGAN reports)": (99.0, None, 3.4, None),
            "ALI": (16.0, None, 5.4, None),
            "Unrolled GAN": (48.7, None, 4.32, None),
            "VEEGAN": (150.0, None, 2.95, None),
            "DCGAN (PacGAN's)": (78.9, 6.5, 4.50, 0.13),
            "PacDCGAN2-4": (1000.0, 0.0, 0.07, None),
        },
    },
}


def _cell(value: float, se: float | None, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text if se is None else f"{text} ± {se:.{digits}f}"


def published_stacked_markdown() -> str:
    """The published rows as markdown tables, one per table of ``STACKED_MNIST``, and the caveat.

    "±" is the standard error the paper reports (not a 95% interval).
    """
    lines = [
        "## Published Stacked MNIST results (28x28 MNIST; for context only)",
        "",
        f"{CAVEAT} \"±\" is the paper's standard error. PacDCGAN2-4's KL in Table 2 is 0.06-0.07.",
        "",
    ]
    for table in STACKED_MNIST.values():
        lines += [
            f"**{table['title']}** ({table['setting']})",
            "",
            "| method | modes (of 1000) | KL |",
            "|---|---|---|",
        ]
        for label, (modes, modes_se, kl, kl_se) in table["rows"].items():
            lines.append(f"| {label} | {_cell(modes, modes_se, 1)} | {_cell(kl, kl_se, 2)} |")
        lines.append("")
    return "\n".join(lines)
