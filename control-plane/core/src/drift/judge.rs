//! Drift judging, a pure core: PSI readings, the alerts as they stand, and `now` in; alert
//! changes out.
//!
//! An alert is keyed by (pipeline, scope, feature), so one feature drifting on one agent is one
//! alert however long it lasts. A reading above the threshold starts an alert or updates the
//! firing one; a reading at or below it resolves a firing one. A scope that gives no reading
//! (too few values or requests) neither raises nor resolves, until it has been silent for
//! `silence_ms`; alerts of pipelines no longer judged resolve at once, and resolved alerts are
//! forgotten after [`RESOLVED_KEPT_MS`].

use std::collections::BTreeMap;

use tern_proto::api::PipelineDrift;

use crate::drift::store::{AlertChange, AlertKey, AlertRecord, AlertState};

/// Scope of fleet-wide alerts.
pub const FLEET: &str = "fleet";

/// Resolved alerts are kept this long for `ternctl get alerts`, then forgotten.
pub const RESOLVED_KEPT_MS: u64 = 24 * 3_600_000;

/// One PSI of one feature in one scope (an agent's name, or the fleet).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub pipeline: String,
    pub revision: u64,
    pub scope: String,
    pub feature: String,
    pub psi: f64,
    /// The pipeline's `alertPsi`.
    pub threshold: f64,
}

/// The readings of one pipeline's drift: the fleet's PSI of each feature, then each agent's.
pub fn readings(drift: &PipelineDrift) -> Vec<Reading> {
    let mut out = Vec::new();
    for feature in &drift.features {
        let fleet = feature.psi.map(|psi| (FLEET, psi));
        let agents = feature.agents.iter().map(|(a, psi)| (a.as_str(), *psi));
        for (scope, psi) in fleet.into_iter().chain(agents) {
            out.push(Reading {
                pipeline: drift.pipeline.clone(),
                revision: drift.revision,
                scope: scope.to_owned(),
                feature: feature.feature.clone(),
                psi,
                threshold: drift.alert_psi,
            });
        }
    }
    out
}

/// What a judgement decided: the changes to store, and the alerts that started and resolved
/// (for the log).
#[derive(Debug, Default)]
pub struct Judgement {
    pub changes: Vec<AlertChange>,
    pub fired: Vec<AlertRecord>,
    pub resolved: Vec<AlertRecord>,
}

