"""Training and evaluation of the built-in shapes model (`models/shapes`), on CPU.

- `data`: the tokenizer, question sampling and preprocessing of synthetic scenes into batches.
- `train`: the differentiable forward over the model's own modules, the optimiser loop, the CLI.
- `evaluate`: greedy answers through the ordinary inference path, accuracy per task.
"""

import os
import sys

# How long an idle OpenMP thread spins before it sleeps. libgomp reads GOMP_SPINCOUNT once, when
# torch loads it, so it is set here only if torch is not loaded yet (the training and evaluation
# CLIs), and an environment value wins. It is taken out of the environment again at once, so
# that processes started later (ROS nodes in the tests, for one) do not inherit it.
# Measured on the idle 2-core machine (focus step, 8 scenes): libgomp's default spin 0.27 s,
# 10,000 0.28 s, passive waiting (no spin) 0.48 s. With another busy process on the machine
# spinning hurts instead (0.58 s passive vs 1.05 s): there, run with GOMP_SPINCOUNT=0. 10,000
# (tens of microseconds) keeps the idle speed and bounds what a descheduled peer can waste.
if "torch" not in sys.modules and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"
    try:
        import torch  # noqa: F401  (libgomp reads the variable now)
    finally:
        del os.environ["GOMP_SPINCOUNT"]
