"""Exported graphs and built engines for the ONNX Runtime and TensorRT decoders.

    keys.py      GraphKey / TrtKey: what a file was made for, spelled in its name; graph metadata
    cache.py     the engine folder: finding graphs, loading an engine only when its sidecar matches
    batching.py  any number of frames through fixed-batch engines (split, pad, drop)
    export.py    generate.py's GenerationStep -> one ONNX graph (torch; the only module here that needs it)

Everything but export.py runs without torch.
"""
