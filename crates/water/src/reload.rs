//! Replacing a role's module while it serves.
//!
//! Each role ([`crate::Dialer`], [`crate::Listener`], [`crate::Relay`],
//! [`crate::Forwarder`]) reads its module from one [`Shared`] when a
//! connection starts, and a [`Reloader`] swaps what that returns. A
//! connection keeps the module (instance, config, limits) it started with
//! to its end: the swap only changes which module the next one gets.
//!
//! The connection slots (`Config::max_connections`) stay those of the
//! module the role was made with, counted under the current module's
//! maximum: connections that started on an old module still hold theirs,
//! so a reload never lets the total past the cap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::TransportArgs;
use crate::error::Error;
use crate::policy::admission::{Admission, Kind, Slot};
use crate::watm::{Role, Watm};

/// What a connection starts with: the module, and what its guest's config
/// read gives (the module's config merged with the role's arguments, or
/// `None` for the config as it is).
#[derive(Clone)]
pub(crate) struct Current {
    pub watm: Watm,
    pub pulled: Option<Arc<[u8]>>,
}

/// One role's module, replaceable.
pub(crate) struct Shared {
    /// The roles a new module must have.
    roles: &'static [Role],
    /// The role's arguments, merged into every module's config.
    args: RwLock<TransportArgs>,
    current: RwLock<Current>,
    /// The slots of the module the role was made with.
    admission: Arc<Admission>,
    reloads: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("watm", &self.current().watm)
            .field("reloads", &self.reloads.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// `pull_config`'s bytes for `watm` with `args`.
pub(crate) fn pulled_config(watm: &Watm, args: &TransportArgs) -> Result<Option<Arc<[u8]>>, Error> {
    args.merged_config(watm.inner.config.transport_config.as_deref())
}

impl Shared {
    /// `watm` for a role that needs one of `roles` (checked by the caller).
    pub(crate) fn new(watm: &Watm, roles: &'static [Role]) -> Arc<Shared> {
        Arc::new(Shared {
            roles,
            args: RwLock::default(),
            current: RwLock::new(Current { watm: watm.clone(), pulled: None }),
            admission: watm.inner.admission.clone(),
            reloads: AtomicU64::new(0),
        })
    }

    /// The module for a connection starting now.
    pub(crate) fn current(&self) -> Current {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the role's arguments: every later connection's config read
    /// gives the module's config followed by them.
    pub(crate) fn set_args(&self, args: TransportArgs) -> Result<(), Error> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        current.pulled = pulled_config(&current.watm, &args)?;
        *self.args.write().unwrap_or_else(|e| e.into_inner()) = args;
        Ok(())
    }

    /// Takes a connection slot (see the module docs); a refusal is
    /// counted in `watm`'s metrics.
    pub(crate) fn admit(&self, watm: &Watm, kind: Kind) -> Result<Slot, Error> {
        let config = &watm.inner.config;
        Slot::take(&self.admission, config.max_connections, kind)
            .inspect_err(|_| config.metrics().refused(crate::metrics::Role::of(self.roles[0])))
    }

    /// An accept loop's wait before it takes one more connection: a permit
    /// of its `setups` limit, then room in the slots (see
    /// `Admission::room`: not while too many are still being shed) under
    /// the current module's maximum.
    pub(crate) async fn accept_room(
        &self,
        setups: &Arc<tokio::sync::Semaphore>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError> {
        let permit = setups.clone().acquire_owned().await;
        let max = self.current.read().unwrap_or_else(|e| e.into_inner()).watm.inner.config.max_connections;
        self.admission.room(max).await;
        permit
    }

    fn replace(&self, watm: &Watm) -> Result<(), Error> {
        let replaced = self.swap(watm);
        watm.inner.config.metrics().reloaded(&replaced);
        replaced
    }

    fn swap(&self, watm: &Watm) -> Result<(), Error> {
        if !self.roles.iter().any(|&r| watm.supports(r)) {
            watm.require(self.roles[0])?;
        }
        let args = self.args.read().unwrap_or_else(|e| e.into_inner());
        let pulled = pulled_config(watm, &args)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Current { watm: watm.clone(), pulled };
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Replaces the module of a running role: the handle of
/// [`crate::Dialer::reloader`], [`crate::Listener::reloader`],
/// [`crate::Relay::reloader`] and [`crate::Forwarder::reloader`].
/// Cheap to clone; every clone replaces the same role's module.
///
/// ```no_run
/// # async fn f(forwarder: water::Forwarder, path: &str) -> Result<(), water::Error> {
/// let reloader = forwarder.reloader();
/// // Compile and dry-run the new module first, off the accept path...
/// let next = water::Watm::from_file(path, water::Config::default())?;
/// next.check_init().await?;
/// // ...then swap: new connections use it, open ones finish on theirs.
/// reloader.replace(&next)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    pub(crate) fn new(shared: &Arc<Shared>) -> Reloader {
        Reloader { shared: shared.clone() }
    }

    /// Makes `watm` the module of every connection that starts from now
    /// on, atomically; connections already started finish on theirs.
    ///
    /// Errors, with nothing replaced: [`Error::RoleNotSupported`] if `watm`
    /// lacks the role's export; [`Error::ConfigNotKeyValue`] if the role
    /// has arguments and `watm`'s config is not `key=value`.
    pub fn replace(&self, watm: &Watm) -> Result<(), Error> {
        self.shared.replace(watm)
    }

    /// The module new connections get now.
    pub fn current(&self) -> Watm {
        self.shared.current().watm
    }

    /// How many replacements succeeded.
    pub fn reloads(&self) -> u64 {
        self.shared.reloads.load(Ordering::Relaxed)
    }
}
