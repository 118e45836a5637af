//! Exact repeats at the frontend: a request whose input bytes equal an earlier request's gets that
//! request's answer without reaching the base worker (a prediction cache, as in Clipper). The
//! answer is the one the system gave (the base model's, or a cache's it trusted), so repeats
//! cost no more agreement than their first sight did.

use gati_rpc::{InferRequest, InferResponse, Input};
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// A request's identity: SHA-256 of its model and input (encoding, shape, dtype and bytes).
pub type Key = [u8; 32];

pub fn key(req: &InferRequest) -> Key {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(&mut h, req.model.as_bytes());
    match &req.input {
        Input::Image(bytes) => {
            field(&mut h, b"image");
            field(&mut h, bytes);
        }
        Input::Tensor(t) => {
            field(&mut h, b"tensor");
            let shape: Vec<u8> = t.shape.iter().flat_map(|d| d.to_le_bytes()).collect();
            field(&mut h, &shape);
            field(&mut h, t.dtype.as_deref().unwrap_or("float32").as_bytes());
            field(&mut h, &t.data);
        }
    }
    h.finalize().into()
}

/// The answers given to the last `capacity` distinct inputs, least recently used evicted first.
pub struct ExactCache {
    answers: Mutex<lru::LruCache<Key, InferResponse>>,
}

impl ExactCache {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            answers: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// The answer stored for `key`, listing its `top_k` best classes; None when absent or when it
    /// lists fewer classes than asked.
    pub fn get(&self, key: &Key, top_k: usize) -> Option<InferResponse> {
        let mut r = crate::resources::lock(&self.answers).get(key).cloned()?;
        if r.top_k.len() < top_k {
            return None;
        }
        r.top_k.truncate(top_k);
        Some(r)
    }

    /// Stores an answer; whether another input's answer was evicted to make room.
    pub fn put(&self, key: Key, answer: &InferResponse) -> bool {
        let evicted = crate::resources::lock(&self.answers).push(key, answer.clone());
        evicted.is_some_and(|(k, _)| k != key)
    }

    pub fn len(&self) -> usize {
        crate::resources::lock(&self.answers).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every answer; how many there were.
    pub fn clear(&self) -> usize {
        let mut a = crate::resources::lock(&self.answers);
        let n = a.len();
        a.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gati_rpc::{AnswerSource, ClassScore, Timing};
    use thrift::OrderedFloat;

    fn req(bytes: &[u8]) -> InferRequest {
        InferRequest {
            model: "m".into(),
            input: Input::Image(bytes.to_vec()),
            request_id: None,
            deadline_ms: None,
            top_k: None,
        }
    }

    fn answer(classes: &[i32]) -> InferResponse {
        let z = OrderedFloat(0.0);
        InferResponse {
            request_id: "r".into(),
            class_index: classes[0],
            class_name: String::new(),
            confidence: z,
            top_k: classes
                .iter()
                .map(|&c| ClassScore {
                    class_index: c,
                    class_name: String::new(),
                    confidence: z,
                })
                .collect(),
            source: AnswerSource::BASE,
            cache_layer: None,
            cache_version: None,
            timing: Timing {
                total_ms: z,
                queue_ms: z,
                preprocess_ms: z,
                base_ms: z,
                cache_ms: z,
            },
            cache_kind: None,
        }
    }

    #[test]
    fn an_exact_repeat_gets_the_stored_answer_and_anything_else_does_not() {
        let c = ExactCache::new(NonZeroUsize::new(2).unwrap());
        let (a, b, d) = (key(&req(b"a")), key(&req(b"b")), key(&req(b"d")));
        assert_ne!(a, b);
        let mut other_model = req(b"a");
        other_model.model = "n".into();
        assert_ne!(key(&other_model), a);
        c.put(a, &answer(&[3, 1, 2]));
        assert_eq!(c.get(&a, 2).unwrap().top_k.len(), 2);
        assert_eq!(c.get(&a, 3).unwrap().class_index, 3);
        assert!(c.get(&a, 4).is_none(), "more classes than stored");
        assert!(c.get(&b, 1).is_none());
        // Bounded: a third input evicts the least recently used.
        assert!(!c.put(b, &answer(&[1])));
        let _ = c.get(&a, 1);
        assert!(c.put(d, &answer(&[2])));
        assert_eq!(c.len(), 2);
        assert!(c.get(&b, 1).is_none() && c.get(&a, 1).is_some());
        assert_eq!(c.clear(), 2);
    }
}
