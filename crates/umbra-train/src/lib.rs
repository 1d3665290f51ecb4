//! Trainers, EMA, atomic checkpoints with resume, JSONL metrics.
