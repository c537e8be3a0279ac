"""Training and evaluation of the built-in shapes model (`models/shapes`), on CPU.

- `data`: the tokenizer, question sampling and preprocessing of synthetic scenes into batches.
- `train`: the differentiable forward over the model's own modules, the optimiser loop, the CLI.
- `evaluate`: greedy answers through the ordinary inference path, accuracy per task.
"""

import os

# Passive OpenMP waiting. On a shared 2-core machine, spinning OpenMP threads make every small
# op wait for a descheduled peer: a training step measured 5-10x slower under load without
# this. libgomp reads the variable once, when torch is first imported, so it only takes effect
# where this package is imported before torch (the training and evaluation CLIs).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
