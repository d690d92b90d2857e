//! Shards: a stable split of the keys among N workers, so their rounds never touch the same
//! record.

use crate::error::{Error, Result};
use crate::hash::stable_hash;

/// Shard `index` of `count` (`--shard I/N`, 0-based): the records whose id hashes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// Shard `index` of `count`; `index` must be below `count`.
    pub fn new(index: u32, count: u32) -> Result<Shard> {
        if count == 0 || index >= count {
            return Err(Error::InvalidConfig(format!(
                "invalid shard {index}/{count}: expected I/N with 0 <= I < N"
            )));
        }
        Ok(Shard { index, count })
    }

    /// This shard's index among its `count` siblings.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether `sample_id` belongs to this shard.
    pub fn contains(&self, sample_id: &str) -> bool {
        self.sibling_of(sample_id) == self.index
    }

    /// The index of the shard, among this one's `count` siblings, that `sample_id` belongs to.
    pub fn sibling_of(&self, sample_id: &str) -> u32 {
        (stable_hash(&[sample_id.as_bytes()]) % u64::from(self.count)) as u32
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Shard> {
        let bad = || Error::InvalidConfig(format!("invalid shard '{s}': expected I/N such as 0/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        Shard::new(
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        )
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_keys_without_overlap() {
        let shards: Vec<Shard> = (0..4).map(|i| Shard::new(i, 4).unwrap()).collect();
        let mut sizes = [0usize; 4];
        for n in 0..10_000 {
            let id = format!("S-{n}");
            let owners: Vec<usize> = (0..4).filter(|&i| shards[i].contains(&id)).collect();
            assert_eq!(owners.len(), 1, "{id}");
            sizes[owners[0]] += 1;
        }
        assert!(
            sizes.iter().all(|&s| (2_200..2_800).contains(&s)),
            "{sizes:?}"
        );
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!("1/3".parse::<Shard>().unwrap(), Shard::new(1, 3).unwrap());
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1-3".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
    }
}
