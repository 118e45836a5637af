//! Serving a plan in-process: the base model runs stage by stage, and after each planned stage
//! its cache decides whether to answer; on a hit the remaining stages are skipped.

use crate::beside::Beside;
use crate::decision::{decide, Decision};
use crate::heads::CacheHead;
use crate::memory::MemoryCache;
use crate::plan::Plan;
use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, TryRecvError};
use gati_core::BaseModel;
use std::path::Path;
use std::sync::Arc;
use tch::{nn, Kind, Tensor};

pub struct RuntimeCache {
    pub layer: String,
    pub stage: usize,
    /// Prefix of this cache's parameters in the runtime's var store.
    pub key: String,
    pub head: CacheHead,
    pub decision: Decision,
    /// False: the cache never answers (the accuracy guard switched it off).
    pub enabled: bool,
    /// The plan's own head and decision, kept apart from what learning changes: a learned version
    /// leaves the classes it has not certified to it (`PLAN_DECIDES`).
    pub plan_head: CacheHead,
    pub plan_decision: Decision,
    /// The plan runs this cache beside the base model: a copy of its head on its own thread,
    /// sharing its parameters (`PlannedCache::beside`).
    pub beside: Option<Beside<CacheHead>>,
}

/// Copies every parameter of `src` into the same-named one of `dst` (both sorted by name).
pub(crate) fn copy_params(dst: &[(String, Tensor)], src: &[(String, Tensor)]) {
    assert_eq!(
        dst.iter().map(|v| &v.0).collect::<Vec<_>>(),
        src.iter().map(|v| &v.0).collect::<Vec<_>>(),
        "the same cache architecture on both sides"
    );
    tch::no_grad(|| {
        for ((_, d), (_, s)) in dst.iter().zip(src) {
            d.shallow_clone().copy_(s);
        }
    });
}

/// A cache's softmax row on one activation, and `Some((class, probability))` when it answers.
pub type CacheAnswer = (Vec<f32>, Option<(usize, f32)>);

impl RuntimeCache {
    /// The softmax row this cache answers with on `activation` (`[1, C, H, W]`), and
    /// `Some((class, probability))` on a hit.
    pub fn answer(&self, activation: &Tensor) -> CacheAnswer {
        self.answer_rows(activation).pop().expect("one row")
    }

    /// `answer` for every row of a batch of activations `[n, C, H, W]`, in one pass of the head:
    /// each row's softmax and its hit, its own or the plan's cache's on a class it leaves to the
    /// plan.
    pub fn answer_rows(&self, activations: &Tensor) -> Vec<CacheAnswer> {
        let _g = tch::no_grad_guard();
        self.decide_rows(probs_rows(&self.head.forward_t(activations, false)), activations)
    }

    /// The hit decisions on this cache's softmax `rows` of `activations`.
    fn decide_rows(&self, rows: Vec<Vec<f32>>, activations: &Tensor) -> Vec<CacheAnswer> {
        if !self.enabled {
            return rows.into_iter().map(|r| (r, None)).collect();
        }
        rows.into_iter()
            .enumerate()
            .map(|(i, row)| {
                let plan_row = || {
                    let a = activations.narrow(0, i as i64, 1);
                    probs_row(&self.plan_head.forward_t(&a, false))
                };
                match decide(&self.decision, &row, &self.plan_decision, plan_row) {
                    (Some(prow), hit) => (prow, hit),
                    (None, hit) => (row, hit),
                }
            })
            .collect()
    }
}

/// What a cache version carries for one cache: everything that learning may change.
#[derive(Debug)]
pub struct CacheState {
    pub layer: String,
    /// Named as in `EarlyExit::cache_params` (without the cache's key prefix).
    pub params: Vec<(String, Tensor)>,
    pub decision: Decision,
    pub enabled: bool,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The cache at this position of the plan.
    Cache(usize),
    /// The memory cache (a stored answer to a near-duplicate).
    Memory,
    Base,
}

#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub class: usize,
    pub confidence: f32,
    pub exit: Exit,
}

