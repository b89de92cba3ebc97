//! Unit tests of the engine, on paused tokio time.
