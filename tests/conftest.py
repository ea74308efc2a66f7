"""Shared test settings: one torch thread in the test process and in every subprocess it starts."""

import os

import torch

# The networks in these tests are tiny, so a second thread buys nothing and, when the cores are shared
# with other processes (subprocess tests, torchrun workers), thread oversubscription slows steps tenfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
