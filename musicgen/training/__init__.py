"""Fine-tuning MusicGen: dataset ingestion (`dataset`) and the training code built on it."""
