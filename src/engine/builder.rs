//! Building an [`Engine`]: a model, a policy and the decision signer, then what differs from
//! the defaults; and [`Telemetry`], where the engine tells what it counts.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::feedback::{DecisionIds, Fold, Recorder};
use super::policy_admin::PolicyAdmin;
use super::{DEFAULT_DECISION_TTL_MS, Engine};
use crate::domain::books::Books;
use crate::domain::classifier::ComplexityModel;
use crate::domain::decision::Signer;
use crate::domain::learning::RoutingTable;
use crate::domain::policy::Policy;
use crate::domain::routing::{Limits, Router};
use crate::store::{MemoryStore, OutageBuffer, StateStore};

/// Builds an [`Engine`]: a model, a policy and the decision signer, then what differs from the
/// defaults (request limits, decision TTL, learning on, the in-memory store).
pub struct EngineBuilder {
    model: Arc<ComplexityModel>,
    policy: Arc<Policy>,
    signer: Signer,
    limits: Limits,
    ttl_ms: u64,
    learning: bool,
    store: Option<(Arc<dyn StateStore>, OutageBuffer)>,
    telemetry: Option<Arc<dyn Telemetry>>,
    deployment: Option<String>,
}

/// What the engine tells as it works: every count the books send (through
/// [`crate::domain::books::Observer`]) and each accepted feedback's lag. The metrics face
/// implements it; an engine built without one tells nobody.
pub trait Telemetry: crate::domain::books::Observer {
    /// Seconds from a decision to its feedback.
    fn feedback_lag(&self, seconds: f64);
}

/// Telemetry that records nothing.
struct Silent;

impl crate::domain::books::Observer for Silent {
    fn counted(&self, _: crate::domain::books::Counted<'_>) {}
}

impl Telemetry for Silent {
    fn feedback_lag(&self, _: f64) {}
}

impl EngineBuilder {
    /// Request limits (default: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How long a decision id accepts feedback (default 24 hours).
    pub fn decision_ttl_ms(mut self, ttl_ms: u64) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }

    /// Whether outcomes move the plans (default on; off for a frozen replay).
    pub fn learning(mut self, on: bool) -> Self {
        self.learning = on;
        self
    }

    /// The shared store and this replica's outage buffer (default: in memory, no spill file).
    pub fn store(mut self, store: Arc<dyn StateStore>, buffer: OutageBuffer) -> Self {
        self.store = Some((store, buffer));
        self
    }

    /// The shared store's deployment id the signer's key is derived from: re-asserted at each
    /// refresh, so a store that lost its data gets the same id back (default: none).
    pub fn deployment(mut self, id: String) -> Self {
        self.deployment = Some(id);
        self
    }

    /// Where the engine's counts and feedback lags go (default: nowhere).
    pub fn telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// The engine, with no evidence yet (a store's state is read by its first sync).
    pub fn build(self) -> Engine {
        let Self {
            model,
            policy,
            signer,
            limits,
            ttl_ms,
            learning,
            store,
            telemetry,
            deployment,
        } = self;
        let telemetry = telemetry.unwrap_or_else(|| Arc::new(Silent));
        let (store, buffer) = store.unwrap_or_else(|| {
            let memory: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
            (memory, OutageBuffer::in_memory(0))
        });
        let table = RoutingTable::build(policy, &model.calibration, &HashMap::new(), None);
        let policy_admin = PolicyAdmin::new(store.clone(), signer.policy_keys());
        let fold = Fold::new(store.clone(), model.calibration.clone(), learning);
        let recorder = Recorder::new(store.clone(), buffer);
        let observer: Arc<dyn crate::domain::books::Observer> = telemetry.clone();
        let books = Books::new(observer);
        // Route accounting a previous run could not send: sent first by the next flush.
        let carried: Vec<crate::domain::books::Batch> = recorder.buffer().load_carry_over();
        if !carried.is_empty() {
            tracing::info!(
                batches = carried.len(),
                "route accounting carried over from the previous run"
            );
        }
        let carry_over_pending = AtomicBool::new(!carried.is_empty());
        books.resume(carried);
        Engine {
            router: Router::new(model, table, limits),
            ids: DecisionIds::new(signer, ttl_ms),
            recorder,
            fold,
            store,
            books,
            telemetry,
            policy_admin,
            carry_over_pending,
            last_checkpoint_ms: std::sync::atomic::AtomicU64::new(0),
            names: Mutex::default(),
            deployment,
        }
    }
}

impl Engine {
    /// Starts building an engine.
    pub fn builder(
        model: Arc<ComplexityModel>,
        policy: Arc<Policy>,
        signer: Signer,
    ) -> EngineBuilder {
        EngineBuilder {
            model,
            policy,
            signer,
            limits: Limits::default(),
            ttl_ms: DEFAULT_DECISION_TTL_MS,
            learning: true,
            store: None,
            telemetry: None,
            deployment: None,
        }
    }
}
