//! Lost unsynced writes and injected I/O errors in the control plane's stores: the registry on
//! a backend that drops what was not synced when the power goes and fails operations on
//! command (`backend::lossy`), driven through random enrollments, presence updates (lazy),
//! revocations, flushes, crashes and failures. After every crash the registry opens again on
//! what survived: everything acknowledged as durable is there, nothing appears that was never
//! attempted, what failed is there wholly or not at all, and once the faults stop it works.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use tern_control_plane::backend::lossy::{LossyBackend, Strike};
use tern_control_plane::registry::{NewAgent, Registry};

#[derive(Debug, Clone)]
enum Step {
    Enroll,
    Seen(usize),
    Revoke(usize),
    Flush,
    Crash,
    FailAfter(u64, Strike),
    Heal,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Enroll),
        4 => (0usize..8).prop_map(Step::Seen),
        2 => (0usize..8).prop_map(Step::Revoke),
        2 => Just(Step::Flush),
        2 => Just(Step::Crash),
        1 => (0u64..6, prop::bool::ANY).prop_map(|(n, at_sync)| Step::FailAfter(
            n,
            if at_sync { Strike::AtSync } else { Strike::BeforeWrite }
        )),
        1 => Just(Step::Heal),
    ]
}

/// What the test knows was acknowledged, and what it may or may not find.
#[derive(Debug, Default)]
struct Model {
    /// Names whose enrollment returned Ok (a durable commit).
    enrolled: BTreeSet<String>,
    /// Names whose enrollment failed: there, or not.
    maybe_enrolled: BTreeSet<String>,
    revoked: BTreeSet<String>,
    maybe_revoked: BTreeSet<String>,
    /// Presence acknowledged (lazily): name → the newest time.
    seen: BTreeMap<String, u64>,
    /// Presence made durable by a later sync.
    seen_durable: BTreeMap<String, u64>,
    /// Every presence time attempted: name → the newest.
    seen_attempted: BTreeMap<String, u64>,
}

impl Model {
    /// A durable commit or a flush succeeded: everything before it is durable.
    fn synced(&mut self) {
        for (name, at) in &self.seen {
            self.seen_durable.insert(name.clone(), *at);
        }
    }

    fn names(&self) -> Vec<String> {
        self.enrolled
            .iter()
            .chain(&self.maybe_enrolled)
            .cloned()
            .collect()
    }
}

fn new_agent(name: &str) -> NewAgent {
    let digest = tern_proto::sha256(name.as_bytes());
    NewAgent {
        id: format!("id-{name}"),
        name: name.to_owned(),
        labels: BTreeMap::new(),
        cert_sha256: digest,
        cert_expires_ms: u64::MAX,
        key_sha256: digest,
        address: None,
    }
}

/// Checks what the registry holds after a crash against what was acknowledged.
fn check(registry: &Registry, model: &mut Model) -> Result<(), TestCaseError> {
    let agents = registry
        .agents()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let names: BTreeSet<String> = agents.iter().map(|a| a.name.clone()).collect();
    for name in &model.enrolled {
        prop_assert!(names.contains(name), "{name} was acknowledged and is gone");
    }
    for agent in &agents {
        let name = &agent.name;
        prop_assert!(
            model.enrolled.contains(name) || model.maybe_enrolled.contains(name),
            "{name} appeared, never attempted"
        );
        if model.revoked.contains(name) {
            prop_assert!(agent.revoked_ms.is_some(), "{name}'s revocation is gone");
        }
        if agent.revoked_ms.is_some() {
            prop_assert!(
                model.revoked.contains(name) || model.maybe_revoked.contains(name),
                "{name} revoked, never attempted"
            );
        }
        let durable = model.seen_durable.get(name).copied().unwrap_or(0);
        let attempted = model.seen_attempted.get(name).copied().unwrap_or(0);
        prop_assert!(
            agent.last_seen_ms >= durable && agent.last_seen_ms <= attempted,
            "{name}: last seen {} outside [{durable}, {attempted}]",
            agent.last_seen_ms
        );
    }
    // What survived is now what the model starts from: the lost lazy writes are gone.
    model.enrolled.extend(
        names
            .iter()
            .filter(|n| model.maybe_enrolled.contains(*n))
            .cloned(),
    );
    model.maybe_enrolled.retain(|n| names.contains(n));
    // The same for revocations that failed: those that survived are durable now.
    let revoked: BTreeSet<String> = agents
        .iter()
        .filter(|a| a.revoked_ms.is_some())
        .map(|a| a.name.clone())
        .collect();
    model.revoked.extend(
        model
            .maybe_revoked
            .iter()
            .filter(|n| revoked.contains(*n))
            .cloned()
            .collect::<Vec<_>>(),
    );
    model.maybe_revoked.clear();
    model.seen = agents
        .iter()
        .map(|a| (a.name.clone(), a.last_seen_ms))
        .collect();
    model.seen_durable = model.seen.clone();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn what_was_acknowledged_survives_crashes_and_injected_errors(
        steps in prop::collection::vec(step(), 1..48),
    ) {
        let backend = Arc::new(LossyBackend::new());
        let mut registry = Registry::new(backend.clone());
        let mut model = Model::default();
        let mut now = 1u64;
        let mut next = 0;
        for step in steps {
            now += 1;
            match step {
                Step::Enroll => {
                    let name = format!("agent-{next}");
                    next += 1;
                    model.seen_attempted.insert(name.clone(), now);
                    let Ok((token, _)) =
                        registry.create_token(BTreeMap::new(), 60_000, [0; 32], now)
                    else {
                        continue;
                    };
                    match registry.redeem(&token, new_agent(&name), now) {
                        Ok(_) => {
                            model.seen.insert(name.clone(), now);
                            model.enrolled.insert(name);
                            model.synced();
                        }
                        Err(_) => {
                            model.maybe_enrolled.insert(name);
                        }
                    }
                }
                Step::Seen(i) => {
                    let names = model.names();
                    let Some(name) = names.get(i % names.len().max(1)) else { continue };
                    model.seen_attempted.insert(name.clone(), now);
                    let changed = registry.update_agent(&format!("id-{name}"), |r| {
                        r.last_seen_ms = now;
                    });
                    if matches!(changed, Ok(Some(_))) {
                        model.seen.insert(name.clone(), now);
                    }
                }
                Step::Revoke(i) => {
                    let names = model.names();
                    let Some(name) = names.get(i % names.len().max(1)).cloned() else { continue };
                    match registry.revoke(&name, now) {
                        Ok(_) => {
                            model.revoked.insert(name);
                            model.synced();
                        }
                        Err(_) => {
                            model.maybe_revoked.insert(name);
                        }
                    }
                }
                Step::Flush => {
                    if registry.flush().is_ok() {
                        model.synced();
                    }
                }
                Step::Crash => {
                    backend.crash();
                    registry = Registry::new(backend.clone());
                    check(&registry, &mut model)?;
                }
                Step::FailAfter(n, strike) => backend.fail_after(n, strike),
                Step::Heal => backend.heal(),
            }
        }
        // The faults stop and the power goes once more: what was acknowledged is there, and
        // the registry enrolls again.
        backend.heal();
        backend.crash();
        registry = Registry::new(backend.clone());
        check(&registry, &mut model)?;
        let (token, _) = registry
            .create_token(BTreeMap::new(), 60_000, [0; 32], now)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        registry
            .redeem(&token, new_agent("after"), now)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(registry.agent_by_name("after").ok().flatten().is_some());
    }
}
