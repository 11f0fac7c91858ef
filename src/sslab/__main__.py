"""`python -m sslab` (what torchrun starts in each process)."""
import os
import time

from sslab.cli import main

# torchrun stops every process as soon as one ends with a code other than 0. After a bad flag or a clean stop all of
# them end together, and rank 0, which prints sslab's one line, must be the one torchrun sees end first: the others
# wait for it (torchrun then stops them), at most this long (a failure of theirs alone still ends the run).
OTHER_RANKS_WAIT_S = 10.0

code = main()
if code and os.environ.get("RANK", "0") != "0" and os.environ.get("TORCHELASTIC_RUN_ID"):
    time.sleep(OTHER_RANKS_WAIT_S)
raise SystemExit(code)
