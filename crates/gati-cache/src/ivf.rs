//! An inverted-file index over a memory store's keys (the scheme of FAISS's IndexIVFFlat): the
//! keys are clustered around `lists` centroids (spherical k-means on the keys stored when the
//! index is trained), every slot is filed under its nearest centroid, and a lookup compares the
//! query with the keys filed under its `probes` nearest centroids only. Keys stay in the store's
//! own buffer and the lists are threaded through the slots, so the index adds a fixed number of
//! bytes (centroids and three integers per slot) and an evicted slot just moves to its new key's
//! list: the store's byte limit holds exactly. HNSW crates were measured and not used: usearch
//! grows in 16 MiB arenas (67 MB for 30,840 keys of 256 floats), and the pure-Rust ones cannot
//! delete, which a store with eviction must.

use tch::{Kind, Tensor};

const NONE: u32 = u32::MAX;

/// Lloyd iterations of the k-means that places the centroids.
const KMEANS_ROUNDS: usize = 8;

pub struct Ivf {
    /// `[lists, d]`, unit rows.
    centroids: Tensor,
    probes: i64,
    /// First slot of each list.
    head: Vec<u32>,
    /// Per slot: its list, and its neighbours in that list.
    list_of: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
}

impl Ivf {
    /// Lists and probes for a store of `capacity` slots: about √capacity lists of √capacity keys,
    /// of which a lookup reads 8 (or all, for a small store).
    pub fn shape(capacity: usize) -> (usize, usize) {
        let lists = ((capacity as f64).sqrt().round() as usize).max(1);
        (lists, lists.min(8))
    }

    /// Bytes the index adds to a store of `capacity` slots with keys of `dims` values.
    pub fn bytes_for(capacity: usize, dims: i64) -> u64 {
        let (lists, _) = Self::shape(capacity);
        (lists as u64) * (4 * dims as u64 + 4) + 12 * capacity as u64
    }

    /// Trains the centroids on `keys` `[n, d]` (unit rows, n ≥ 1) for a store of `capacity` slots;
    /// no slot is filed yet.
    pub fn train(keys: &Tensor, capacity: usize) -> Self {
        let _g = tch::no_grad_guard();
        let (lists, probes) = Self::shape(capacity);
        let n = keys.size()[0];
        let lists_i = lists as i64;
        // Evenly spaced rows as the first centroids (deterministic; rows repeat if n < lists).
        let pick: Vec<i64> = (0..lists_i).map(|i| i * n / lists_i).collect();
        let mut c = keys.index_select(0, &Tensor::from_slice(&pick));
        for _ in 0..KMEANS_ROUNDS {
            let nearest = keys.mm(&c.tr()).argmax(1, false);
            let sums =
                Tensor::zeros([lists_i, keys.size()[1]], (Kind::Float, tch::Device::Cpu)).index_add(0, &nearest, keys);
            // An empty list keeps its centroid.
            let empty = sums.norm_scalaropt_dim(2.0, [1], true).le(1e-12);
            let moved = sums.where_self(&empty.logical_not(), &c);
            c = &moved / moved.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12);
        }
        Self {
            centroids: c,
            probes: probes as i64,
            head: vec![NONE; lists],
            list_of: vec![NONE; capacity],
            next: vec![NONE; capacity],
            prev: vec![NONE; capacity],
        }
    }

    pub fn bytes(&self) -> u64 {
        (self.centroids.numel() * 4 + 4 * (self.head.len() + 3 * self.list_of.len())) as u64
    }

    /// Files `slot` (holding `key` `[d]`) under its nearest centroid, taking it out of its old list.
    pub fn file(&mut self, slot: usize, key: &Tensor) {
        let _g = tch::no_grad_guard();
        let list = self.centroids.mv(&key.view([-1])).argmax(0, false).int64_value(&[]) as usize;
        self.unfile(slot);
        let first = self.head[list];
        self.next[slot] = first;
        self.prev[slot] = NONE;
        if first != NONE {
            self.prev[first as usize] = slot as u32;
        }
        self.head[list] = slot as u32;
        self.list_of[slot] = list as u32;
    }

    fn unfile(&mut self, slot: usize) {
        let list = self.list_of[slot];
        if list == NONE {
            return;
        }
        let (p, n) = (self.prev[slot], self.next[slot]);
        if p == NONE {
            self.head[list as usize] = n;
        } else {
            self.next[p as usize] = n;
        }
        if n != NONE {
            self.prev[n as usize] = p;
        }
        self.list_of[slot] = NONE;
    }

    /// The slots filed under the `probes` centroids nearest to `query` `[d]`.
    pub fn candidates(&self, query: &Tensor) -> Vec<i64> {
        let _g = tch::no_grad_guard();
        let (_, lists) = self.centroids.mv(&query.view([-1])).topk(self.probes, 0, true, false);
        let mut out = Vec::new();
        for l in Vec::<i64>::try_from(lists).expect("i64 lists") {
            let mut s = self.head[l as usize];
            while s != NONE {
                out.push(s as i64);
                s = self.next[s as usize];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_rows(t: Tensor) -> Tensor {
        &t / t.norm_scalaropt_dim(2.0, [1], true)
    }

    #[test]
    fn slots_move_between_lists_and_every_filed_slot_is_found_once() {
        tch::manual_seed(3);
        let keys = unit_rows(Tensor::randn([400, 16], (Kind::Float, tch::Device::Cpu)));
        let mut ivf = Ivf::train(&keys, 400);
        assert_eq!(ivf.head.len(), 20);
        for s in 0..400 {
            ivf.file(s, &keys.get(s as i64));
        }
        // Re-filing a slot under another key keeps each slot in exactly one list.
        for s in 0..100 {
            ivf.file(s, &keys.get(399 - s as i64));
        }
        ivf.probes = ivf.head.len() as i64;
        let mut all = ivf.candidates(&keys.get(0));
        all.sort_unstable();
        assert_eq!(all, (0..400).collect::<Vec<i64>>());
        // A key is found among its own list's candidates.
        ivf.probes = 1;
        for s in 100..400 {
            assert!(ivf.candidates(&keys.get(s as i64)).contains(&(s as i64)), "slot {s}");
        }
        assert_eq!(ivf.bytes(), Ivf::bytes_for(400, 16));
    }
}
