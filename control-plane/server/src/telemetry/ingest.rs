//! The telemetry streams of agents and the writer: each stream's batches are bounded, checked
//! against what the agent was given and queued; the writer stores them in groups and
//! acknowledges each only once its group is durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tern_proto::MAX_FRAME_LEN;
use tern_proto::io::{read_frame, write_frame};
use tern_proto::message::TelemetryAck;
use tern_proto::telemetry::{Histogram, TelemetryBatch};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{Ingest, Outcome, Writer};
use crate::state::Shared;

/// Batches stored in one atomic write, at most.
const GROUP: usize = 2_048;
/// How often old buckets are downsampled.
const COMPACT_INTERVAL: Duration = Duration::from_secs(60);

/// Bounds on what one batch may carry (an agent's text ends up in storage and on terminals).
const MAX_NAME: usize = 128;
const MAX_PIPELINES: usize = 64;
const MAX_STEPS: usize = 64;
const MAX_ENTRIES: usize = 64;
const MAX_FEATURES: usize = 1024;
const MAX_GPUS: usize = 16;

fn clean(text: &mut String) {
    if text.len() > MAX_NAME || text.chars().any(char::is_control) {
        *text = text
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_NAME)
            .collect();
    }
}

/// Bounds a map keyed by names from an agent: at most [`MAX_ENTRIES`], names cleaned.
fn clean_keys<V>(counts: &mut BTreeMap<String, V>) {
    if counts.len() > MAX_ENTRIES
        || counts
            .keys()
            .any(|k| k.len() > MAX_NAME || k.chars().any(char::is_control))
    {
        *counts = std::mem::take(counts)
            .into_iter()
            .take(MAX_ENTRIES)
            .map(|(mut k, v)| {
                clean(&mut k);
                (k, v)
            })
            .collect();
    }
}

/// Bounds a batch from an agent: names, list lengths, map sizes.
fn sanitize(batch: &mut TelemetryBatch) {
    batch.host.gpus.truncate(MAX_GPUS);
    batch
        .host
        .gpus
        .iter_mut()
        .for_each(|g| clean(&mut g.adapter));
    if !batch.host.cpu_percent.is_finite() {
        batch.host.cpu_percent = 0.0;
    }
    batch.host.cpu_percent = batch.host.cpu_percent.clamp(0.0, 100.0);
    batch.pipelines.truncate(MAX_PIPELINES);
    for p in &mut batch.pipelines {
        clean(&mut p.pipeline);
        if let Some(v) = &mut p.variant {
            clean(v);
        }
        clean_keys(&mut p.errors);
        p.latency_us.normalize();
        p.queue_us.normalize();
        p.steps.truncate(MAX_STEPS);
        for s in &mut p.steps {
            s.latency_us.normalize();
            s.observations.values_mut().for_each(Histogram::normalize);
            clean(&mut s.step);
            clean(&mut s.device);
            clean_keys(&mut s.errors);
            clean_keys(&mut s.counters);
            clean_keys(&mut s.observations);
        }
        p.features.truncate(MAX_FEATURES);
        for f in &mut p.features {
            clean(&mut f.feature);
            f.normalize();
        }
    }
}

