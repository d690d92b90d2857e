//! The original Spark job's `process_lab_result`: a stand-in downstream that fails transiently at a set
//! rate, reproducibly.

use async_trait::async_trait;

use super::{BatchProcessor, Processor, Record};
use crate::hash::stable_hash;
use crate::outcome::Outcome;

/// Fails transiently with probability `transient_probability`, decided by a hash of
/// (`seed`, sample_id, retry count), so a run gives the same outcomes whatever the concurrency.
#[derive(Debug, Clone)]
pub struct SimulateProcessor {
    transient_probability: f64,
    seed: u64,
}

impl SimulateProcessor {
    /// The original job's message for a simulated transient failure.
    pub const TRANSIENT_ERROR: &'static str = "API Timeout / 503 Service Unavailable";

    /// A simulator failing transiently with probability `transient_probability` (clamped to 0..=1).
    pub fn new(transient_probability: f64, seed: u64) -> Self {
        SimulateProcessor {
            transient_probability: transient_probability.clamp(0.0, 1.0),
            seed,
        }
    }

    /// Whether this record fails at this retry count: a pure function of the seed, the id and
    /// the retry count.
    pub fn fails(&self, sample_id: &str, retry_count: u32) -> bool {
        let h = stable_hash(&[
            &self.seed.to_le_bytes(),
            sample_id.as_bytes(),
            &retry_count.to_le_bytes(),
        ]);
        // 53 random bits as a uniform number in [0, 1).
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        u < self.transient_probability
    }
}

#[async_trait]
impl Processor for SimulateProcessor {
    async fn process(&self, record: &Record) -> Outcome {
        if self.fails(&record.sample_id, record.retry_count) {
            Outcome::transient(Self::TRANSIENT_ERROR)
        } else {
            Outcome::success("Processed OK")
        }
    }
}

/// Called with a batch, each record's outcome is the one it gets alone.
#[async_trait]
impl BatchProcessor for SimulateProcessor {
    async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            outcomes.push(self.process(record).await);
        }
        outcomes
    }
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
