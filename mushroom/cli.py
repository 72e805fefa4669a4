"""What every script shares: run main(), turning user errors into one clear line and exit 2."""
from __future__ import annotations

import os
import random
import sys
from typing import Callable

from mushroom.errors import UserError


def run(main: Callable[[], int | None]) -> None:
    """Call main(); a UserError prints 'error: <sentence>' instead of a stack trace."""
    try:
        code = main()
        sys.stdout.flush()   # inside the try: a closed pipe raises here, not at interpreter exit
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # The reader went away (`predict.py ... --json | head -3`): exit quietly, as cat or grep do.
        # stdout is pointed at /dev/null so the interpreter's final flush cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue where it stopped", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def set_seed(seed: int) -> None:
    """Seed Python and NumPy (TensorFlow is seeded by the training module when it is loaded)."""
    import numpy as np

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