/// Judges `readings` against `alerts` at `now_ms`; `judged` are the pipelines that were
/// judged this time (monitored, with a baseline).
pub fn judge(
    alerts: Vec<AlertRecord>,
    readings: &[Reading],
    judged: &[String],
    silence_ms: u64,
    now_ms: u64,
) -> Judgement {
    let mut out = Judgement::default();
    let mut current: BTreeMap<AlertKey, AlertRecord> =
        alerts.into_iter().map(|a| (a.key(), a)).collect();
    let mut changed: BTreeMap<AlertKey, AlertRecord> = BTreeMap::new();
    for reading in readings {
        let key = AlertKey::new(&reading.pipeline, &reading.scope, &reading.feature);
        let existing = current.get(&key);
        let firing = reading.psi > reading.threshold;
        let was_firing = existing.is_some_and(|a| a.state == AlertState::Firing);
        let alert = match (firing, existing) {
            (true, Some(alert)) if was_firing => AlertRecord {
                psi: reading.psi,
                revision: reading.revision,
                updated_ms: now_ms,
                ..alert.clone()
            },
            (true, _) => {
                let alert = AlertRecord {
                    pipeline: reading.pipeline.clone(),
                    revision: reading.revision,
                    scope: reading.scope.clone(),
                    feature: reading.feature.clone(),
                    psi: reading.psi,
                    threshold: reading.threshold,
                    state: AlertState::Firing,
                    since_ms: now_ms,
                    updated_ms: now_ms,
                    resolved_ms: None,
                };
                out.fired.push(alert.clone());
                alert
            }
            (false, Some(alert)) if was_firing => {
                let alert = alert.clone().resolve(Some(reading.psi), now_ms);
                out.resolved.push(alert.clone());
                alert
            }
            (false, _) => continue,
        };
        current.insert(key.clone(), alert.clone());
        changed.insert(key, alert);
    }
    for (key, alert) in current {
        let silent = now_ms.saturating_sub(alert.updated_ms) > silence_ms;
        if alert.state == AlertState::Firing && (!judged.contains(&alert.pipeline) || silent) {
            let alert = alert.resolve(None, now_ms);
            out.resolved.push(alert.clone());
            changed.insert(key, alert);
        } else if alert
            .resolved_ms
            .is_some_and(|t| now_ms.saturating_sub(t) > RESOLVED_KEPT_MS)
        {
            changed.remove(&key);
            out.changes.push(AlertChange::Remove(key));
        }
    }
    out.changes
        .extend(changed.into_values().map(AlertChange::Put));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;
    const SILENCE: u64 = 10 * MINUTE;

    fn reading(scope: &str, psi: f64) -> Reading {
        Reading {
            pipeline: "p".into(),
            revision: 1,
            scope: scope.into(),
            feature: "input:x[0]".into(),
            psi,
            threshold: 0.2,
        }
    }

    fn judged() -> Vec<String> {
        vec!["p".into()]
    }

    /// The alerts after applying `judgement` to `alerts`.
    fn apply(alerts: Vec<AlertRecord>, judgement: &Judgement) -> Vec<AlertRecord> {
        let mut map: BTreeMap<AlertKey, AlertRecord> =
            alerts.into_iter().map(|a| (a.key(), a)).collect();
        for change in &judgement.changes {
            match change {
                AlertChange::Put(a) => {
                    map.insert(a.key(), a.clone());
                }
                AlertChange::Remove(k) => {
                    map.remove(k);
                }
            }
        }
        map.into_values().collect()
    }

    #[test]
    fn an_alert_fires_once_updates_while_drifting_and_resolves_when_back() {
        let j = judge(vec![], &[reading("fleet", 0.5)], &judged(), SILENCE, 0);
        assert_eq!(j.fired.len(), 1);
        let alerts = apply(vec![], &j);
        assert_eq!(alerts[0].state, AlertState::Firing);

        let j = judge(alerts, &[reading("fleet", 0.7)], &judged(), SILENCE, MINUTE);
        assert!(j.fired.is_empty(), "the same alert, not a new one");
        let alerts = apply(vec![], &j);
        assert_eq!(
            (alerts[0].psi, alerts[0].since_ms, alerts[0].updated_ms),
            (0.7, 0, MINUTE)
        );

        let j = judge(
            alerts,
            &[reading("fleet", 0.1)],
            &judged(),
            SILENCE,
            2 * MINUTE,
        );
        assert_eq!(j.resolved.len(), 1);
        let alerts = apply(vec![], &j);
        assert_eq!(alerts[0].state, AlertState::Resolved);
        assert_eq!(alerts[0].resolved_ms, Some(2 * MINUTE));
        assert_eq!(alerts[0].psi, 0.1);
    }

    #[test]
    fn a_reading_under_the_threshold_without_an_alert_changes_nothing() {
        let j = judge(vec![], &[reading("edge-1", 0.2)], &judged(), SILENCE, 0);
        assert!(j.changes.is_empty(), "at the threshold is not above it");
    }

    #[test]
    fn a_silent_scope_keeps_its_alert_until_the_silence_is_long() {
        let alerts = apply(
            vec![],
            &judge(vec![], &[reading("edge-1", 0.9)], &judged(), SILENCE, 0),
        );
        let quiet = judge(alerts.clone(), &[], &judged(), SILENCE, SILENCE);
        assert!(
            quiet.changes.is_empty(),
            "silent for exactly the limit: kept"
        );
        let gone = judge(alerts, &[], &judged(), SILENCE, SILENCE + 1);
        assert_eq!(gone.resolved.len(), 1);
        assert_eq!(apply(vec![], &gone)[0].state, AlertState::Resolved);
    }

    #[test]
    fn alerts_of_pipelines_no_longer_judged_resolve_and_old_resolved_ones_go() {
        let alerts = apply(
            vec![],
            &judge(vec![], &[reading("fleet", 0.9)], &judged(), SILENCE, 0),
        );
        let unjudged = judge(alerts, &[], &[], SILENCE, MINUTE);
        let alerts = apply(vec![], &unjudged);
        assert_eq!(alerts[0].state, AlertState::Resolved);
        let kept = judge(alerts.clone(), &[], &[], SILENCE, MINUTE + RESOLVED_KEPT_MS);
        assert!(kept.changes.is_empty());
        let forgotten = judge(
            alerts.clone(),
            &[],
            &[],
            SILENCE,
            MINUTE + RESOLVED_KEPT_MS + 1,
        );
        assert_eq!(forgotten.changes, [AlertChange::Remove(alerts[0].key())]);
    }

    #[test]
    fn a_resolved_alert_that_drifts_again_fires_anew() {
        let alerts = apply(
            vec![],
            &judge(vec![], &[reading("fleet", 0.9)], &judged(), SILENCE, 0),
        );
        let alerts = apply(
            alerts.clone(),
            &judge(alerts, &[reading("fleet", 0.0)], &judged(), SILENCE, MINUTE),
        );
        let again = judge(
            alerts,
            &[reading("fleet", 0.8)],
            &judged(),
            SILENCE,
            2 * MINUTE,
        );
        assert_eq!(again.fired.len(), 1);
        let alert = &apply(vec![], &again)[0];
        assert_eq!((alert.since_ms, alert.resolved_ms), (2 * MINUTE, None));
    }

    #[test]
    fn scopes_and_features_are_separate_alerts() {
        let mut other = reading("edge-1", 0.9);
        other.feature = "input:x[1]".into();
        let j = judge(
            vec![],
            &[reading("fleet", 0.9), reading("edge-1", 0.9), other],
            &judged(),
            SILENCE,
            0,
        );
        assert_eq!(j.fired.len(), 3);
    }
}
