//! The one random generator of the end-to-end tests: SplitMix64, so that a whole
//! run (which flows, which faults, in which order) follows from one printed seed
//! and replays with it. Not for anything but tests: it is tiny and predictable on
//! purpose.

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        dagflow::bench::splitmix64(&mut self.0)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.next() % (hi - lo + 1)
    }

    /// True `percent` times out of a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// An index below `len` (which must not be 0).
    pub fn index(&mut self, len: usize) -> usize {
        assert!(len > 0, "index into nothing");
        (self.next() % len as u64) as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// Shuffles in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }

    /// A generator of its own for a separate stream of choices, so that adding a
    /// choice in one part of a test does not shift every choice of another.
    pub fn fork(&mut self, salt: u64) -> Rng {
        Rng(self.next() ^ salt)
    }
}

/// A seed from the clock, for runs that were not given one (printed, so that they
/// replay).
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
