//! Seeded shuffling batcher: the data order of epoch e is a pure function of (seed, epoch), so a
//! training run resumed at epoch e, step s re-creates exactly the batches it would have seen.

use crate::rng::{derive_seed, SplitMix64};

/// Splits `0..n` into batches, reshuffled each epoch.
#[derive(Clone, Debug)]
pub struct Batcher {
    pub n: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Drop the last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// When false, every epoch is `0..n` in order (for evaluation).
    pub shuffle: bool,
}

/// The permutation of `0..n` used in epoch `epoch` (Fisher–Yates with a stream from (seed, epoch)).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64::new(derive_seed(&[seed, epoch, 0xBA7C])).shuffle(&mut idx);
    idx
}

impl Batcher {
    /// A shuffling batcher that keeps the last short batch. `batch_size` 0 is treated as 1.
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        Batcher { n, batch_size: batch_size.max(1), seed, drop_last: false, shuffle: true }
    }

    pub fn drop_last(mut self, drop: bool) -> Self {
        self.drop_last = drop;
        self
    }

    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let b = self.batch_size.max(1);
        if self.drop_last {
            self.n / b
        } else {
            self.n.div_ceil(b)
        }
    }

    /// The order of `0..n` in `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        if self.shuffle {
            epoch_order(self.n, self.seed, epoch)
        } else {
            (0..self.n).collect()
        }
    }

    /// All index batches of `epoch`.
    pub fn batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let order = self.epoch_order(epoch);
        let b = self.batch_size.max(1);
        order.chunks(b).take(self.num_batches()).map(|c| c.to_vec()).collect()
    }

    /// An endless stream of (epoch, batch index within epoch, indices) starting at a global step,
    /// for resuming: step s is batch s % num_batches of epoch s / num_batches. Empty when an epoch has
    /// no batch (n = 0, or drop_last with n < batch_size).
    pub fn from_step(&self, step: u64) -> impl Iterator<Item = (u64, usize, Vec<usize>)> + '_ {
        let nb = self.num_batches().max(1) as u64;
        let mut epoch = step / nb;
        let mut k = (step % nb) as usize;
        let mut cur = if self.num_batches() == 0 { Vec::new() } else { self.batches(epoch) };
        std::iter::from_fn(move || {
            if cur.is_empty() {
                return None;
            }
            if k >= cur.len() {
                epoch += 1;
                k = 0;
                cur = self.batches(epoch);
            }
            let item = (epoch, k, cur[k].clone());
            k += 1;
            Some(item)
        })
    }
}