pub struct EarlyExit {
    pub model: BaseModel,
    pub caches: Vec<RuntimeCache>,
    /// The plan's memory cache, shared by every replica that serves the plan.
    pub memory: Option<Arc<MemoryCache>>,
    vs: nn::VarStore,
    plan_vs: nn::VarStore,
}

impl EarlyExit {
    /// Loads a plan's base model and caches from its directory.
    pub fn load(dir: &Path) -> Result<(Plan, Self)> {
        let plan = Plan::load(dir)?;
        let model = BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu)?;
        let ee = Self::from_plan(&plan, model, &plan.caches_path(dir))?;
        Ok((plan, ee))
    }

    /// The base model with the plan's caches (all of them, or only those at `layers`).
    pub fn from_plan(plan: &Plan, model: BaseModel, weights: &Path) -> Result<Self> {
        Self::with_layers(plan, model, weights, None)
    }

    pub fn with_layers(plan: &Plan, model: BaseModel, weights: &Path, layers: Option<&[String]>) -> Result<Self> {
        let mut vs = nn::VarStore::new(model.device());
        let mut plan_vs = nn::VarStore::new(model.device());
        let classes = model.spec().num_classes;
        let mut caches = Vec::new();
        for c in plan
            .caches
            .iter()
            .filter(|c| layers.is_none_or(|l| l.contains(&c.layer)))
        {
            let Some(info) = model.stages().get(c.stage).filter(|i| i.name == c.layer) else {
                bail!(
                    "plan cache at stage {} ('{}') does not exist in {}",
                    c.stage,
                    c.layer,
                    plan.model
                );
            };
            let s = &info.output_shape;
            let head = |vs: &nn::VarStore| {
                CacheHead::new(&(vs.root() / c.key.as_str()), c.variant, [s[1], s[2], s[3]], classes)
            };
            caches.push(RuntimeCache {
                layer: c.layer.clone(),
                stage: c.stage,
                key: c.key.clone(),
                head: head(&vs),
                decision: c.decision.clone(),
                enabled: true,
                plan_head: head(&plan_vs),
                plan_decision: c.decision.clone(),
                beside: None,
            });
        }
        if !caches.is_empty() {
            gati_core::weights::load_subset(&mut vs, weights)?;
            gati_core::weights::load_subset(&mut plan_vs, weights)?;
        }
        for cache in caches.iter_mut() {
            cache.head.prepare();
            cache.plan_head.prepare();
            if plan.caches.iter().any(|c| c.layer == cache.layer && c.beside) {
                let s = &model.stages()[cache.stage].output_shape;
                let chw = [s[1], s[2], s[3]];
                cache.beside = Some(crate::beside::twin(&vs, &cache.key, cache.head.variant, chw, classes)?);
            }
        }
        let memory = match &plan.memory {
            Some(m) if layers.is_none() => Some(Arc::new(memory_cache(&model, &m.spec)?)),
            _ => None,
        };
        Ok(Self {
            model,
            caches,
            memory,
            vs,
            plan_vs,
        })
    }

    /// Gives the caches the plan runs beside the base model CPU `cpu` of their own
    /// (`Beside::own_cpu`).
    pub fn beside_on_cpu(&mut self, cpu: usize) -> Result<()> {
        for c in &mut self.caches {
            if let Some(b) = &mut c.beside {
                b.own_cpu(cpu)
                    .with_context(|| format!("placing cache '{}' on CPU {cpu}", c.layer))?;
            }
        }
        Ok(())
    }

    /// Cache `c`'s parameters, named without its prefix; they share storage with the serving
    /// model, so writing into them (under `no_grad`) changes what it answers.
    pub fn cache_params(&self, c: usize) -> Vec<(String, Tensor)> {
        self.params_in(&self.vs, c)
    }

    /// The plan's own parameters of cache `c` (version 0; never written).
    pub fn plan_params(&self, c: usize) -> Vec<(String, Tensor)> {
        self.params_in(&self.plan_vs, c)
    }

    fn params_in(&self, vs: &nn::VarStore, c: usize) -> Vec<(String, Tensor)> {
        let prefix = format!("{}.", self.caches[c].key);
        let mut v: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter_map(|(k, t)| Some((k.strip_prefix(&prefix)?.to_string(), t)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A copy of every cache's state.
    pub fn states(&self) -> Vec<CacheState> {
        (0..self.caches.len())
            .map(|c| CacheState {
                layer: self.caches[c].layer.clone(),
                params: self.cache_params(c).into_iter().map(|(k, t)| (k, t.copy())).collect(),
                decision: self.caches[c].decision.clone(),
                enabled: self.caches[c].enabled,
            })
            .collect()
    }

    /// A copy of the plan's own caches (version 0).
    pub fn plan_states(&self) -> Vec<CacheState> {
        (0..self.caches.len())
            .map(|c| CacheState {
                layer: self.caches[c].layer.clone(),
                params: self.plan_params(c).into_iter().map(|(k, t)| (k, t.copy())).collect(),
                decision: self.caches[c].plan_decision.clone(),
                enabled: true,
            })
            .collect()
    }

    /// Installs `states` into the caches of the same layers (states of other layers are ignored).
    /// Everything is checked before anything changes: parameter names and shapes, finite values,
    /// a decision for this model's classes. Returns how many caches changed.
    pub fn install(&mut self, states: &[CacheState]) -> Result<usize> {
        let classes = self.model.spec().num_classes as usize;
        let mut plan = Vec::new();
        for s in states {
            let Some(c) = self.caches.iter().position(|c| c.layer == s.layer) else {
                continue;
            };
            let ours = self.cache_params(c);
            let names = |v: &[(String, Tensor)]| v.iter().map(|(k, t)| (k.clone(), t.size())).collect::<Vec<_>>();
            let mut theirs: Vec<(String, Tensor)> =
                s.params.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
            theirs.sort_by(|a, b| a.0.cmp(&b.0));
            if names(&ours) != names(&theirs) {
                bail!(
                    "cache '{}': parameters {:?} do not match the served cache's {:?}",
                    s.layer,
                    names(&theirs),
                    names(&ours)
                );
            }
            if let Some((k, _)) = theirs
                .iter()
                .find(|(_, t)| t.kind() != Kind::Float || !bool::try_from(t.isfinite().all()).unwrap_or(false))
            {
                bail!("cache '{}': parameter '{k}' is not finite float32", s.layer);
            }
            let fits = match &s.decision {
                Decision::Threshold { thresholds } => thresholds.len() == classes,
                Decision::Selector { weights, .. } => weights.len() == classes,
            };
            if !fits {
                bail!("cache '{}': the decision is not for {classes} classes", s.layer);
            }
            plan.push((c, ours, theirs, s));
        }
        for (c, _, theirs, s) in &plan {
            self.set_params(*c, theirs);
            self.caches[*c].decision = s.decision.clone();
            self.caches[*c].enabled = s.enabled;
        }
        Ok(plan.len())
    }

    /// Writes `params` (named as `cache_params` names them, in its order) into cache `c`, and
    /// prepares again what serving runs from them, here and on the cache's thread beside the
    /// base model: the one way a served cache's parameters change.
    pub fn set_params(&mut self, c: usize, params: &[(String, Tensor)]) {
        copy_params(&self.cache_params(c), params);
        let cache = &mut self.caches[c];
        cache.head.prepare();
        if let Some(b) = &cache.beside {
            // Queued ahead of the next request's job; waiting makes the swap complete on return.
            let _ = b.run(|head| head.prepare()).recv();
        }
    }

    /// The cache model and decision at `stage`, if the plan has one there.
    pub fn cache_at(&self, stage: usize) -> Option<&RuntimeCache> {
        self.caches.iter().find(|c| c.stage == stage)
    }

    /// Softmax of a cache's logits on one activation, and its decision.
    pub fn consult(c: &RuntimeCache, activation: &Tensor) -> CacheAnswer {
        c.answer(activation)
    }

    /// Answers one normalised input `[1, C, H, W]`, exiting at the first confident cache.
    pub fn infer(&self, x: &Tensor) -> Answer {
        self.infer_batch(x).pop().expect("one answer")
    }

    /// Answers a batch `[B, C, H, W]` in one pass: each sample leaves at the first cache confident
    /// about it, the rest go on as a smaller batch. Each answer is the one the sample gets alone.
    pub fn infer_batch(&self, x: &Tensor) -> Vec<Answer> {
        self.walk(x, 0, &mut NoHooks).iter().map(Walked::answer).collect()
    }

    /// The one early-exit loop. Runs the base model's stages from `from` on the batch `x` (the
    /// input for `from == 0`, else the output of stage `from - 1`); after each stage, the cache
    /// planned there answers for the samples still running that no cache has answered yet, and a
    /// sample it answers leaves the batch unless `hooks` keep it running. `hooks` see every stage
    /// and every hit and may stop samples; what serving, learning and sampling do differently
    /// lives in them. Returns one `Walked` per sample, in input order.
    pub fn walk(&self, x: &Tensor, from: usize, hooks: &mut impl Hooks) -> Vec<Walked> {
        let _g = tch::no_grad_guard();
        let n = x.size()[0] as usize;
        let mut out: Vec<Walked> = (0..n).map(|_| Walked::default()).collect();
        // Samples still running (input indices), in the order of `h`'s rows.
        let mut rows: Vec<usize> = (0..n).collect();
        let mut h = x.shallow_clone();
        let consult = hooks.consult_caches();
        let memory = self.memory.as_deref().filter(|_| consult);
        // Memory keys of the samples looked up, stored with their base answer if they run to the end.
        let mut keys: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        let m = &self.model;
        // A beside cache's answers still being computed.
        let mut pending: Option<Pending> = None;
        macro_rules! walk {
            () => {
                &mut Walk {
                    out: &mut out,
                    rows: &mut rows,
                    h: &mut h,
                    keys: &mut keys,
                }
            };
        }
        for k in from..m.num_stages() {
            let stopped = hooks.stop_before(k, &rows);
            if !stopped.is_empty() {
                for &r in &stopped {
                    out[r].stopped_at = Some(k);
                }
                (h, rows) = keep_rows(&h, &rows, |r| !stopped.contains(&r));
            }
            if let Some(p) = pending.take() {
                pending = self.settle_beside(p, false, walk!(), hooks, memory);
            }
            if rows.is_empty() {
                return out;
            }
            let t = std::time::Instant::now();
            h = m.run_stage(k, &h);
            hooks.after_stage(k, &h, &rows, t.elapsed());
            for &r in &rows {
                out[r].stages_run = k + 1;
            }
            if let Some(mem) = memory.filter(|m| m.spec.stage == k) {
                // A later cache waits for the beside cache's answers: the first cache in stage
                // order that is sure answers, as planned.
                if let Some(p) = pending.take() {
                    self.settle_beside(p, true, walk!(), hooks, memory);
                    if rows.is_empty() {
                        return out;
                    }
                }
                let t = std::time::Instant::now();
                let k_all = mem.keys(&h);
                let asking: Vec<usize> = (0..rows.len()).filter(|&i| out[rows[i]].hit.is_none()).collect();
                let answers: Vec<CacheAnswer> = mem
                    .answer_rows(&select_rows(&k_all, &asking, rows.len()))
                    .into_iter()
                    .map(|a| match a {
                        Some((probs, class, confidence)) => (probs, Some((class, confidence))),
                        None => (Vec::new(), None),
                    })
                    .collect();
                // Charged to the samples that asked, like a learned cache's time.
                let ms = t.elapsed().as_secs_f64() * 1e3 / asking.len().max(1) as f64;
                for (i, &r) in rows.iter().enumerate() {
                    keys[r] = Some(k_all.get(i as i64));
                }
                let answered = Answered {
                    cache: None,
                    stage: k,
                    asking: &asking,
                    ms,
                };
                let leaving = answered.settle(&mut out, &rows, answers, hooks, |_, _| {});
                if !leaving.is_empty() {
                    (h, rows) = keep_rows(&h, &rows, |r| !leaving.contains(&r));
                    if rows.is_empty() {
                        return out;
                    }
                }
            }
            for (c, cache) in self.caches.iter().enumerate().filter(|(_, c)| c.stage == k && consult) {
                // One beside cache at a time: the one before answers first.
                if let Some(p) = pending.take_if(|_| cache.beside.is_some()) {
                    self.settle_beside(p, true, walk!(), hooks, memory);
                    if rows.is_empty() {
                        return out;
                    }
                }
                let asking: Vec<usize> = (0..rows.len()).filter(|&i| out[rows[i]].hit.is_none()).collect();
                if asking.is_empty() {
                    continue;
                }
                if let Some(b) = &cache.beside {
                    let samples: Vec<usize> = asking.iter().map(|&i| rows[i]).collect();
                    // A copy: the thread reads it while this one goes on.
                    let activations = select_rows(&h, &asking, rows.len()).copy();
                    let x = activations.shallow_clone();
                    let answer = b.run(move |head: &mut CacheHead| {
                        let _g = tch::no_grad_guard();
                        let t = std::time::Instant::now();
                        (probs_rows(&head.forward_t(&x, false)), t.elapsed())
                    });
                    pending = Some(Pending {
                        cache: c,
                        stage: k,
                        samples,
                        activations,
                        answer,
                    });
                    continue;
                }
                let t = std::time::Instant::now();
                let mut answers = cache.answer_rows(&select_rows(&h, &asking, rows.len()));
                let ms = t.elapsed().as_secs_f64() * 1e3 / asking.len() as f64;
                let mut asking = asking;
                // A sample this cache is sure of leaves once the beside cache before it has missed
                // it: the first cache in stage order that is sure answers, as planned.
                if let Some(p) = pending.take_if(|_| answers.iter().any(|a| a.1.is_some())) {
                    let samples: Vec<usize> = asking.iter().map(|&i| rows[i]).collect();
                    self.settle_beside(p, true, walk!(), hooks, memory);
                    (asking, answers) = samples
                        .into_iter()
                        .zip(answers)
                        .filter(|(r, _)| out[*r].hit.is_none())
                        .filter_map(|(r, a)| Some((rows.iter().position(|&x| x == r)?, a)))
                        .unzip();
                }
                let answered = Answered {
                    cache: Some(c),
                    stage: k,
                    asking: &asking,
                    ms,
                };
                let leaving = answered.settle(&mut out, &rows, answers, hooks, remembering(memory, &mut keys));
                if !leaving.is_empty() {
                    (h, rows) = keep_rows(&h, &rows, |r| !leaving.contains(&r));
                }
                if rows.is_empty() {
                    return out;
                }
            }
        }
        if let Some(p) = pending.take() {
            self.settle_beside(p, true, walk!(), hooks, memory);
            if rows.is_empty() {
                return out;
            }
        }
        let logits = h.to_kind(Kind::Float);
        for (i, &r) in rows.iter().enumerate() {
            let z = logits.get(i as i64);
            if let (Some(mem), Some(key)) = (memory, keys[r].take()) {
                mem.remember(&key, probs_row(&z));
            }
            out[r].logits = Some(z);
        }
        out
    }
}

/// What a learned cache's hit on sample `r` leaves in the memory cache: its answer, for its
/// repeats, where the plan says so.
fn remembering<'a>(memory: Option<&'a MemoryCache>, keys: &'a mut [Option<Tensor>]) -> impl FnMut(usize, &[f32]) + 'a {
    let remember = memory.filter(|m| m.spec.remember_cache_hits);
    move |r, probs| {
        if let (Some(mem), Some(key)) = (remember, keys[r].take()) {
            mem.remember(&key, probs.to_vec());
        }
    }
}

/// A beside cache's answers still being computed, for `samples` (walk inputs).
struct Pending {
    cache: usize,
    stage: usize,
    samples: Vec<usize>,
    activations: Tensor,
    /// Softmax rows and the thread's time; disconnected if the thread failed.
    answer: Receiver<(Vec<Vec<f32>>, std::time::Duration)>,
}

/// The walk's per-sample state that a beside cache's answers change.
struct Walk<'a> {
    out: &'a mut Vec<Walked>,
    rows: &'a mut Vec<usize>,
    h: &'a mut Tensor,
    keys: &'a mut Vec<Option<Tensor>>,
}

impl EarlyExit {
    /// Settles a beside cache's answers like an inline cache's (waiting for them when `wait`):
    /// the samples it answers leave the walk unless hooks keep them. Returns `p` when it is still
    /// running and `wait` is false. A failed thread answers nothing: the base model does.
    fn settle_beside(
        &self,
        p: Pending,
        wait: bool,
        w: &mut Walk,
        hooks: &mut impl Hooks,
        memory: Option<&MemoryCache>,
    ) -> Option<Pending> {
        let got = if wait {
            p.answer.recv().ok()
        } else {
            match p.answer.try_recv() {
                Ok(a) => Some(a),
                Err(TryRecvError::Empty) => return Some(p),
                Err(TryRecvError::Disconnected) => None,
            }
        };
        let Some((probs, took)) = got else {
            eprintln!(
                "cache '{}': its thread failed; the base model answers",
                self.caches[p.cache].layer
            );
            return None;
        };
        let cache = &self.caches[p.cache];
        let mut asking = Vec::new();
        let mut answers = Vec::new();
        for (&r, a) in p.samples.iter().zip(cache.decide_rows(probs, &p.activations)) {
            // A sample a hook stopped meanwhile is no longer asked.
            if let Some(i) = w.rows.iter().position(|&x| x == r) {
                asking.push(i);
                answers.push(a);
            }
        }
        let answered = Answered {
            cache: Some(p.cache),
            stage: p.stage,
            asking: &asking,
            ms: took.as_secs_f64() * 1e3 / p.samples.len().max(1) as f64,
        };
        let leaving = answered.settle(w.out, w.rows, answers, hooks, remembering(memory, w.keys));
        if !leaving.is_empty() {
            (*w.h, *w.rows) = keep_rows(w.h, w.rows, |r| !leaving.contains(&r));
        }
        None
    }
}

/// One cache's answers for the samples that asked it (positions in `rows`).
struct Answered<'a> {
    /// Position of the cache in the plan; None: the memory cache.
    cache: Option<usize>,
    stage: usize,
    asking: &'a [usize],
    /// Each asking sample's share of the cache's time.
    ms: f64,
}

