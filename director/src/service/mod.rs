//! The Director's rules. [`DirectorService`] owns the database, the Image repository
//! catalog, the online keys and the policy; the HTTP handlers only parse, call it and map
//! its errors. Underneath, each concern is a module of functions over a SQLite connection,
//! every multi-row write in one transaction:
//!
//! - [`tokens`]: operator API tokens and provisioning tokens;
//! - [`credentials`]: how a vehicle proves who it is (bound certificate, bearer credential);
//! - [`vehicles`]: registration, the inventory, ECU replacement;
//! - [`assignments`]: who installs what, and where it stands;
//! - [`metadata`]: the Director root and per-vehicle signed metadata;
//! - [`rotation`]: new root versions (root and online keys), the keys the server signs
//!   with, and warnings before the root expires;
//! - [`manifests`]: vehicle version manifests, checked and recorded;
//! - [`events`]: the append-only event log;
//! - [`cache`]: the credential rows and current timestamps polling vehicles ask for.

pub mod assignments;
pub mod cache;
pub mod campaigns;
pub mod credentials;
pub mod events;
mod fault;
pub mod groups;
pub mod manifests;
pub mod metadata;
pub mod overview;
pub mod page;
pub mod plan;
pub mod refusals;
pub mod retention;
pub mod root_watch;
pub mod rotation;
pub mod time;
pub mod tokens;
pub mod vehicles;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::sql::Conn;
use chrono::Duration;
use uptane_core::ids::{EcuSerial, Vin};
use uptane_core::metadata::TargetFile;

use self::plan::Name;
use uptane_core::time::{UtcTime, format_expires};

pub use self::assignments::{
    AssignRequest, Assigned, AssignmentEcu, AssignmentStatus, assignments, cancel_assignment,
};
pub use self::credentials::{CredentialInfo, IssuedCredential, VehicleAuth};
pub use self::events::{Event, EventFilter, NewEvent, events, follow_position, recent_events};
pub use self::manifests::{ManifestOutcome, process_manifest};
pub use self::metadata::{refresh_vehicle_metadata, root, store_initial_root, vehicle_file};
pub use self::page::Page;
use self::refusals::RefusalLog;
pub use self::rotation::{KeyRing, RootStatus};
pub use self::tokens::{
    ProvisioningLimits, TokenInfo, TokenSelector, check_api_token, create_api_token,
    create_provisioning_token, list_api_tokens, list_provisioning_tokens, revoke_api_tokens,
    revoke_provisioning_tokens,
};
pub use self::vehicles::{
    EcuRecord, EcuReplacement, NewEcu, NewVehicle, VehicleRecord, VehicleSummary, register_vehicle,
    register_with_provisioning, replace_ecu, vehicle, vehicles,
};
use crate::catalog::ImageCatalog;
use crate::db::{Db, DbError};
use crate::error::DirectorError;
use service_runtime::clock::now;

/// Timing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime of per-vehicle targets, snapshot and timestamp (short: a day by default).
    pub metadata_lifetime: Duration,
    /// Re-sign when the metadata would expire within this.
    pub renew_margin: Duration,
    /// How far in the future a report's time may be.
    pub clock_skew: Duration,
    /// How long a vehicle credential works (vehicles renew theirs before it ends).
    pub vehicle_credential_lifetime: Duration,
    /// How far ahead of the root's expiry operators are warned.
    pub root_expiry_warning: Duration,
    /// Refusals of the same kind within this are recorded once, then as one summary
    /// (`refusals.rs`).
    pub refusal_window: Duration,
    /// Events, manifests and report nonces older than this are removed (`retention.rs`).
    pub retention: Duration,
    /// Vehicles whose credential row and current timestamp are kept in memory (`cache.rs`);
    /// 0 turns the cache off.
    pub cached_vehicles: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            metadata_lifetime: Duration::days(1),
            renew_margin: Duration::hours(1),
            clock_skew: Duration::minutes(5),
            vehicle_credential_lifetime: Duration::days(365),
            root_expiry_warning: rotation::DEFAULT_EXPIRY_WARNING,
            refusal_window: Duration::seconds(60),
            retention: Duration::days(365),
            cached_vehicles: 200_000,
        }
    }
}

fn bad(message: impl Into<String>) -> DirectorError {
    DirectorError::BadRequest(message.into())
}

/// Forgets the cached rows of the vehicles a campaign change touched.
fn forget_vins(vins: &Vec<String>, cache: &cache::VehicleCache) {
    for vin in vins {
        if let Ok(vin) = vin.parse::<Vin>() {
            cache.forget(&vin);
        }
    }
}

