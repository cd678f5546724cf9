"""The efficiency study's command line (its measurements are figures, printed, not tested)."""

import pytest

from benchmarks.studies import efficiency


def test_encoder_specs_carry_typed_options():
    assert efficiency.parse_spec("rwkv") == ("rwkv", {})
    assert efficiency.parse_spec("mamba:chunk_size=8:x=0.5:wkv=chunked") == (
        "mamba", {"chunk_size": 8, "x": 0.5, "wkv": "chunked"})


@pytest.mark.parametrize("argv,message", [
    (["--encoders", "rwkv:wkv"], "options are key=value"),
    (["--encoders", "nosuch"], "unknown encoder"),
    (["--dtypes", "fp8"], "unknown dtype"),
    (["--lengths", "0"], "must be positive"),
])
def test_bad_options_exit_with_one_line_before_measuring(argv, message, capsys):
    assert efficiency.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
