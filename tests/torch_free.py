"""Run `promptus ARGS...` with torch and diffusers blocked, then prove they were never imported.

    python tests/torch_free.py decode s.prx -o out --backend onnx
    TORCH_FREE_STRICT=1 python tests/torch_free.py inspect s.prx

A meta-path finder placed first refuses the blocked packages (as if they were not installed, so
optional probes see them missing); after the command, sys.modules must hold none of them. With
TORCH_FREE_STRICT=1 every attempt to import one fails the run too, so an import that is caught and
ignored is still found (inspect and validate must not even probe). Prints TORCH-FREE on success and
exits with the command's status.
"""

import importlib.abc
import os
import sys

BLOCKED = ("torch", "torchvision", "diffusers", "onnxscript", "transformers")
attempts = []


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            attempts.append(name)
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
assert not (os.environ.get("TORCH_FREE_STRICT") and attempts), f"tried to import: {attempts}"
print("TORCH-FREE")
sys.exit(code)
