//! Desired state: what the control plane wants one agent to run, signed with its online key and
//! numbered by generation (design section 2).
//!
//! The body travels as postcard bytes inside [`SignedDesiredState`], so the signature covers
//! exactly what was sent; an agent verifies it before it decodes a byte of the body.

use serde::{Deserialize, Serialize};

use crate::manifest::Device;
use crate::message::SignedDesiredState;
use crate::release::{Digest, SignedRelease};
use crate::signing::{PublicKey, SecretKey};
use crate::trust::SignedTrustRoot;

/// Domain of desired-state signatures.
pub const DOMAIN: &str = "tern desired state v1";

/// What one agent should run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// The agent it is for; another agent refuses it.
    pub agent_id: String,
    /// Equal to the envelope's generation.
    pub generation: u64,
    /// The control plane's clock when it signed (unix ms): releases that expired by this time
    /// are refused even if the agent's clock is behind.
    pub issued_ms: u64,
    /// The trust root the control plane pins; agents accept it only as design section 2 says.
    pub trust_root: Option<SignedTrustRoot>,
    /// Every pipeline the agent should serve; any other it runs is removed.
    pub pipelines: Vec<DesiredPipeline>,
}

/// One pipeline revision an agent should serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredPipeline {
    pub name: String,
    pub revision: u64,
    pub steps: Vec<DesiredStep>,
    /// The rollout of this revision is complete: its releases become the agent's version
    /// floors. Until then the agent runs it on trial, and a rollback to the revision before it
    /// stays possible.
    pub committed: bool,
    /// Run once through the loaded revision before it takes traffic; a failure refuses it.
    pub warmup: Option<Warmup>,
    /// The model step whose inputs and outputs the agent streams distributions of, for drift.
    pub monitored_step: Option<String>,
    /// An A/B experiment: each request runs the pipeline with one of these models in place of
    /// step `step`'s, by weight. Empty: no experiment.
    pub variants: Vec<DesiredVariant>,
}

/// One arm of an A/B experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredVariant {
    /// `name:version`, as telemetry and the answers' `X-Tern-Variant` name it.
    pub name: String,
    /// Percent of requests.
    pub weight: u32,
    /// The model step it replaces.
    pub step: String,
    pub release: SignedRelease,
}

impl DesiredPipeline {
    /// Every release the pipeline needs: its steps', then its variants'.
    pub fn releases(&self) -> impl Iterator<Item = &SignedRelease> {
        self.steps
            .iter()
            .map(|s| &s.release)
            .chain(self.variants.iter().map(|v| &v.release))
    }

    /// Whether `other` runs the same thing: the same revision number *and* the same steps,
    /// releases (their signed statements), warm-up, watched step and experiment. Only the
    /// committed flag and the set of signatures on a release may differ; anything else, under
    /// the same revision number, is a new run that must be checked like any new revision.
    pub fn same_run(&self, other: &DesiredPipeline) -> bool {
        let same_step = |a: &DesiredStep, b: &DesiredStep| {
            a.name == b.name
                && a.release.signed == b.release.signed
                && a.config == b.config
                && a.timeout_ms == b.timeout_ms
                && a.memory_mib == b.memory_mib
                && a.device == b.device
        };
        let same_variant = |a: &DesiredVariant, b: &DesiredVariant| {
            a.name == b.name
                && a.weight == b.weight
                && a.step == b.step
                && a.release.signed == b.release.signed
        };
        self.name == other.name
            && self.revision == other.revision
            && self.warmup == other.warmup
            && self.monitored_step == other.monitored_step
            && self.steps.len() == other.steps.len()
            && self
                .steps
                .iter()
                .zip(&other.steps)
                .all(|(a, b)| same_step(a, b))
            && self.variants.len() == other.variants.len()
            && (self.variants.iter())
                .zip(&other.variants)
                .all(|(a, b)| same_variant(a, b))
    }
}

/// A warm-up sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Warmup {
    Blob {
        media_type: String,
        data: Vec<u8>,
    },
    /// Open Inference Protocol request tensors, as JSON text.
    Tensors(String),
}

