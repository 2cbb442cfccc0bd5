"""How trajectories are made: engine protocol, SGLang client, the MLE environment.

Imports no other project package."""
