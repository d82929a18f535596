"""The ONNX tier's test case, shared by conftest.py and the tests (a module name no other tier uses)."""

SIZE = (64, 64)  # coded size of the test stream and graph: latents 8x8
GRAPH_BATCH = 3  # the exported batch: the stream's chunks of 1, 4 and 5 frames are split and padded
# Two scenes; intervals of 4, 3 and 5 frames, then 3 (as tests/model/test_decode.py).
LAYOUT = [[(0, 8), (4, 8), (7, 4), (12, 4)], [(13, 6), (16, 6)]]

# ONNX Runtime against torch decodes of the test stream. Each call's pictures differ by far less
# than a level (tolerances.generation_atols: about 2e-5 of 1 against 1/255 = 3.9e-3), so rounding
# to 8 bits flips a sample by at most 1 level (tolerances.levels_after_rounding). The latent each
# keyframe carries forward differs by up to the x0 tolerance and re-enters the next call with
# latent_weight 0.05; the stream's keyframe chains are at most 4 long (LAYOUT), and the second
# level allows for that carried difference. Measured: 1 level, every frame above 73 dB.
MAX_LEVELS = 2  # max |onnx - torch| per sample, in levels of 255
# 60 dB is an RMS difference of 0.255 level: at most 6.5% of the samples off by 1 level, where
# a per-call float difference of 0.005 level flips about 1% (those within it of a half level).
MIN_PSNR_DB = 60.0  # per frame, between the two decodes
