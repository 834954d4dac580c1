//! Delegation search (TUF 1.0.31 §5.6.7, Uptane §5.4.4.7): which targets role lists a
//! target path, walking delegations in the order the standard fixes.

use std::collections::BTreeSet;
use std::marker::PhantomData;

use crate::metadata::TargetFile;

use super::TrustedSet;

/// A target entry found by a delegation search: signed by a role whose every delegation on
/// the path from top-level targets covers this target path.
pub struct TrustedTarget<Repo> {
    path: String,
    info: TargetFile,
    role: String,
    _repo: PhantomData<fn() -> Repo>,
}

impl<Repo> Clone for TrustedTarget<Repo> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            info: self.info.clone(),
            role: self.role.clone(),
            _repo: PhantomData,
        }
    }
}

impl<Repo> PartialEq for TrustedTarget<Repo> {
    fn eq(&self, other: &Self) -> bool {
        (&self.path, &self.info, &self.role) == (&other.path, &other.info, &other.role)
    }
}

impl<Repo> std::fmt::Debug for TrustedTarget<Repo> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedTarget")
            .field("path", &self.path)
            .field("role", &self.role)
            .field("info", &self.info)
            .finish()
    }
}

impl<Repo> TrustedTarget<Repo> {
    /// The target path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Length, hashes and custom fields.
    pub fn info(&self) -> &TargetFile {
        &self.info
    }

    /// The role that signed it.
    pub fn role(&self) -> &str {
        &self.role
    }
}

/// What a [`TargetSearch`] needs next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SearchStep<Repo> {
    /// Apply targets role `role` through `delegator` to the trusted set, then step again.
    Load {
        /// The role to load.
        role: String,
        /// The delegator whose keys must verify it.
        delegator: String,
    },
    /// The target, from the first role in search order that lists it.
    Found(TrustedTarget<Repo>),
    /// No role on a permitted path lists it.
    NotFound,
}

/// Pre-order depth-first search of the delegation graph for one target path (TUF §5.6.7,
/// Uptane §5.4.4.7): roles in listed order, a terminating role ends the search after its
/// subtree, each role visited once (cycles), at most `max_delegations` roles.
#[derive(Debug, Clone)]
pub(crate) struct TargetSearch {
    path: String,
    hardware_id: Option<String>,
    stack: Vec<(String, String)>,
    visited: BTreeSet<String>,
}

impl TargetSearch {
    /// A search for `path` (for an ECU of `hardware_id`, when given), starting at top-level
    /// targets.
    pub(crate) fn new(path: &str, hardware_id: Option<String>) -> Self {
        Self {
            path: path.to_string(),
            hardware_id,
            stack: vec![("targets".to_string(), "root".to_string())],
            visited: BTreeSet::new(),
        }
    }

    /// The next step, given what `set` holds now.
    pub(crate) fn step<Repo>(&mut self, set: &TrustedSet<Repo>) -> SearchStep<Repo> {
        loop {
            if self.visited.len() > set.limits.max_delegations {
                return SearchStep::NotFound;
            }
            let Some((role, delegator)) = self.stack.last().cloned() else {
                return SearchStep::NotFound;
            };
            if self.visited.contains(&role) {
                self.stack.pop();
                continue;
            }
            let Some(targets) = set.role_via(&role, &delegator) else {
                return SearchStep::Load { role, delegator };
            };
            self.stack.pop();
            if let Some(info) = targets.targets.get(&self.path) {
                return SearchStep::Found(TrustedTarget {
                    path: self.path.clone(),
                    info: info.clone(),
                    role,
                    _repo: PhantomData,
                });
            }
            self.visited.insert(role.clone());
            let mut children = Vec::new();
            for delegation in targets.roles_for_target(&self.path) {
                // A delegation restricted to hardware ids covers no other ECU's images
                // (checked by the Image repository at upload, and here by every ECU).
                let for_other_hardware = match (&delegation.hardware_ids, &self.hardware_id) {
                    (Some(listed), Some(ours)) => !listed.contains(ours),
                    _ => false,
                };
                if for_other_hardware {
                    // Not followed, but a terminating delegation still ends the search: it
                    // was meant to keep later roles from answering for these paths.
                    if delegation.terminating {
                        self.stack.clear();
                        break;
                    }
                    continue;
                }
                children.push((delegation.name.clone(), role.clone()));
                if delegation.terminating {
                    self.stack.clear();
                    break;
                }
            }
            self.stack.extend(children.into_iter().rev());
        }
    }
}