impl Answered<'_> {
    /// Records each asking sample's time and hit (`on_hit` sees a hit's sample and softmax row
    /// first); returns the samples that leave the batch.
    fn settle(
        &self,
        out: &mut [Walked],
        rows: &[usize],
        answers: Vec<CacheAnswer>,
        hooks: &mut impl Hooks,
        mut on_hit: impl FnMut(usize, &[f32]),
    ) -> Vec<usize> {
        let mut leaving = Vec::new();
        for (&i, (probs, hit)) in self.asking.iter().zip(answers) {
            let r = rows[i];
            out[r].cache_ms += self.ms;
            if let Some((class, confidence)) = hit {
                on_hit(r, &probs);
                let hit = out[r].hit.insert(Hit {
                    cache: self.cache,
                    stage: self.stage,
                    probs,
                    class,
                    confidence,
                });
                if !hooks.run_on_after_hit(r, hit) {
                    leaving.push(r);
                }
            }
        }
        leaving
    }
}

/// What a walk did with one sample.
#[derive(Debug, Default)]
pub struct Walked {
    /// The first cache that answered it.
    pub hit: Option<Hit>,
    /// The base model's logits `[classes]`, when it ran to the end.
    pub logits: Option<Tensor>,
    /// One past the index of the last stage it ran (stages before `from` count as run).
    pub stages_run: usize,
    /// A hook stopped it before this stage.
    pub stopped_at: Option<usize>,
    /// Its share of the time spent in cache models, in milliseconds.
    pub cache_ms: f64,
}

