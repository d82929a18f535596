"""Usage mistakes raise UsageError (a PrxError, so the CLI prints one line), not the bare root."""

from __future__ import annotations

import pytest

from promptus_codec.encoder.options import EncodeOptions
from promptus_codec.errors import PrxError, UsageError
from promptus_codec.fileio import check_target


def test_an_unknown_preset_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown preset 'ludicrous': choose one of reference, paper"):
        EncodeOptions(preset="ludicrous").fit_config()
    assert issubclass(UsageError, PrxError)


def test_an_output_in_a_missing_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="folder .* does not exist"):
        check_target(str(tmp_path / "nowhere" / "o.prx"), [])
    with pytest.raises(UsageError, match="it is the input"):
        check_target(str(tmp_path / "in.mp4"), [str(tmp_path / "in.mp4")])
