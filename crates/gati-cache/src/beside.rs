//! A worker thread that owns some state and runs jobs on it: how a cache runs beside the base
//! model in the same process. At batch 1 the base model gains little from a second intra-op thread
//! (ResNet-56: 1.12–1.25x on a 2-vCPU Xeon, docs/results.md), so a whole small network (a
//! `student` cache) can use the second core while the base model goes on: a miss then costs the
//! base model only a hand-off, not the student's 35–40% of it.

use crate::heads::{CacheHead, HeadBank, Variant};
use anyhow::{Context, Result};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender, TryRecvError};
use gati_core::cpu;
use gati_core::stats::LatencyStats;
use gati_core::BaseModel;
use serde::{Deserialize, Serialize};
use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;
use std::time::Instant;
use tch::{nn, Kind, Tensor};

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// How long an idle thread waits for the next job spinning before it parks.
const SPIN: std::time::Duration = std::time::Duration::from_millis(20);

thread_local! {
    /// Set on a thread placed on a CPU of its own (`Beside::own_cpu`): it waits between jobs in
    /// the `SCHED_IDLE` class.
    static IDLE_BETWEEN_JOBS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub struct Beside<T> {
    jobs: Option<Sender<Job<T>>>,
    thread: Option<JoinHandle<()>>,
    /// The thread's id when it waits at `SCHED_IDLE`: each hand-off lifts it back.
    idle_waiter: Option<cpu::Tid>,
}

impl<T: Send + 'static> Beside<T> {
    /// Starts the thread `name`, which owns `state` until the `Beside` is dropped.
    pub fn spawn(name: &str, mut state: T) -> std::io::Result<Self> {
        let (tx, rx) = unbounded::<Job<T>>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let mut idle_since = Instant::now();
            loop {
                // Spin while jobs come often: a parked thread's core may fall asleep, and waking
                // it made a student answer 50% later on a 2-vCPU VM (sched_yield instead of a
                // spin was worse still: docs/results.md).
                let job = match rx.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) if idle_since.elapsed() < SPIN => {
                        std::hint::spin_loop();
                        continue;
                    }
                    Err(TryRecvError::Empty) => match rx.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    },
                    Err(TryRecvError::Disconnected) => return,
                };
                // On a CPU of its own the thread runs jobs in the normal class and waits for them
                // in SCHED_IDLE (`run` lifts it too, should a busier thread there keep it from
                // reaching the job).
                let idle_between = IDLE_BETWEEN_JOBS.get();
                if idle_between {
                    let _ = cpu::set_idle(0, false);
                }
                // A job that panics drops its reply sender (its caller sees a disconnected
                // receiver and degrades to the base model); the thread serves the next job.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut state)));
                if idle_between {
                    let _ = cpu::set_idle(0, true);
                }
                idle_since = Instant::now();
            }
        })?;
        Ok(Self {
            jobs: Some(tx),
            thread: Some(thread),
            idle_waiter: None,
        })
    }

    /// Pins the thread to `cpu`, a CPU of its own, where it waits between jobs in the `SCHED_IDLE`
    /// class: a thread that wakes there (an RPC reply, the frontend, the client) runs at once
    /// instead of queueing behind the spin, and the hand-off lifts it back to the normal class,
    /// so it still runs its jobs ahead of low-priority work (the trainer). Where this process may
    /// not leave `SCHED_IDLE` (`cpu::can_leave_idle`) it is only pinned.
    pub fn own_cpu(&mut self, cpu: usize) -> Result<()> {
        let idle = cpu::can_leave_idle();
        let tid = self
            .run(move |_| -> Result<cpu::Tid> {
                cpu::pin_current(&[cpu])?;
                if idle {
                    cpu::set_idle(0, true)?;
                    IDLE_BETWEEN_JOBS.set(true);
                }
                Ok(cpu::current_tid())
            })
            .recv()
            .context("the thread is gone")??;
        self.idle_waiter = idle.then_some(tid);
        Ok(())
    }

    /// Runs `f` on the thread, with the caller's libtorch intra-op thread count (a per-thread
    /// setting: a new thread would use every core). The receiver gets its result, or is
    /// disconnected when `f` panicked or the thread is gone.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce(&mut T) -> R + Send + 'static) -> Receiver<R> {
        let (tx, rx) = bounded(1);
        let threads = tch::get_num_threads();
        let job: Job<T> = Box::new(move |s| {
            if tch::get_num_threads() != threads {
                tch::set_num_threads(threads);
            }
            let _ = tx.send(f(s));
        });
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
            if let Some(tid) = self.idle_waiter {
                // Waiting in SCHED_IDLE, the thread may not run at all while a normal thread
                // (the trainer) has its CPU: lift it to reach the job.
                let _ = cpu::set_idle(tid, false);
            }
        }
        rx
    }
}