#[derive(Debug, Clone)]
pub struct Hit {
    /// Position of the cache in the plan; None: the memory cache.
    pub cache: Option<usize>,
    pub stage: usize,
    /// The softmax row it answered with.
    pub probs: Vec<f32>,
    pub class: usize,
    pub confidence: f32,
}

impl Walked {
    /// The sample's answer: its first hit, else the base model's (a stopped sample has none;
    /// asking is a bug).
    pub fn answer(&self) -> Answer {
        match &self.hit {
            Some(h) => Answer {
                class: h.class,
                confidence: h.confidence,
                exit: h.cache.map_or(Exit::Memory, Exit::Cache),
            },
            None => {
                let logits = self.logits.as_ref().expect("a sample that ran to the end");
                let (class, confidence) = crate::outcomes::top1(&probs_row(logits));
                Answer {
                    class,
                    confidence,
                    exit: Exit::Base,
                }
            }
        }
    }

    /// The softmax row answered with: the hit's, or the base model's.
    pub fn probs(&self) -> Option<Vec<f32>> {
        match &self.hit {
            Some(h) => Some(h.probs.clone()),
            None => self.logits.as_ref().map(probs_row),
        }
    }
}

/// What serving, learning and sampling add to the one early-exit loop (`EarlyExit::walk`).
/// Sample indices are positions in the walk's input batch; `rows` lists the samples still
/// running, in the order of the activation's rows.
pub trait Hooks {
    /// False: run the stages only, no cache answers (completing a sample).
    fn consult_caches(&self) -> bool {
        true
    }
    /// Before stage `k`: the samples among `rows` to stop here (a cancelled request).
    fn stop_before(&mut self, _k: usize, _rows: &[usize]) -> Vec<usize> {
        Vec::new()
    }
    /// After stage `k` ran on `rows`, with its output `h` and how long it took.
    fn after_stage(&mut self, _k: usize, _h: &Tensor, _rows: &[usize], _took: std::time::Duration) {}
    /// A cache answered `sample` with `hit`: true keeps it running to the end (it is not
    /// consulted again), false lets it leave the batch.
    fn run_on_after_hit(&mut self, _sample: usize, _hit: &Hit) -> bool {
        false
    }
}