/// One step of a desired pipeline, with the release it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredStep {
    pub name: String,
    /// The release (with its publishers' signatures); its kind says plugin or model.
    pub release: SignedRelease,
    /// Plugin configuration, as JSON text.
    pub config: String,
    pub timeout_ms: Option<u64>,
    pub memory_mib: Option<u64>,
    /// Where a model runs.
    pub device: Device,
}

/// Why a desired state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredStateError {
    #[error("desired state generation {generation} is not signed by the control plane's key")]
    BadSignature { generation: u64 },
    #[error("desired state generation {generation} is malformed: {reason}")]
    Malformed { generation: u64, reason: String },
    #[error("desired state generation {generation} is for agent {for_agent}, not this one")]
    WrongAgent { generation: u64, for_agent: String },
    #[error(
        "desired state generation {offered} is older than generation {applied}, already applied (replay?)"
    )]
    Replay { offered: u64, applied: u64 },
    #[error(
        "desired state generation {generation} differs from the generation {generation} already applied (one generation, one content)"
    )]
    Equivocation { generation: u64 },
}

impl DesiredState {
    /// A digest of everything but the signing time: two states of one generation must have the
    /// same content (the control plane re-signs the current one when an agent reconnects).
    pub fn content_digest(&self) -> Digest {
        let unsigned = DesiredState {
            issued_ms: 0,
            ..self.clone()
        };
        Digest::of(&postcard::to_stdvec(&unsigned).unwrap_or_default())
    }

    /// Encodes and signs.
    pub fn sign(&self, key: &SecretKey) -> SignedDesiredState {
        let body = postcard::to_stdvec(self).unwrap_or_default();
        let signature = key.sign(DOMAIN, &with_generation(self.generation, &body));
        SignedDesiredState {
            generation: self.generation,
            body,
            signature,
        }
    }
}

fn with_generation(generation: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = generation.to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

impl SignedDesiredState {
    /// Verifies the signature, then decodes the body and checks that it is for `agent_id` and
    /// not older than `applied` (the generation last applied).
    pub fn open(
        &self,
        key: &PublicKey,
        agent_id: &str,
        applied: u64,
    ) -> Result<DesiredState, DesiredStateError> {
        let generation = self.generation;
        if !key.verifies(
            DOMAIN,
            &with_generation(generation, &self.body),
            &self.signature,
        ) {
            return Err(DesiredStateError::BadSignature { generation });
        }
        if generation < applied {
            return Err(DesiredStateError::Replay {
                offered: generation,
                applied,
            });
        }
        let state: DesiredState =
            postcard::from_bytes(&self.body).map_err(|e| DesiredStateError::Malformed {
                generation,
                reason: e.to_string(),
            })?;
        if state.generation != generation {
            return Err(DesiredStateError::Malformed {
                generation,
                reason: format!("the body says generation {}", state.generation),
            });
        }
        if state.agent_id != agent_id {
            return Err(DesiredStateError::WrongAgent {
                generation,
                for_agent: state.agent_id,
            });
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(generation: u64) -> DesiredState {
        DesiredState {
            agent_id: "a1".into(),
            generation,
            issued_ms: 7,
            trust_root: None,
            pipelines: vec![],
        }
    }

    #[test]
    fn opens_only_what_the_online_key_signed_for_this_agent() {
        let key = SecretKey::generate();
        let signed = state(5).sign(&key);
        assert_eq!(signed.open(&key.public(), "a1", 4), Ok(state(5)));
        assert_eq!(
            signed.open(&key.public(), "a1", 5),
            Ok(state(5)),
            "same again"
        );
        assert!(matches!(
            signed.open(&SecretKey::generate().public(), "a1", 0),
            Err(DesiredStateError::BadSignature { .. })
        ));
        assert!(matches!(
            signed.open(&key.public(), "a2", 0),
            Err(DesiredStateError::WrongAgent { .. })
        ));
        let mut tampered = signed.clone();
        tampered.generation = 9;
        assert!(matches!(
            tampered.open(&key.public(), "a1", 0),
            Err(DesiredStateError::BadSignature { .. })
        ));
    }

    #[test]
    fn rejects_replayed_older_generation() {
        let key = SecretKey::generate();
        let old = state(3).sign(&key);
        assert_eq!(
            old.open(&key.public(), "a1", 4),
            Err(DesiredStateError::Replay {
                offered: 3,
                applied: 4
            })
        );
    }
}