/// Whether `table` has a row whose `column` is `value` (both names are literals of this module).
fn exists(conn: &Conn, table: &str, column: &str, value: &str) -> Result<bool, DbError> {
    conn.value(
        &format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE {column} = ?1)"),
        crate::params![value],
    )
}

fn now_text(now: UtcTime) -> String {
    format_expires(&now)
}

/// Who made a request, as the event log names them (`operator:LABEL`, `vehicle:VIN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// The name in the event log.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The Director: its storage, the Image repository it reads, its online keys, its policy.
/// Cheap to clone: one reference count (every request clones it, and one count shared by
/// both cores costs less than one per part).
#[derive(Debug, Clone)]
pub struct DirectorService {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    db: Db,
    keys: Arc<KeyRing>,
    catalog: ImageCatalog,
    policy: Policy,
    refusals: Arc<RefusalLog>,
    cache: Arc<cache::VehicleCache>,
    roots: root_watch::RootWatch,
    counters: crate::metrics::Counters,
}

impl DirectorService {
    /// A service over `db`.
    pub fn new(
        db: Db,
        keys: KeyRing,
        catalog: ImageCatalog,
        policy: Policy,
    ) -> Result<Self, DirectorError> {
        // The cache is right only while every write to what it holds goes through this
        // process (`cache.rs`): on PostgreSQL, replicas write beside it, so it is off there.
        let cached_vehicles = match db.engine() {
            crate::sql::Engine::Sqlite => policy.cached_vehicles,
            crate::sql::Engine::Postgres => 0,
        };
        Ok(Self {
            inner: Arc::new(Shared {
                roots: root_watch::RootWatch::open(db.path())?,
                db,
                keys: Arc::new(keys),
                catalog,
                refusals: Arc::new(RefusalLog::new(policy.refusal_window)),
                cache: Arc::new(cache::VehicleCache::new(cached_vehicles)),
                counters: crate::metrics::Counters::default(),
                policy,
            }),
        })
    }

    /// Runs `f` on the writer; once it committed, `after` tells the cache what changed. Both
    /// run in a task of their own, so a request dropped while its write was queued (a client
    /// that hung up) still leaves the cache right.
    async fn write_then<T, F, A>(&self, f: F, after: A) -> Result<T, DirectorError>
    where
        F: FnOnce(&mut Conn) -> Result<T, DirectorError> + Send + 'static,
        A: FnOnce(&T, &cache::VehicleCache) + Send + 'static,
        T: Send + 'static,
    {
        let (db, cache) = (self.inner.db.clone(), Arc::clone(&self.inner.cache));
        tokio::spawn(async move {
            let written = db.call(f).await;
            match &written {
                Ok(value) => after(value, &cache),
                // A call that failed part way may have kept some of its writes (a campaign
                // tick keeps the campaigns it stepped before the database failed): what they
                // changed is not known here, so nothing cached is trusted. Refusals (bad
                // input, a refused manifest) change no vehicle and keep the cache.
                // (`Busy` is contention before anything was written, and is left out: under
                // load it would empty the whole cache at every failed write.)
                Err(DirectorError::Db(_) | DirectorError::Internal(_)) => {
                    cache.forget_all();
                }
                Err(_) => {}
            }
            written
        })
        .await
        .map_err(|e| DirectorError::Internal(format!("a database write task failed: {e}")))?
    }

    /// [`DirectorService::write_then`], forgetting vehicle `vin`.
    async fn write_vehicle<T, F>(&self, vin: &Vin, f: F) -> Result<T, DirectorError>
    where
        F: FnOnce(&mut Conn) -> Result<T, DirectorError> + Send + 'static,
        T: Send + 'static,
    {
        let vin = vin.clone();
        self.write_then(f, move |_, cache| cache.forget(&vin)).await
    }

    /// [`DirectorService::write_then`], forgetting every vehicle.
    async fn write_all<T, F>(&self, f: F) -> Result<T, DirectorError>
    where
        F: FnOnce(&mut Conn) -> Result<T, DirectorError> + Send + 'static,
        T: Send + 'static,
    {
        self.write_then(f, |_, cache| cache.forget_all()).await
    }

