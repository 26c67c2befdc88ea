//! Egress sources and pools.

pub mod warmup;