/// Serves one agent's telemetry stream until it ends: batches in, acknowledgements out.
pub(crate) async fn receive(
    shared: &Shared,
    agent: &str,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let (ack_tx, mut acks) = mpsc::unbounded_channel::<Outcome>();
    let failed = Arc::new(AtomicBool::new(false));
    let acker = tokio::spawn(async move {
        while let Some(first) = acks.recv().await {
            // Acknowledgements are cumulative: only the newest matters.
            let mut outcome = first;
            while let Ok(next) = acks.try_recv() {
                outcome = match (outcome, next) {
                    (Outcome::Stored(a), Outcome::Stored(b)) => Outcome::Stored(a.max(b)),
                    _ => Outcome::Failed,
                };
            }
            let Outcome::Stored(up_to) = outcome else {
                let _ = send.reset(1u32.into());
                return;
            };
            if write_frame(&mut send, &TelemetryAck { up_to }, 64)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut last = 0u64;
    // What the agent was given, read once for the stream (again when a batch names more).
    let mut given = crate::deploy::desired::Seen::default();
    loop {
        let mut batch = match read_frame::<_, TelemetryBatch>(&mut recv, MAX_FRAME_LEN).await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "telemetry stream ended");
                break;
            }
        };
        if batch.seq <= last {
            warn!(
                agent,
                seq = batch.seq,
                last,
                "telemetry out of order; closing the stream"
            );
            break;
        }
        last = batch.seq;
        sanitize(&mut batch);
        let foreign =
            match shared
                .desired
                .keep_given(agent, &mut given, &mut batch.pipelines, |p| {
                    (p.pipeline.as_str(), p.revision)
                }) {
                Ok(foreign) => foreign,
                Err(e) => {
                    // Not taken: the agent sends it again on a new stream.
                    warn!(agent, error = %e, "cannot check a telemetry batch; closing the stream");
                    break;
                }
            };
        if foreign > 0 {
            debug!(
                agent,
                foreign, "telemetry about revisions the agent was never given: dropped"
            );
            (shared.telemetry.dropped_foreign).fetch_add(foreign as u64, Ordering::Relaxed);
        }
        let ingest = Ingest {
            agent: agent.to_owned(),
            batch,
            ack: ack_tx.clone(),
            failed: failed.clone(),
        };
        if failed.load(Ordering::Relaxed) {
            break;
        }
        if shared.telemetry.queue.send(ingest).await.is_err() {
            break;
        }
    }
    drop(ack_tx);
    // Acknowledgements of what was queued still go out if the stream is open.
    let _ = tokio::time::timeout(Duration::from_secs(5), acker).await;
}

/// Stores queued batches in groups until `shutdown`, acknowledging each group once it is
/// durable; downsamples old buckets every minute.
pub(crate) async fn run_writer(
    shared: Arc<Shared>,
    Writer(mut queue): Writer,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut compaction = tokio::time::interval(COMPACT_INTERVAL);
    compaction.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            first = queue.recv() => match first {
                Some(first) => first,
                None => return,
            },
            _ = compaction.tick() => {
                // Once for the fleet: by the holder of the work lease, fenced by its epoch.
                let Some(term) = shared.leadership.term() else {
                    continue;
                };
                let now = tern_clock::unix_millis_now();
                match tokio::task::spawn_blocking(move || term.series.compact(now)).await {
                    Ok(Ok(n)) if n > 0 => debug!(buckets = n, "telemetry downsampled"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "telemetry compaction failed"),
                    Err(e) => warn!(error = %e, "telemetry compaction task failed"),
                }
                continue;
            }
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
        };
        let mut group = vec![first];
        while group.len() < GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        group.retain(|i| !i.failed.load(Ordering::Relaxed));
        if group.is_empty() {
            continue;
        }
        // Kept outside the storage task, so that a failure of any kind reaches the streams.
        let streams: Vec<_> = group
            .iter()
            .map(|i| (i.ack.clone(), i.failed.clone()))
            .collect();
        let fail = |streams: &[(mpsc::UnboundedSender<Outcome>, Arc<AtomicBool>)]| {
            for (ack, failed) in streams {
                failed.store(true, Ordering::Relaxed);
                let _ = ack.send(Outcome::Failed);
            }
        };
        let store = shared.telemetry.store.clone();
        let now = tern_clock::unix_millis_now();
        let result = tokio::task::spawn_blocking(move || {
            let items: Vec<(&str, &TelemetryBatch)> =
                group.iter().map(|i| (i.agent.as_str(), &i.batch)).collect();
            // Stored, then durable, on the one blocking task: nothing is acknowledged before.
            let outcome = store.ingest(&items, now).and_then(|outcome| {
                store.flush()?;
                Ok(outcome)
            });
            drop(items);
            (outcome, group)
        })
        .await;
        let (outcome, group) = match result {
            Ok((Ok((outcome, stored)), group)) => ((outcome, stored), group),
            Ok((Err(e), _)) => {
                // Nothing is acknowledged: the agents send these batches again.
                warn!(error = %e, "cannot store telemetry");
                fail(&streams);
                continue;
            }
            Err(e) => {
                warn!(error = %e, "telemetry task failed");
                fail(&streams);
                continue;
            }
        };
        let (outcome, stored) = outcome;
        shared.telemetry.count(&group, &stored, outcome);
        if outcome.duplicates > 0 {
            info!(
                duplicates = outcome.duplicates,
                "telemetry batches received again (already stored)"
            );
        }
        for item in &group {
            let _ = item.ack.send(Outcome::Stored(item.batch.seq));
        }
    }
}
