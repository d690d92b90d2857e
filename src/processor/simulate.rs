//! The seed's `process_lab_result`: a stand-in downstream that fails transiently at a set
//! rate, reproducibly.

use async_trait::async_trait;

use super::{Processor, Record};
use crate::outcome::Outcome;

/// Fails transiently with probability `transient_rate`, decided by a hash of
/// (`seed`, sample_id, attempt), so a run gives the same outcomes whatever the concurrency.
#[derive(Debug, Clone)]
pub struct SimulateProcessor {
    transient_rate: f64,
    seed: u64,
}

impl SimulateProcessor {
    /// The seed's message for a simulated transient failure.
    pub const TRANSIENT_ERROR: &'static str = "API Timeout / 503 Service Unavailable";

    /// A simulator failing transiently with probability `transient_rate` (clamped to 0..=1).
    pub fn new(transient_rate: f64, seed: u64) -> Self {
        SimulateProcessor {
            transient_rate: transient_rate.clamp(0.0, 1.0),
            seed,
        }
    }

    /// Whether this (record, attempt) fails: a pure function of the seed, id and attempt.
    pub fn fails(&self, sample_id: &str, attempt: u32) -> bool {
        let h = fnv1a(self.seed, sample_id.as_bytes(), attempt);
        // 53 random bits as a uniform number in [0, 1).
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        u < self.transient_rate
    }
}

#[async_trait]
impl Processor for SimulateProcessor {
    async fn process(&self, record: &Record) -> Outcome {
        if self.fails(&record.sample_id, record.attempt) {
            Outcome::transient(Self::TRANSIENT_ERROR)
        } else {
            Outcome::success("Processed OK")
        }
    }
}

/// FNV-1a over the seed, the id and the attempt, finished with a SplitMix64 mix so that
/// nearby inputs give unrelated bits. Stable across platforms and Rust versions.
fn fnv1a(seed: u64, id: &[u8], attempt: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in seed
        .to_le_bytes()
        .iter()
        .chain(id)
        .chain(&attempt.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_respected_and_reproducible() {
        let p = SimulateProcessor::new(0.3, 42);
        let fails = (0..20_000)
            .filter(|i| p.fails(&format!("S-{i}"), 0))
            .count();
        let rate = fails as f64 / 20_000.0;
        assert!((0.28..0.32).contains(&rate), "rate {rate}");
        assert_eq!(
            p.fails("S-7", 3),
            SimulateProcessor::new(0.3, 42).fails("S-7", 3)
        );
        assert!(!SimulateProcessor::new(0.0, 1).fails("x", 0));
        assert!(SimulateProcessor::new(1.0, 1).fails("x", 0));
    }
}
