"""``python -m segdeploy.bench REQUEST_JSON``: one benchmark subprocess (see ``worker``)."""

import sys

from .worker import main

if __name__ == "__main__":
    main(sys.argv[1])
