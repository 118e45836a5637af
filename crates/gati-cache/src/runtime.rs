//! Serving a plan in-process: the base model runs stage by stage, and after each planned stage
//! its cache decides whether to answer; on a hit the remaining stages are skipped.

use crate::decision::{decide, Decision};
use crate::heads::CacheHead;
use crate::plan::Plan;
use anyhow::{bail, Result};
use gati_core::BaseModel;
use std::path::Path;
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
}

impl RuntimeCache {
    /// The softmax row this cache answers with on `activation`, and `Some((class, probability))`
    /// on a hit: its own, or the plan's cache's on a class it leaves to the plan.
    pub fn answer(&self, activation: &Tensor) -> (Vec<f32>, Option<(usize, f32)>) {
        let _g = tch::no_grad_guard();
        let row = probs_row(&self.head.forward_t(activation, false));
        if !self.enabled {
            return (row, None);
        }
        let plan_row = || probs_row(&self.plan_head.forward_t(activation, false));
        match decide(&self.decision, &row, &self.plan_decision, plan_row) {
            (Some(prow), hit) => (prow, hit),
            (None, hit) => (row, hit),
        }
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
            });
        }
        if !caches.is_empty() {
            gati_core::weights::load_subset(&mut vs, weights)?;
            gati_core::weights::load_subset(&mut plan_vs, weights)?;
        }
        Ok(Self {
            model,
            caches,
            vs,
            plan_vs,
        })
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
        tch::no_grad(|| {
            for (_, ours, theirs, _) in &plan {
                for ((_, d), (_, t)) in ours.iter().zip(theirs) {
                    d.shallow_clone().copy_(t);
                }
            }
        });
        for (c, _, _, s) in &plan {
            self.caches[*c].decision = s.decision.clone();
            self.caches[*c].enabled = s.enabled;
        }
        Ok(plan.len())
    }

    /// The cache model and decision at `stage`, if the plan has one there.
    pub fn cache_at(&self, stage: usize) -> Option<&RuntimeCache> {
        self.caches.iter().find(|c| c.stage == stage)
    }

    /// Softmax of a cache's logits on one activation, and its decision.
    pub fn consult(c: &RuntimeCache, activation: &Tensor) -> (Vec<f32>, Option<(usize, f32)>) {
        c.answer(activation)
    }

    /// Answers one normalised input `[1, C, H, W]`, exiting at the first confident cache.
    pub fn infer(&self, x: &Tensor) -> Answer {
        let _g = tch::no_grad_guard();
        let mut h = x.shallow_clone();
        let mut next = 0;
        for k in 0..self.model.num_stages() {
            h = self.model.run_stage(k, &h);
            while next < self.caches.len() && self.caches[next].stage == k {
                if let (_, Some((class, confidence))) = self.caches[next].answer(&h) {
                    return Answer {
                        class,
                        confidence,
                        exit: Exit::Cache(next),
                    };
                }
                next += 1;
            }
        }
        let row = probs_row(&h);
        let (class, confidence) = crate::outcomes::top1(&row);
        Answer {
            class,
            confidence,
            exit: Exit::Base,
        }
    }
}

pub fn probs_row(logits: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(logits.softmax(-1, Kind::Float).flatten(0, -1)).expect("f32 row")
}
