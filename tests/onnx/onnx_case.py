"""The ONNX tier's test case, shared by conftest.py and the tests (a module name no other tier uses)."""

SIZE = (64, 64)  # coded size of the test stream and graph: latents 8x8
GRAPH_BATCH = 3  # the exported batch: the stream's chunks of 1, 4 and 5 frames are split and padded
# Two scenes; intervals of 4, 3 and 5 frames, then 3 (as tests/model/test_decode.py).
LAYOUT = [[(0, 8), (4, 8), (7, 4), (12, 4)], [(13, 6), (16, 6)]]
