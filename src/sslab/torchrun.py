"""`python -m sslab.torchrun`: torchrun (same arguments) that ends the way `sslab` does.

    python -m sslab.torchrun --standalone --nproc_per_node 4 -m sslab train --method simsiam ...

Plain `torchrun` works too, but whenever a process exits with a code other than 0, torchrun prints its own
`ChildFailedError` traceback after sslab's one line and exits with 1: after a bad flag (sslab's exit code 2),
and after a clean stop with a checkpoint (Ctrl-C: 130, SIGTERM: 143). This launcher runs torchrun's own code
and, when rank 0 (the process that prints) ended with one of sslab's exit codes (it has printed its one line),
exits with that code and prints nothing more. A crash (any other code, a signal's kill) keeps torchrun's report.

Ctrl-C (or a scheduler's SIGTERM) reaches the launcher; torchrun passes it on to the training processes (each in
its own session), which stop after the same step and save a checkpoint; the launcher then exits with 130 (143).
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import Sequence

# the exit codes sslab's command line ends with after it printed its one line (errors.UserError, a signal's stop)
SSLAB_EXIT_CODES = (2, 128 + signal.SIGINT, 128 + signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.run import parse_args, run

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    # its log lines about a process that ended with sslab's code ("failed (exitcode: 2)", "Sending process ...
    # closing signal") add nothing to the one line sslab printed; a crash is still reported (ChildFailedError)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as e:
        rank0 = e.failures.get(0)  # the process that printed sslab's line (the others stay quiet)
        if rank0 is not None and rank0.exitcode in SSLAB_EXIT_CODES:
            return rank0.exitcode
        raise
    except SignalException as e:  # Ctrl-C, SIGTERM: torchrun passed the signal on; the processes saved and stopped
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
