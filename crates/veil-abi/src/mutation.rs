//! A deterministic byte mutator for Veil's bounded fuzz tests: every parser of hostile bytes
//! (contributions, declared columns, modules, policies, manifests, CSV and Parquet files) is fed
//! thousands of mutations of valid inputs at a fixed seed in the ordinary test run, and must answer
//! `Ok` or an error — never panic, never hang. It lives here because every crate that parses
//! hostile bytes already depends on this one, which has no dependencies.

use alloc::vec::Vec;

/// Mutations of a valid input: bit flips, byte overwrites with boundary values, insertions,
/// deletions, truncations and duplicated slices, one to four per case. Requires a non-zero seed.
#[derive(Debug, Clone)]
pub struct Mutator {
    state: u64,
}

/// Values that tend to hit edge cases in length fields and tags.
const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, b'\n', b'"'];

impl Mutator {
    /// Requires `seed != 0` (xorshift's fixed point).
    pub fn new(seed: u64) -> Self {
        assert!(seed != 0, "xorshift needs a non-zero seed");
        Mutator { state: seed }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// A number in `0..n`. Requires `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// One mutated copy of `input`.
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=self.below(4) {
            self.apply(&mut out);
        }
        out
    }

    fn apply(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() {
            out.push(self.next() as u8);
            return;
        }
        let at = self.below(out.len());
        match self.below(6) {
            0 => out[at] ^= 1 << self.below(8),
            1 => out[at] = INTERESTING[self.below(INTERESTING.len())],
            2 => out.insert(at, self.next() as u8),
            3 => {
                out.remove(at);
            }
            4 => out.truncate(at),
            _ => {
                let len = self.below(out.len() - at).min(64) + 1;
                let slice: Vec<u8> = out[at..at + len].to_vec();
                let to = self.below(out.len());
                out.splice(to..to, slice);
            }
        }
    }
}
