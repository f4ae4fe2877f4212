"""runtime.process: the stop signals every long command shares (train, batch, view), the
workers' ignoring them, and the ranks read from torchrun's and srun's environment."""

from __future__ import annotations

import os
import signal
import threading

from liif_cli.runtime import process


def test_on_stop_signals_sets_and_restores_both_in_the_main_thread_only():
    got, before = [], {s: signal.getsignal(s) for s in process.STOP_SIGNALS}
    with process.on_stop_signals(lambda signum, frame: got.append(signum)) as installed:
        assert installed
        os.kill(os.getpid(), signal.SIGTERM)
    assert got == [signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in process.STOP_SIGNALS} == before

    in_thread = []

    def other():
        with process.on_stop_signals(lambda *a: None) as installed:
            in_thread.append(installed)
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert in_thread == [False]


def test_ranks_from_the_environment():
    assert process.torchrun_ranks({}) == (0, 1)
    assert process.torchrun_ranks({"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    assert process.local_rank({}) is None
    assert process.local_rank({"SLURM_LOCALID": "2"}) == 2
    assert process.local_rank({"LOCAL_RANK": "1", "SLURM_LOCALID": "2"}) == 1  # torchrun's first
    assert [who for _, _, who in process.RANK_VARS][0] == "torchrun"
