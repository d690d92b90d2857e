//! Integration tests: the real binary on real Delta tables in temp dirs.

mod it;
