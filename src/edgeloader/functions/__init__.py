"""Functions: unlocked images run as isolated containers, one per run, with
per-run I/O through files, a run history and stats (docs/functions.md)."""
