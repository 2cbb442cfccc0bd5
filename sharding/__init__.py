"""Where arrays live: mesh configs, logical-axis rules, sharded init, the planner.

Imports no other project package."""
