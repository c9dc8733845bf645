"""``python -m mof.train ARGS`` = ``mof-cli train ARGS`` (the torchrun entry point)."""

import sys

from cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="python -m mof.train")
