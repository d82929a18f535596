"""Spec §3.5: which digests a decoder compares, and what all-zero and partly-zero digest sets mean."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from promptus_codec.container.records import UNKNOWN_DIGEST, ModelIdentity
from promptus_codec.decoder.driver import check_model
from promptus_codec.errors import ModelMismatchError

LOADED = ModelIdentity("mini", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)


def stream_of(identity: ModelIdentity):
    return SimpleNamespace(model=identity)  # check_model reads only the header's model identity


def test_matching_digests_are_accepted_and_the_encoder_digest_is_ignored():
    check_model(stream_of(LOADED), LOADED)
    check_model(stream_of(replace(LOADED, encoder_sha256=b"\x09" * 32)), LOADED)


def test_a_zero_encoder_digest_beside_real_ones_is_accepted_without_a_warning():
    warnings = []
    check_model(stream_of(replace(LOADED, encoder_sha256=UNKNOWN_DIGEST)), LOADED, warnings.append)
    assert warnings == []


@pytest.mark.parametrize("field", ["denoiser_sha256", "decoder_sha256"])
def test_a_partly_zero_set_is_not_unknown_and_is_refused(field):
    partly = replace(LOADED, **{field: UNKNOWN_DIGEST})
    assert not partly.unknown
    with pytest.raises(ModelMismatchError, match="decode with --model mini"):
        check_model(stream_of(partly), LOADED)


def test_an_all_zero_set_falls_back_to_the_name_with_a_warning():
    unknown = ModelIdentity("mini", UNKNOWN_DIGEST, UNKNOWN_DIGEST, UNKNOWN_DIGEST)
    warnings = []
    check_model(stream_of(unknown), LOADED, warnings.append)
    assert len(warnings) == 1 and "no weight fingerprints" in warnings[0]
    with pytest.raises(ModelMismatchError, match="made for model 'sd-turbo'"):
        check_model(stream_of(replace(unknown, name="sd-turbo")), LOADED)
