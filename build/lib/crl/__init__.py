"""CRL: Control Reinforcement Learning.

A frozen LM plus an SAE over one residual stream, wrapped as a gymnasium environment in which a
PPO policy picks one SAE feature to amplify at every generated token.
"""

import os

# The env decodes in a worker thread while the caller waits; OpenMP's default busy-waiting then makes the
# two threads' pools fight for the cores (measured 2-6x slowdowns on 2 cores). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
