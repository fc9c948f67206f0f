"""What every job process needs, training and evaluation alike: the process group
(``distributed``), one writer per output folder (``lease``), the command of a stage
(``entry``), console logging, autocast and a run's small files (``common``), training
checkpoints (``checkpoint``), SIGTERM as a request to checkpoint and stop (``preemption``) and
model weights read from storage (``weights``).

Nothing here imports a stage: ``umt.train`` and ``umt.eval`` build on it, never the reverse.
"""
