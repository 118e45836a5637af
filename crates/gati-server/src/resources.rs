//! Pooled resources behind RAII guards: whatever way a request ends (an answer, an error, a
//! panic unwinding through it), dropping its guard gives back what it took.

use crossbeam_channel::{bounded, Receiver, Sender};
use prometheus::IntGauge;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// A fixed set of interchangeable resources (model replicas) taken one at a time.
pub struct LeasePool<T> {
    give: Sender<T>,
    take: Receiver<T>,
    size: usize,
}

/// One resource out of a `LeasePool`; back in the pool when dropped.
pub struct Lease<'a, T> {
    item: Option<T>,
    pool: &'a LeasePool<T>,
}

impl<T> LeasePool<T> {
    pub fn new(items: Vec<T>) -> Self {
        let size = items.len();
        let (give, take) = bounded(size.max(1));
        for i in items {
            give.send(i).expect("room for every item");
        }
        Self { give, take, size }
    }

    /// Waits for a free item until `deadline` (None: as long as it takes).
    pub fn lease(&self, deadline: Option<Instant>) -> Option<Lease<'_, T>> {
        let item = match deadline {
            Some(d) => self.take.recv_deadline(d).ok()?,
            None => self.take.recv().ok()?,
        };
        Some(Lease {
            item: Some(item),
            pool: self,
        })
    }

    /// Every item, once each is free (an exclusive hold on the whole pool).
    pub fn lease_all(&self) -> Vec<Lease<'_, T>> {
        (0..self.size)
            .map(|_| self.lease(None).expect("the pool owns its sender"))
            .collect()
    }

    /// Items free right now.
    pub fn free(&self) -> usize {
        self.take.len()
    }
}

impl<T> Deref for Lease<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.item.as_ref().expect("held until drop")
    }
}

impl<T> DerefMut for Lease<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item.as_mut().expect("held until drop")
    }
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        if let Some(i) = self.item.take() {
            // The pool has room for every item it handed out.
            let _ = self.pool.give.send(i);
        }
    }
}

/// A counting semaphore that never blocks: `try_acquire` succeeds while fewer than `max` permits
/// are out, atomically (no read-then-increment race), and mirrors the count in a gauge.
#[derive(Clone)]
pub struct Permits {
    used: Arc<AtomicUsize>,
    max: usize,
    gauge: IntGauge,
}

/// One admitted unit of work; released when dropped.
pub struct Permit {
    permits: Permits,
}

impl Permits {
    pub fn new(max: usize, gauge: IntGauge) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            max,
            gauge,
        }
    }

    pub fn try_acquire(&self) -> Option<Permit> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()?;
        self.gauge.inc();
        Some(Permit { permits: self.clone() })
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.permits.used.fetch_sub(1, Ordering::AcqRel);
        self.permits.gauge.dec();
    }
}

/// Increments a gauge for as long as it lives.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(g: &IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Locks `m` even if a thread panicked while holding it: what these mutexes guard stays
/// consistent across a panic (a map of ids, a buffer, a lookup that does not write), and a
/// poisoned lock must not turn one failed request into every later request failing.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_comes_back_when_its_holder_panics() {
        let pool = LeasePool::new(vec![1, 2]);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _a = pool.lease(None).unwrap();
            let _b = pool.lease(None).unwrap();
            assert_eq!(pool.free(), 0);
            panic!("a stage failed");
        }));
        assert!(r.is_err());
        assert_eq!(pool.free(), 2);
        assert_eq!(pool.lease_all().len(), 2);
        assert_eq!(pool.free(), 2, "lease_all's leases went back too");
    }

    #[test]
    fn lease_waits_until_its_deadline_only() {
        let pool = LeasePool::new(vec![()]);
        let held = pool.lease(None).unwrap();
        let t = Instant::now();
        assert!(pool
            .lease(Some(Instant::now() + std::time::Duration::from_millis(30)))
            .is_none());
        assert!(t.elapsed() >= std::time::Duration::from_millis(30));
        drop(held);
        assert!(pool.lease(Some(Instant::now())).is_some());
    }

    #[test]
    fn permits_never_overshoot_under_contention_and_return_on_panic() {
        let gauge = IntGauge::new("t_in_flight", "test").unwrap();
        let permits = Permits::new(3, gauge.clone());
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (p, peak) = (permits.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut got = 0;
                    for _ in 0..2000 {
                        if let Some(_permit) = p.try_acquire() {
                            got += 1;
                            peak.fetch_max(p.in_use(), Ordering::AcqRel);
                        }
                    }
                    got
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(admitted > 0);
        assert!(peak.load(Ordering::Acquire) <= 3);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _p = permits.try_acquire().unwrap();
            panic!("handler bug");
        }));
        assert_eq!(permits.in_use(), 0);
        assert_eq!(gauge.get(), 0);
        let held: Vec<_> = (0..3).map(|_| permits.try_acquire().unwrap()).collect();
        assert!(permits.try_acquire().is_none(), "a fourth permit past max 3");
        drop(held);
        assert_eq!(gauge.get(), 0);
    }
}
