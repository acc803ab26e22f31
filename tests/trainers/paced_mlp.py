"""The mlp example trainer, held after a given epoch's checkpoint on a first
attempt: a barrier for tests that kill its worker mid-run (no race with the
trainer finishing first). `--pause-after N` comes first on the command line;
the rest are the mlp trainer's own flags. A resumed attempt
($TRAINLEDGER_RESUMED_FROM set) never pauses."""

from __future__ import annotations

import os
import sys
import time

from worker.examples import mlp, resume


def main() -> int:
    argv = sys.argv[1:]
    pause_after = 0
    if argv[:1] == ["--pause-after"]:
        pause_after, argv = int(argv[1]), argv[2:]
    save = resume.save_checkpoint

    def paced(directory, state) -> None:  # type: ignore[no-untyped-def]
        save(directory, state)
        if state["epoch"] == pause_after and not os.environ.get("TRAINLEDGER_RESUMED_FROM"):
            print(f"paced: paused after epoch {pause_after}", flush=True)
            time.sleep(600)

    resume.save_checkpoint = paced
    return mlp.main(argv)


if __name__ == "__main__":
    sys.exit(main())