impl<T> Drop for Beside<T> {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once the queued jobs have run.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A prepared copy of the head stored under `key` in `vs` on its own thread, its parameters
/// sharing `vs`'s storage: what is written into them (an installed version) is what the thread
/// runs once it is prepared again (`EarlyExit::set_params`).
pub fn twin(vs: &nn::VarStore, key: &str, variant: Variant, chw: [i64; 3], classes: i64) -> Result<Beside<CacheHead>> {
    let head = CacheHead::prepared_copy(vs, key, variant, chw, classes)?;
    Beside::spawn(&format!("beside-{key}"), head).with_context(|| format!("starting the thread of cache '{key}'"))
}

/// What running a head beside the base model costs on this machine, batch 1 (`measure`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BesideCosts {
    /// From hand-off to an answer the base model's thread can use, while the base model runs.
    pub latency_ms: f64,
    /// How much longer the base model's own stages take meanwhile: near zero on a free core, most
    /// of the head's time where the two threads share one core's execution units.
    pub slowdown_ms: f64,
}

/// Measures `BesideCosts` of bank head `h` beside `model` on `inputs` (normalised, batch 1), over
/// `runs` requests, each timed alone, with the head inline and with it beside. On a shared VM the
/// machine's speed moves from minute to minute, so the head's latency beside is taken as its
/// inline cost `inline_ms` (measured with every other head) plus the median difference between
/// the two placements within the same request.
pub fn measure(
    model: &BaseModel,
    bank: &HeadBank,
    h: usize,
    inline_ms: f64,
    inputs: &[Tensor],
    runs: usize,
) -> Result<BesideCosts> {
    let e = &bank.heads[h];
    let shape = &model.stages()[e.stage].output_shape;
    let chw = [shape[1], shape[2], shape[3]];
    let classes = model.spec().num_classes;
    let b = twin(&bank.vs, &e.key, e.variant, chw, classes)?;
    let inline = CacheHead::prepared_copy(&bank.vs, &e.key, e.variant, chw, classes)?;
    let _g = tch::no_grad_guard();
    let (after, end) = (e.stage + 1, model.num_stages());
    let (mut alone, mut slower, mut later) = (Vec::new(), Vec::new(), Vec::new());
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for (i, x) in inputs.iter().cycle().take(runs + 10).enumerate() {
        let a = model.forward_range(0, after, x);
        let t = Instant::now();
        let _ = model.forward_range(after, end, &a);
        let t_alone = ms(t);
        let t = Instant::now();
        let _ = inline.forward_t(&a, false).softmax(-1, Kind::Float);
        let t_inline = ms(t);
        let copy = a.copy();
        let t = Instant::now();
        let done = b.run(move |head: &mut CacheHead| {
            let _g = tch::no_grad_guard();
            let _ = head.forward_t(&copy, false).softmax(-1, Kind::Float);
            Instant::now()
        });
        let _ = model.forward_range(after, end, &a);
        let t_beside = ms(t);
        let done = done.recv().context("the head's thread failed")?;
        if i >= 10 {
            alone.push(t_alone);
            slower.push(t_beside - t_alone);
            later.push(done.duration_since(t).as_secs_f64() * 1e3 - t_inline);
        }
    }
    let median = |v: &[f64]| LatencyStats::from_samples(v).p50;
    // The base model's thread takes the answer between two of its stages: half a stage later.
    let half_stage = median(&alone) / (end - after).max(1) as f64 / 2.0;
    Ok(BesideCosts {
        latency_ms: inline_ms + median(&later).max(0.0) + half_stage,
        slowdown_ms: median(&slower).max(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs run on the owned state in order; a job that panics disconnects its own reply only.
    #[test]
    fn a_panicking_job_leaves_the_thread_serving() {
        let b = Beside::spawn("test-beside", vec![1, 2, 3]).unwrap();
        assert_eq!(b.run(|v| v.iter().sum::<i32>()).recv().unwrap(), 6);
        assert!(b.run(|v| v[7]).recv().is_err());
        assert_eq!(b.run(|v| v.len()).recv().unwrap(), 3);
    }

    /// On a CPU of its own the thread runs each job in the normal class and waits between jobs
    /// in `SCHED_IDLE` (where the process may leave it again; else it is only pinned).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_on_its_own_cpu_runs_jobs_normally_and_waits_at_idle() {
        let policy = |tid: cpu::Tid| unsafe { libc::sched_getscheduler(tid) };
        let mut b = Beside::spawn("test-own-cpu", ()).unwrap();
        b.own_cpu(0).unwrap();
        let idle = cpu::can_leave_idle();
        for _ in 0..3 {
            let (tid, during, cpu_now) = b
                .run(move |_| (cpu::current_tid(), policy(0), unsafe { libc::sched_getcpu() }))
                .recv()
                .unwrap();
            assert_eq!(during, libc::SCHED_OTHER, "a job runs in the normal class");
            assert_eq!(cpu_now, 0, "the thread runs on its CPU");
            let waiting = (0..1000)
                .map(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    policy(tid)
                })
                .find(|&p| p == libc::SCHED_IDLE);
            assert_eq!(waiting.is_some(), idle, "between jobs: SCHED_IDLE where it can be left");
        }
    }
}
