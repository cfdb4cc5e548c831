//! `echo-labctl connect`.
