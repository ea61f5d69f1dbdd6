//! The approximate index of a large collection: an inverted file (IVF). The unit vectors are
//! grouped around √n centroids (spherical k-means on a sample); a search scores the
//! centroids, then only the points of the nearest tenth of the groups, exactly. Kept in step
//! with every insert, update and removal by slot, like the payload indexes; trained again
//! when the collection has doubled since.

use crate::simd;
use crate::vectors::Vectors;

/// Points the centroids are trained on, at most (the rest are only assigned).
const SAMPLE: usize = 10_000;
const ROUNDS: usize = 6;
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct Ivf {
    dim: usize,
    centroids: Vec<f32>,
    lists: Vec<Vec<u32>>,
    /// Slot → its list (`NONE` for a slot not held).
    list_of: Vec<u32>,
    /// Points when trained.
    pub trained_at: usize,
    /// Lists a search reads.
    nprobe: usize,
}

impl Ivf {
    /// Trains on the unit vectors of `vectors` and assigns them all.
    pub fn train(vectors: &Vectors, dim: usize) -> Ivf {
        let n = vectors.len();
        let nlist = ((n as f64).sqrt() as usize).clamp(1, 4096);
        let mut rng = fastrand::Rng::with_seed(0x1f_u64 ^ n as u64);
        let sample: Vec<usize> = if n <= SAMPLE {
            (0..n).collect()
        } else {
            (0..SAMPLE).map(|_| rng.usize(..n)).collect()
        };
        let row = |s: usize| vectors.get(s);
        let mut centroids: Vec<f32> = (0..nlist)
            .flat_map(|_| row(sample[rng.usize(..sample.len())]).to_vec())
            .collect();
        let mut assign = vec![0usize; sample.len()];
        for _ in 0..ROUNDS {
            for (i, &s) in sample.iter().enumerate() {
                assign[i] = nearest(&centroids, dim, row(s));
            }
            let mut sums = vec![0f32; nlist * dim];
            let mut counts = vec![0usize; nlist];
            for (i, &s) in sample.iter().enumerate() {
                let c = assign[i];
                counts[c] += 1;
                for (a, b) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row(s)) {
                    *a += b;
                }
            }
            for c in 0..nlist {
                let sum = &mut sums[c * dim..(c + 1) * dim];
                if counts[c] == 0 {
                    // An empty group restarts on a random point.
                    sum.copy_from_slice(row(sample[rng.usize(..sample.len())]));
                }
                simd::normalise(sum);
            }
            centroids = sums;
        }
        let mut ivf = Ivf {
            dim,
            centroids,
            lists: vec![Vec::new(); nlist],
            list_of: Vec::with_capacity(n),
            trained_at: n,
            nprobe: nlist.div_ceil(10).max(8).min(nlist),
        };
        for s in 0..n {
            ivf.insert(s, row(s));
        }
        ivf
    }

    /// Holds `slot` (whose unit vector is `v`) in its nearest list.
    pub fn insert(&mut self, slot: usize, v: &[f32]) {
        let c = nearest(&self.centroids, self.dim, v);
        if slot >= self.list_of.len() {
            self.list_of.resize(slot + 1, NONE);
        }
        self.list_of[slot] = c as u32;
        self.lists[c].push(slot as u32);
    }

    /// Stops holding `slot`.
    pub fn remove(&mut self, slot: usize) {
        let Some(&c) = self.list_of.get(slot) else {
            return;
        };
        if c == NONE {
            return;
        }
        let list = &mut self.lists[c as usize];
        if let Some(i) = list.iter().position(|&s| s as usize == slot) {
            list.swap_remove(i);
        }
        self.list_of[slot] = NONE;
        while self.list_of.last() == Some(&NONE) {
            self.list_of.pop();
        }
    }

    /// The slots of the lists nearest `query`: the candidates of a search.
    pub fn probe(&self, query: &[f32]) -> impl Iterator<Item = usize> + '_ {
        let mut order: Vec<(f32, usize)> = (0..self.lists.len())
            .map(|c| {
                (
                    simd::dot(query, &self.centroids[c * self.dim..(c + 1) * self.dim]),
                    c,
                )
            })
            .collect();
        let n = self.nprobe.min(order.len());
        if n < order.len() {
            order.select_nth_unstable_by(n, |a, b| b.0.total_cmp(&a.0));
        }
        order
            .into_iter()
            .take(n)
            .flat_map(|(_, c)| self.lists[c].iter().map(|&s| s as usize))
    }

    /// Every slot below `len` is in exactly the list it is recorded in (for tests).
    pub fn consistent(&self, len: usize) -> bool {
        let held: usize = self.lists.iter().map(Vec::len).sum();
        held == len
            && (0..len).all(|s| {
                self.list_of
                    .get(s)
                    .is_some_and(|&c| c != NONE && self.lists[c as usize].contains(&(s as u32)))
            })
    }
}

fn nearest(centroids: &[f32], dim: usize, v: &[f32]) -> usize {
    let mut best = (f32::NEG_INFINITY, 0);
    for (c, centre) in centroids.chunks_exact(dim).enumerate() {
        let s = simd::dot(v, centre);
        if s > best.0 {
            best = (s, c);
        }
    }
    best.1
}
