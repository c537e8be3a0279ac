"""Training and evaluation of the built-in shapes model (`models/shapes`), on CPU.

- `data`: the tokenizer, question sampling and preprocessing of synthetic scenes into batches.
- `train`: the differentiable forward over the model's own modules, the optimiser loop, the CLI.
- `evaluate`: greedy answers through the ordinary inference path, accuracy per task.
"""

import os

# How long an idle OpenMP thread spins before it sleeps. libgomp reads this once, when torch is
# first imported, so it only takes effect where this package is imported before torch (the
# training and evaluation CLIs); a value already in the environment wins.
# Measured on the idle 2-core machine (focus step, 8 scenes): libgomp's default spin 0.27 s,
# 10,000 0.28 s, passive waiting (no spin) 0.48 s; the answers phase 0.60 s vs 0.97 s passive.
# With another busy process on the machine spinning hurts instead (0.58 s passive vs 1.05 s):
# there, run with GOMP_SPINCOUNT=0. 10,000 (tens of microseconds) keeps the idle speed and
# bounds what a descheduled peer can waste.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
