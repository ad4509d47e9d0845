"""The notebook layer, never imported by the pipeline: `frames` reads the tables and raw payloads
as DataFrames, `search` finds repositories by meaning, `widgets` draws the status circles, and
`runbook` holds what the parameterised notebooks run (`from ghetl.workbench import frames, runbook`)."""
