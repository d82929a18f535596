"""Run `promptus ARGS...` with torch and diffusers blocked, then prove they were never imported.

    python tests/onnx/torch_free.py decode s.prx -o out --backend onnx

A meta-path finder placed first refuses the blocked packages (as if they were not installed, so
optional probes see them missing); after the command, sys.modules must hold none of them. Prints
TORCH-FREE on success and exits with the command's status.
"""

import importlib.abc
import sys

BLOCKED = ("torch", "torchvision", "diffusers", "onnxscript", "transformers")


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by torch_free.py)", name=name)
        return None


sys.meta_path.insert(0, Blocker())

from promptus_codec.cli import main  # noqa: E402

try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code
leaked = sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED)
assert not leaked, f"imported: {leaked}"
print("TORCH-FREE")
sys.exit(code)
