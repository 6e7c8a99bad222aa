//! crust-engine: checkpoint and restore.