/// Plain early exit.
pub struct NoHooks;

impl Hooks for NoHooks {}

/// Rows `asking` of `h` (which has `n` rows), without a copy when that is all of them.
fn select_rows(h: &Tensor, asking: &[usize], n: usize) -> Tensor {
    if asking.len() == n {
        return h.shallow_clone();
    }
    h.index_select(
        0,
        &Tensor::from_slice(&asking.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(h.device()),
    )
}

/// The memory cache `spec` describes, for `model`'s activations at its stage.
pub fn memory_cache(model: &BaseModel, spec: &crate::memory::MemorySpec) -> Result<MemoryCache> {
    let Some(info) = model.stages().get(spec.stage).filter(|i| i.name == spec.layer) else {
        bail!(
            "plan memory cache at stage {} ('{}') does not exist",
            spec.stage,
            spec.layer
        );
    };
    let s = &info.output_shape;
    MemoryCache::new(spec.clone(), [s[1], s[2], s[3]], model.spec().num_classes)
}

/// The rows of `h` (and their sample indices) whose sample passes `keep`.
fn keep_rows(h: &Tensor, rows: &[usize], keep: impl Fn(usize) -> bool) -> (Tensor, Vec<usize>) {
    let (idx, kept): (Vec<i64>, Vec<usize>) = rows
        .iter()
        .enumerate()
        .filter(|(_, &r)| keep(r))
        .map(|(i, &r)| (i as i64, r))
        .unzip();
    if kept.is_empty() {
        return (h.narrow(0, 0, 0), kept);
    }
    (h.index_select(0, &Tensor::from_slice(&idx).to_device(h.device())), kept)
}

pub fn probs_row(logits: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(logits.softmax(-1, Kind::Float).flatten(0, -1)).expect("f32 row")
}

/// Softmax of each row of `logits` `[n, classes]`.
pub fn probs_rows(logits: &Tensor) -> Vec<Vec<f32>> {
    let p = logits.softmax(-1, Kind::Float);
    (0..p.size()[0])
        .map(|i| Vec::<f32>::try_from(p.get(i)).expect("f32 row"))
        .collect()
}
