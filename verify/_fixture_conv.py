"""Golden fixtures of convolutional problems (PROTOCOL s12's last point), in `fixtures/conv/`.

Kept in their own directory, apart from `FIXTURE_DIR`'s dense fixtures, until every consumer
of the default fixture set handles convolutions. The files carry `"input_shape"` and the
`["conv2d", c_in, c_out, kernel, stride, padding, activation]` layer entries; they are
produced by the same `generate_fixture` (mpmath at 50 digits, certified at 70) and checked by
`verify_fixtures("fixtures/conv")`.
"""

from __future__ import annotations

from pathlib import Path

from ngd_ref import zoo
from verify._fixture_format import dumps
from verify._fixture_gen import generate_fixture

__all__ = ["CONV_FIXTURE_DIR", "CONV_FIXTURES", "regenerate_conv_fixtures"]

CONV_FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "conv"

#: `(zoo.conv_problems() name, description)`.
CONV_FIXTURES: tuple[tuple[str, str], ...] = (
    ("conv-same-patches-1x3x3-mse-b1", "identical patches, B = 1: K-FAC reduce exact, expand not"),
    ("conv-last-linear-1x4x3-pad-mse-b3", "linear last convolution with zero padding and mse"),
    ("conv-full-kernel-2x2x2-ce-b1", "the kernel covers the input (T = 1), softmax head"),
)


def regenerate_conv_fixtures(directory: str | Path | None = None) -> list[Path]:
    """Write `<name>.json` for every entry of `CONV_FIXTURES` (deterministic)."""
    folder = CONV_FIXTURE_DIR if directory is None else Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    by_name = {problem.name: problem for problem in zoo.conv_problems()}
    written = []
    for name, description in CONV_FIXTURES:
        path = folder / f"{name}.json"
        path.write_text(dumps(generate_fixture(by_name[name], description=description)),
                        encoding="utf-8")
        written.append(path)
    return written