    /// Whether the database answers.
    pub async fn healthy(&self) -> Result<(), DirectorError> {
        self.inner
            .db
            .read(|conn| conn.value::<i64>("SELECT 1", &[]))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "health check: the database does not answer");
                DirectorError::Busy("the database does not answer".into())
            })?;
        Ok(())
    }

    /// Requests answered from the vehicle cache, and those that were not.
    pub fn cache_hits_and_misses(&self) -> (u64, u64) {
        self.inner.cache.hits_and_misses()
    }

    /// Removes events, manifests and report nonces older than the retention period, each
    /// batch a write of its own (so the writer serves manifests between them), then records
    /// what it removed. Nothing the vehicle cache holds changes.
    pub async fn sweep_retention(&self) -> Result<retention::Swept, DirectorError> {
        let period = self.inner.policy.retention;
        let now = now();
        let mut sweep = retention::Sweep::default();
        while let Some(kind) = sweep.next() {
            let n = self
                .write_then(
                    move |conn| retention::sweep_batch(conn, kind, period, now),
                    |_, _| {},
                )
                .await?;
            sweep.removed(n);
        }
        let swept = sweep.swept();
        self.write_then(
            move |conn| retention::record(conn, swept, period, now),
            |_, _| {},
        )
        .await?;
        Ok(swept)
    }

    /// Records the summaries of a refusal window that ended (`refusals.rs`); with `all`, every
    /// refusal counted so far (at shutdown). The server calls this every window.
    pub async fn flush_refusals(&self, all: bool) -> Result<(), DirectorError> {
        let log = Arc::clone(&self.inner.refusals);
        self.inner
            .db
            .call(move |conn| {
                let summaries = if all {
                    log.drain(now())
                } else {
                    log.due(now())
                };
                for summary in &summaries {
                    summary.record(conn)?;
                }
                Ok(())
            })
            .await
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The operator a bearer token belongs to; a missing or invalid one is refused and
    /// logged as a security event.
    pub async fn operator(&self, token: Option<String>) -> Result<Actor, DirectorError> {
        let log = Arc::clone(&self.inner.refusals);
        let label = self
            .inner
            .db
            .call(move |conn| {
                let checked = token
                    .ok_or_else(|| DirectorError::Unauthorized("missing bearer token".into()))
                    .and_then(|token| check_api_token(conn, &token, now()));
                if let Err(e) = &checked {
                    let detail = e.to_string();
                    NewEvent::security("unauthorized_api_call", "unknown", &detail)
                        .record_refusal(conn, now(), &log)?;
                }
                checked
            })
            .await?;
        Ok(Actor(format!("operator:{label}")))
    }

    /// Logs an operator request refused as `kind` (a client error only), then returns the
    /// error.
    pub async fn refused(
        &self,
        kind: &'static str,
        actor: &Actor,
        error: DirectorError,
    ) -> DirectorError {
        if !error.status().is_client_error() {
            return error;
        }
        let (detail, actor) = (error.to_string(), actor.0.clone());
        let logged = self
            .inner
            .db
            .call(move |conn| NewEvent::info(kind, &actor, &detail).record(conn, now()))
            .await;
        match logged {
            Ok(()) => error,
            Err(e) => e,
        }
    }

    /// An operator registers a vehicle; returns its credential.
    pub async fn register_vehicle(
        &self,
        actor: &Actor,
        vehicle: NewVehicle,
    ) -> Result<IssuedCredential, DirectorError> {
        let who = actor.0.clone();
        let lifetime = self.inner.policy.vehicle_credential_lifetime;
        let vin = vehicle.vin.clone();
        let registered = self
            .write_vehicle(&vin, move |conn| {
                register_vehicle(conn, &vehicle, lifetime, &who, now())
            })
            .await;
        match registered {
            Ok(credential) => Ok(credential),
            Err(e) => Err(self.refused("registration_refused", actor, e).await),
        }
    }

    /// A Primary registers its vehicle with a provisioning token, binding the client
    /// certificate it showed (`certificate`); returns its credential.
    pub async fn register_with_provisioning(
        &self,
        token: String,
        vehicle: NewVehicle,
        certificate: Option<service_runtime::tls::Fingerprint>,
    ) -> Result<IssuedCredential, DirectorError> {
        let lifetime = self.inner.policy.vehicle_credential_lifetime;
        let log = Arc::clone(&self.inner.refusals);
        let vin = vehicle.vin.clone();
        self.write_vehicle(&vin, move |conn| {
            register_with_provisioning(conn, &token, &vehicle, certificate, lifetime, now(), &log)
        })
        .await
    }

    /// Checks a provisioning token before the registration it comes with is read: a refusal
    /// spends nothing on the body.
    pub async fn check_provisioning_token(&self, token: String) -> Result<(), DirectorError> {
        let log = Arc::clone(&self.inner.refusals);
        self.inner
            .db
            .call(move |conn| vehicles::check_provisioning_token(conn, &token, now(), &log))
            .await
    }

    /// Registered VINs, in order.
    pub async fn vehicles(
        &self,
        page: Page,
        search: Option<String>,
    ) -> Result<Vec<VehicleSummary>, DirectorError> {
        self.inner
            .db
            .read(move |conn| vehicles(conn, page, search.as_deref()))
            .await
    }

    /// A vehicle's record.
    pub async fn vehicle(&self, vin: Vin) -> Result<VehicleRecord, DirectorError> {
        self.inner.db.read(move |conn| vehicle(conn, &vin)).await
    }

    /// Replaces ECU `old` of `vin`.
    pub async fn replace_ecu(
        &self,
        actor: &Actor,
        vin: Vin,
        old: EcuSerial,
        new: EcuReplacement,
    ) -> Result<(), DirectorError> {
        let actor = actor.0.clone();
        let forget = vin.clone();
        self.write_vehicle(&forget, move |conn| {
            replace_ecu(conn, &vin, &old, &new, &actor, now())
        })
        .await
    }

    /// Assigns an image the Image repository vouches for; returns the entries created and
    /// those it superseded.
    pub async fn assign(
        &self,
        actor: &Actor,
        request: AssignRequest,
    ) -> Result<Assigned, DirectorError> {
        match self.assign_checked(actor, request).await {
            Ok(created) => Ok(created),
            Err(e) => Err(self.refused("assignment_refused", actor, e).await),
        }
    }

    async fn assign_checked(
        &self,
        actor: &Actor,
        request: AssignRequest,
    ) -> Result<Assigned, DirectorError> {
        let info = self
            .inner
            .catalog
            .lookup(&request.image, now())
            .await?
            .ok_or_else(|| {
                DirectorError::NotFound(format!(
                    "the image repository has no image {:?}",
                    request.image
                ))
            })?;
        let actor = actor.0.clone();
        // An assignment may reach many vehicles (and end older entries of others).
        self.write_all(move |conn| assignments::assign(conn, &request, &info, &actor, now()))
            .await
    }

    /// Assignment entries, newest first, optionally of one vehicle.
    pub async fn assignments(
        &self,
        vin: Option<Vin>,
        page: Page,
    ) -> Result<Vec<AssignmentEcu>, DirectorError> {
        self.inner
            .db
            .read(move |conn| assignments(conn, vin.as_ref(), page))
            .await
    }

    /// Cancels an assignment (`assignments::cancel_assignment`).
    pub async fn cancel_assignment(
        &self,
        actor: &Actor,
        correlation_id: String,
    ) -> Result<assignments::CancelOutcome, DirectorError> {
        let actor = actor.0.clone();
        self.write_all(move |conn| cancel_assignment(conn, &correlation_id, &actor, now()))
            .await
    }

    /// The fleet at a glance.
    pub async fn overview(&self) -> Result<overview::Overview, DirectorError> {
        self.inner
            .db
            .read(|conn| overview::overview(conn, now()))
            .await
    }

    /// Creates a vehicle group.
    pub async fn create_group(
        &self,
        actor: &Actor,
        group: groups::NewGroup,
    ) -> Result<groups::GroupDetail, DirectorError> {
        let actor = actor.0.clone();
        self.inner
            .db
            .call(move |conn| groups::create_group(conn, &group, &actor, now()))
            .await
    }

    /// Every group.
    pub async fn groups(&self) -> Result<Vec<groups::GroupInfo>, DirectorError> {
        self.inner.db.read(groups::groups).await
    }

    /// A group and its members now.
    pub async fn group(&self, name: Name) -> Result<groups::GroupDetail, DirectorError> {
        self.inner
            .db
            .read(move |conn| groups::group(conn, &name))
            .await
    }

    /// Adds and removes members of a static group.
    pub async fn change_members(
        &self,
        actor: &Actor,
        name: Name,
        add: Vec<Vin>,
        remove: Vec<Vin>,
    ) -> Result<groups::GroupDetail, DirectorError> {
        let actor = actor.0.clone();
        self.inner
            .db
            .call(move |conn| groups::change_members(conn, &name, &add, &remove, &actor, now()))
            .await
    }

    /// Sets and removes attributes of a vehicle.
    pub async fn set_attributes(
        &self,
        actor: &Actor,
        vin: Vin,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, DirectorError> {
        let actor = actor.0.clone();
        self.inner
            .db
            .call(move |conn| groups::set_attributes(conn, &vin, &changes, &actor, now()))
            .await
    }

    /// What the Image repository says of each of `names` at `now`: its entry, `None` when
    /// it does not list it, or why it could not be asked.
    async fn look_up(
        &self,
        names: impl IntoIterator<Item = String>,
        now: UtcTime,
    ) -> Vec<(String, Result<Option<TargetFile>, DirectorError>)> {
        let mut answers = Vec::new();
        for name in names {
            let answer = self.inner.catalog.lookup(&name, now).await;
            answers.push((name, answer));
        }
        answers
    }

    /// Creates a draft campaign.
    pub async fn create_campaign(
        &self,
        actor: &Actor,
        plan: campaigns::NewCampaign,
    ) -> Result<campaigns::CampaignDetail, DirectorError> {
        campaigns::check_plan(&plan)?;
        let mut images = campaigns::ImageLookups::new();
        for (name, answer) in self.look_up(plan.images.clone(), now()).await {
            images.insert(name, answer?);
        }
        let actor = actor.0.clone();
        self.inner
            .db
            .call(move |conn| campaigns::create(conn, &plan, &images, &actor, now()))
            .await
    }

    /// Every campaign, newest first.
    pub async fn campaigns(&self) -> Result<Vec<campaigns::CampaignDetail>, DirectorError> {
        self.inner.db.read(campaigns::list).await
    }

    /// A campaign and its progress.
    pub async fn campaign(&self, name: Name) -> Result<campaigns::CampaignDetail, DirectorError> {
        self.inner
            .db
            .read(move |conn| campaigns::show(conn, name.as_str()))
            .await
    }

    /// A campaign's vehicles, with their outcomes.
    pub async fn campaign_vehicles(
        &self,
        name: Name,
    ) -> Result<Vec<campaigns::CampaignVehicle>, DirectorError> {
        self.inner
            .db
            .read(move |conn| campaigns::vehicles(conn, name.as_str()))
            .await
    }

    /// Does what an operator asked of a campaign, then drives the running campaigns one step.
    pub async fn campaign_action(
        &self,
        actor: &Actor,
        name: Name,
        action: campaigns::CampaignAction,
        reason: Option<String>,
    ) -> Result<campaigns::CampaignDetail, DirectorError> {
        let actor = actor.0.clone();
        let acting = name.clone();
        self.write_then(
            move |conn| campaigns::act(conn, &acting, action, reason.as_deref(), &actor, now()),
            forget_vins,
        )
        .await?;
        // The action is committed whatever the step finds: a step that fails (the Image
        // repository unreachable) is logged and retried by the next one.
        if let Err(e) = self.campaign_tick().await {
            tracing::warn!(error = %e, "driving campaigns after an operator action");
        }
        self.campaign(name).await
    }

    /// Drives the running campaigns one step now.
    pub async fn campaign_tick(&self) -> Result<Vec<String>, DirectorError> {
        self.campaign_tick_at(now()).await
    }

    /// Drives the running campaigns one step at `now` (`campaigns::tick`); tests inject the
    /// time here. Returns the vehicles whose metadata changed.
    pub async fn campaign_tick_at(&self, now: UtcTime) -> Result<Vec<String>, DirectorError> {
        let names = self.inner.db.read(campaigns::running_images).await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        // A lookup that fails (the Image repository unreachable) leaves its image out: the
        // campaigns delivering it assign nothing this step but still watch their failures.
        let mut images = campaigns::ImageLookups::new();
        for (name, answer) in self.look_up(names, now).await {
            match answer {
                Ok(found) => {
                    images.insert(name, found);
                }
                Err(e) => {
                    tracing::warn!(image = %name, error = %e, "a campaign's image could not be looked up")
                }
            }
        }
        self.write_then(move |conn| campaigns::tick(conn, &images, now), forget_vins)
            .await
    }

    /// Events after `after`, oldest first.
    pub async fn events(
        &self,
        vin: Option<Vin>,
        security_only: bool,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, DirectorError> {
        self.inner
            .db
            .read(move |conn| {
                events(
                    conn,
                    vin.as_ref().map(Vin::as_str),
                    security_only,
                    after,
                    limit,
                )
            })
            .await
    }

    /// Where a new follower of the event log starts: the id to pass as `after`.
    pub async fn follow_position(&self) -> Result<i64, DirectorError> {
        self.inner.db.read(follow_position).await
    }

    /// A page of the newest events, newest first.
    pub async fn recent_events(
        &self,
        filter: EventFilter,
        page: Page,
    ) -> Result<Vec<Event>, DirectorError> {
        self.inner
            .db
            .read(move |conn| recent_events(conn, &filter, page))
            .await
    }

    /// A new provisioning token within `limits`.
    pub async fn create_provisioning_token(
        &self,
        actor: &Actor,
        label: String,
        limits: ProvisioningLimits,
    ) -> Result<String, DirectorError> {
        let actor = actor.0.clone();
        self.inner
            .db
            .call(move |conn| create_provisioning_token(conn, &label, limits, &actor, now()))
            .await
    }

    /// Every provisioning token, newest first.
    pub async fn provisioning_tokens(&self, page: Page) -> Result<Vec<TokenInfo>, DirectorError> {
        self.inner
            .db
            .read(move |conn| list_provisioning_tokens(conn, page))
            .await
    }

    /// Revokes the provisioning tokens labelled `label`.
    pub async fn revoke_provisioning_tokens(
        &self,
        actor: &Actor,
        label: String,
    ) -> Result<usize, DirectorError> {
        let actor = actor.0.clone();
        self.inner
            .db
            .call(move |conn| revoke_provisioning_tokens(conn, &label, &actor, now()))
            .await
    }

    /// The newest root's version and expiry.
    pub async fn root_status(&self) -> Result<RootStatus, DirectorError> {
        let window = self.inner.policy.root_expiry_warning;
        self.inner
            .db
            .read(move |conn| rotation::root_status(conn, window, now()))
            .await
    }

    /// A file of vehicle `vin`'s repository, for that vehicle only.
    pub async fn vehicle_file(
        &self,
        vin: Vin,
        auth: VehicleAuth,
        file: String,
    ) -> Result<bytes::Bytes, DirectorError> {
        // Whether the name is one the vehicle may ask for is said only once it is authorized.
        let role = metadata::stored_role(&file);
        if let Ok(metadata::StoredRole::Timestamp) = role {
            return self.vehicle_timestamp(vin, auth).await;
        }
        let vin = self.authorize(vin, auth).await?.0;
        match role? {
            metadata::StoredRole::Targets => {
                // Serving the targets marks what it contains delivered: a write.
                let (keys, policy) = (Arc::clone(&self.inner.keys), self.inner.policy);
                self.inner
                    .db
                    .call(move |conn| {
                        vehicle_file(conn, &keys, vin.as_str(), &file, &policy, now())
                    })
                    .await
                    .map(bytes::Bytes::from)
            }
            // A root or snapshot (the timestamp went above).
            role => {
                let bytes = self
                    .inner
                    .db
                    .read(move |conn| {
                        Ok::<_, DirectorError>(
                            metadata::stored_file(conn, vin.as_str(), &file)?.bytes,
                        )
                    })
                    .await?;
                if let metadata::StoredRole::Root(version) = role {
                    // A vehicle that has this root is served metadata signed under it (or a
                    // newer one) from now on, even before its publisher's signal arrives.
                    self.inner.roots.served(version);
                }
                Ok(bytes::Bytes::from(bytes))
            }
        }
    }

    /// Vehicle `vin`'s current `timestamp.json`, for that vehicle only. When neither its
    /// credential nor its timestamp is cached (a vehicle's first poll since it left the cache
    /// or the process started), its credential's row and what its timestamp needs are read
    /// in one read transaction, not two: a transaction's locks are system calls, about a
    /// twentieth of the CPU of a request that signs (`docs/BENCHMARKS.md`).
    async fn vehicle_timestamp(
        &self,
        vin: Vin,
        auth: VehicleAuth,
    ) -> Result<bytes::Bytes, DirectorError> {
        let allowed = self.cached_allows(&vin, &auth);
        let cached = self.inner.cache.timestamp(&vin);
        if allowed || cached.is_some() {
            let (vehicle, cached) = if allowed {
                (AuthorizedVehicle(vin), cached)
            } else {
                // Cached without its credential's row: authorized first, then looked up
                // again (forgotten meanwhile if something it derives from changed).
                let vehicle = self.authorize_uncached(vin, auth).await?;
                let cached = self.inner.cache.timestamp(&vehicle.0);
                (vehicle, cached)
            };
            // The newest root, asked only of an authorized request.
            let latest_root = self.inner.roots.latest()?;
            return match self.current(cached, latest_root) {
                Some(bytes) => Ok(bytes),
                None => self.read_timestamp(vehicle).await,
            };
        }
        let ticket = self.inner.cache.ticket();
        let (keys, policy) = (Arc::clone(&self.inner.keys), self.inner.policy);
        let (reading, shown) = (vin.clone(), auth.clone());
        let (row, prepared) = self
            .inner
            .db
            .read(move |conn| {
                let now = now();
                let row = credentials::auth_row(conn, &reading)?;
                if !row.as_ref().is_some_and(|row| row.allows(&shown, now)) {
                    return Ok::<_, DirectorError>((row, None));
                }
                let prepared = prepare_timestamp(conn, &keys, reading.as_str(), &policy, now)?;
                Ok((row, Some(prepared)))
            })
            .await?;
        if let Some(row) = row {
            self.inner.cache.keep_auth(&vin, ticket, row);
        }
        let Some(prepared) = prepared else {
            // Not allowed as read: the writer decides (and records a refusal).
            let vehicle = self.authorize_on_writer(vin, auth).await?;
            self.inner.roots.latest()?;
            return self.read_timestamp(vehicle).await;
        };
        // As `authorize` would have: the row read allowed the request.
        let vehicle = AuthorizedVehicle(vin);
        self.inner.roots.latest()?;
        self.finish_timestamp(vehicle, ticket, prepared).await
    }

    /// The bytes of `cached` if it is current: signed under the newest root and not near
    /// expiry (nothing changed since, or it would have been forgotten).
    fn current(
        &self,
        cached: Option<Arc<cache::CachedTimestamp>>,
        latest_root: Option<u64>,
    ) -> Option<bytes::Bytes> {
        cached
            .filter(|cached| {
                Some(cached.root_version) == latest_root
                    && cached.expires - now() > self.inner.policy.renew_margin
            })
            .map(|cached| cached.bytes.clone())
    }

    /// The vehicle's `timestamp.json` as the database has it: read, or signed and stored
    /// first when not current ([`prepare_timestamp`], [`Self::finish_timestamp`]).
    async fn read_timestamp(
        &self,
        vehicle: AuthorizedVehicle,
    ) -> Result<bytes::Bytes, DirectorError> {
        let ticket = self.inner.cache.ticket();
        let (keys, policy, now) = (Arc::clone(&self.inner.keys), self.inner.policy, now());
        let reading = vehicle.0.clone();
        let prepared = self
            .inner
            .db
            .read(move |conn| prepare_timestamp(conn, &keys, reading.as_str(), &policy, now))
            .await?;
        self.finish_timestamp(vehicle, ticket, prepared).await
    }

    /// Ends a timestamp request: the stored timestamp when it was current; else, when this
    /// request stores the metadata it signed, its timestamp (once committed); else (another
    /// request stored a version first) the one stored. Kept in the cache under `ticket`,
    /// taken before the read that prepared it.
    async fn finish_timestamp(
        &self,
        AuthorizedVehicle(vin): AuthorizedVehicle,
        ticket: cache::Ticket,
        prepared: PreparedTimestamp,
    ) -> Result<bytes::Bytes, DirectorError> {
        let stored = match prepared {
            PreparedTimestamp::Current(stored) => stored,
            PreparedTimestamp::Signed(signed) => match self.store_signed(&vin, signed).await? {
                Some(stored) => stored,
                None => {
                    let reading = vin.clone();
                    self.inner
                        .db
                        .read(move |conn| metadata::stored_timestamp(conn, reading.as_str()))
                        .await?
                }
            },
        };
        let bytes = bytes::Bytes::from(stored.bytes);
        self.inner.cache.keep_timestamp(
            &vin,
            ticket,
            cache::CachedTimestamp {
                bytes: bytes.clone(),
                expires: stored.expires,
                root_version: stored.root_version,
            },
        );
        Ok(bytes)
    }

    /// Stores vehicle `vin`'s metadata that a read connection signed, on the writer, only if
    /// no other request stored a version first and the vehicle's assignments are still what
    /// was signed (an operator's cancel in between); else checks and signs again there.
    /// Returns the timestamp this request stored, if it did (then nothing needs reading
    /// back); `None` when another request's version stands.
    async fn store_signed(
        &self,
        vin: &Vin,
        signed: metadata::SignedMetadata,
    ) -> Result<Option<metadata::StoredTimestamp>, DirectorError> {
        let (keys, policy, now) = (Arc::clone(&self.inner.keys), self.inner.policy, now());
        let vin = vin.clone();
        self.inner
            .db
            .call(move |conn| {
                let active = keys.current(conn)?;
                // Signed under a root that is no longer the newest (a rotation in between), or
                // another request stored a version first: checked and signed again here.
                if signed.root_version == active.root_version
                    && metadata::store_vehicle_metadata(conn, &signed)?
                {
                    return Ok(Some(signed.timestamp()));
                }
                refresh_vehicle_metadata(conn, &active, vin.as_str(), &policy, now)?;
                Ok(None)
            })
            .await
    }

    /// Whether the cached credential row of vehicle `vin` allows `auth` as it stands.
    fn cached_allows(&self, vin: &Vin, auth: &VehicleAuth) -> bool {
        self.inner
            .cache
            .auth(vin)
            .is_some_and(|row| row.allows(auth, now()))
    }

    /// Checks that the request comes from vehicle `vin`, before anything it sends is read:
    /// from the cached credential row or a read connection when nothing needs recording,
    /// else on the writer (refusals are security events; a renewed credential takes over).
    pub async fn authorize(
        &self,
        vin: Vin,
        auth: VehicleAuth,
    ) -> Result<AuthorizedVehicle, DirectorError> {
        if self.cached_allows(&vin, &auth) {
            return Ok(AuthorizedVehicle(vin));
        }
        self.authorize_uncached(vin, auth).await
    }

    /// [`Self::authorize`] past its cache: the credential's row read (and kept), else the
    /// writer.
    async fn authorize_uncached(
        &self,
        vin: Vin,
        auth: VehicleAuth,
    ) -> Result<AuthorizedVehicle, DirectorError> {
        let ticket = self.inner.cache.ticket();
        let reading = vin.clone();
        let row = self
            .inner
            .db
            .read(move |conn| credentials::auth_row(conn, &reading))
            .await?;
        if let Some(row) = row {
            let allowed = row.allows(&auth, now());
            self.inner.cache.keep_auth(&vin, ticket, row);
            if allowed {
                return Ok(AuthorizedVehicle(vin));
            }
        }
        self.authorize_on_writer(vin, auth).await
    }

    /// The writer's part of [`Self::authorize`], for a request its read did not allow.
    async fn authorize_on_writer(
        &self,
        vin: Vin,
        auth: VehicleAuth,
    ) -> Result<AuthorizedVehicle, DirectorError> {
        let log = Arc::clone(&self.inner.refusals);
        let checking = vin.clone();
        // Allowed here, a renewed credential may have taken over: forgotten. A refusal changes
        // no credential, so it forgets nothing (an attacker cannot empty the cache with it).
        self.write_vehicle(&vin, move |conn| {
            credentials::authorize(conn, &checking, &auth, now(), &log)
        })
        .await?;
        Ok(AuthorizedVehicle(vin))
    }

    /// A vehicle version manifest from an authorized vehicle.
    pub async fn manifest(
        &self,
        vehicle: AuthorizedVehicle,
        body: Vec<u8>,
    ) -> Result<ManifestOutcome, DirectorError> {
        // Checked, recorded and counted in a task of its own: a Primary that goes away
        // mid-request cannot leave a manifest recorded but not counted (the records and
        // `/metrics` agree).
        let service = self.clone();
        tokio::spawn(async move { service.check_record_count(vehicle, body).await })
            .await
            .map_err(|e| DirectorError::Internal(format!("a manifest task failed: {e}")))?
    }

    async fn check_record_count(
        &self,
        vehicle: AuthorizedVehicle,
        body: Vec<u8>,
    ) -> Result<ManifestOutcome, DirectorError> {
        let (policy, log, now) = (self.inner.policy, Arc::clone(&self.inner.refusals), now());
        let vin = vehicle.0.clone();
        // The signature checks run on a read connection, in parallel; the writer only
        // records (group commit), re-checking if the vehicle changed in between.
        let checked = self
            .inner
            .db
            .read(move |conn| manifests::check(conn, &vehicle.0, body, &policy, now))
            .await;
        let counters = &self.inner.counters;
        let recorded = match checked {
            Ok(checked) => {
                self.write_then(
                    move |conn| manifests::record(conn, checked, &policy, now, &log),
                    move |outcome: &ManifestOutcome, cache| {
                        if !outcome.installed.is_empty() || !outcome.failed.is_empty() {
                            // Assignments ended: the vehicle's targets change.
                            cache.forget(&vin);
                        }
                    },
                )
                .await
            }
            Err(e) => Err(e),
        };
        match &recorded {
            Ok(outcome) => counters.accepted(&outcome.attack_kinds),
            Err(DirectorError::ManifestRefused(refusal)) => counters.refused(refusal.attack()),
            Err(_) => {}
        }
        recorded
    }

    /// The counters this process keeps (`crate::metrics`).
    pub fn counters(&self) -> &crate::metrics::Counters {
        &self.inner.counters
    }
}

/// What a vehicle's timestamp request needs from its read: the stored timestamp while it is
/// current, or the vehicle's metadata signed anew, to be stored.
#[derive(Debug)]
enum PreparedTimestamp {
    Current(metadata::StoredTimestamp),
    Signed(metadata::SignedMetadata),
}

/// Reads what vehicle `vin`'s timestamp request needs, in the caller's read transaction:
/// checked and signed here on a read connection, so the signing stays off the writer.
fn prepare_timestamp(
    conn: &Conn,
    keys: &KeyRing,
    vin: &str,
    policy: &Policy,
    now: UtcTime,
) -> Result<PreparedTimestamp, DirectorError> {
    let active = keys.current(conn)?;
    Ok(
        match metadata::sign_vehicle_metadata(conn, &active, vin, policy, now)? {
            Some(signed) => PreparedTimestamp::Signed(signed),
            None => PreparedTimestamp::Current(metadata::stored_timestamp(conn, vin)?),
        },
    )
}

/// A vehicle whose credential was checked; only [`DirectorService::authorize`] makes one.
#[derive(Debug)]
pub struct AuthorizedVehicle(Vin);

impl AuthorizedVehicle {
    /// Its VIN.
    pub fn vin(&self) -> &Vin {
        &self.0
    }
}
