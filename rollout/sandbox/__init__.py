"""Sandboxed execution of solution scripts behind one interface (`base.Sandbox`): bubblewrap,
docker and a plain (unisolated) subprocess, chosen by `select.make_sandbox`, with a worker
pool (`pool.WorkerPool`) running many executions in parallel."""
