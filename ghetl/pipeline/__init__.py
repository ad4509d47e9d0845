"""The job and its run: `sync` starts a run and extracts each step, `workers` transform and
embed what extraction published, `jobs` keeps the status JSON and the counts that say when a
stage is done. `carryover` hands unfinished items to the next run, `deadletters` holds what
failed for good, `prune` keeps the raw payloads lean, `interrupts` makes Ctrl-C safe."""
