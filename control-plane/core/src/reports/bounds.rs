//! What the control plane keeps of an agent's reports: every list, map and text an agent sends
//! is cut to a bound before it is kept or shared with other replicas, so no agent makes the
//! control plane (or the store's change feed) hold more than a few hundred kilobytes for it.

use tern_proto::message::{ExitReport, HealthReport, MAX_REPORTED_EXITS, StatusReport};

/// Most pipelines kept of one status or health report.
pub const MAX_REPORT_PIPELINES: usize = 256;
/// Longest text kept (a pipeline's message, a warning, a refusal, an exit's reason), in bytes.
pub const MAX_REPORT_TEXT: usize = 512;
/// Longest name kept (a pipeline's, a run's), in bytes.
const MAX_NAME: usize = 253;
/// Most warnings kept of one status report.
const MAX_WARNINGS: usize = 16;
/// Most revisions kept per exit (served and loading each).
const MAX_EXIT_REVISIONS: usize = 16;

/// Cuts `text` to at most `max` bytes, on a character boundary. Returns whether it cut.
pub fn cut(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

/// A status report cut to the bounds; whether anything was cut.
pub fn status(mut report: StatusReport) -> (StatusReport, bool) {
    let mut cut_any = report.pipelines.len() > MAX_REPORT_PIPELINES;
    report.pipelines.truncate(MAX_REPORT_PIPELINES);
    for p in &mut report.pipelines {
        cut_any |= cut(&mut p.name, MAX_NAME);
        cut_any |= cut(&mut p.message, MAX_REPORT_TEXT);
    }
    if let Some(refused) = &mut report.refused {
        cut_any |= cut(refused, MAX_REPORT_TEXT);
    }
    cut_any |= report.warnings.len() > MAX_WARNINGS;
    report.warnings.truncate(MAX_WARNINGS);
    for w in &mut report.warnings {
        cut_any |= cut(w, MAX_REPORT_TEXT);
    }
    (report, cut_any)
}

/// A health report cut to the bounds; whether anything was cut.
pub fn health(mut report: HealthReport) -> (HealthReport, bool) {
    let mut cut_any = report.pipelines.len() > MAX_REPORT_PIPELINES;
    report.pipelines.truncate(MAX_REPORT_PIPELINES);
    for p in &mut report.pipelines {
        cut_any |= cut(&mut p.name, MAX_NAME);
    }
    (report, cut_any)
}

/// An agent's exit report cut to what the control plane keeps: the newest exits, short
/// reasons, a few revisions each.
pub fn exits(mut report: ExitReport) -> ExitReport {
    let excess = report.exits.len().saturating_sub(MAX_REPORTED_EXITS);
    report.exits.drain(..excess);
    for exit in &mut report.exits {
        cut(&mut exit.reason, MAX_REPORT_TEXT);
        cut(&mut exit.run, 64);
        exit.serving.truncate(MAX_EXIT_REVISIONS);
        exit.loading.truncate(MAX_EXIT_REVISIONS);
        for r in exit.serving.iter_mut().chain(&mut exit.loading) {
            cut(&mut r.pipeline, MAX_NAME);
        }
    }
    cut(&mut report.run, 64);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::message::{PipelinePhase, PipelineStatus};

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        let mut text = "é".repeat(10);
        assert!(cut(&mut text, 5));
        assert_eq!(text, "éé");
        let mut short = "ok".to_owned();
        assert!(!cut(&mut short, 5));
    }

    #[test]
    fn a_hostile_status_report_is_cut_to_a_few_hundred_kilobytes() {
        let pipeline = |i: usize| PipelineStatus {
            name: format!("p{i}-{}", "n".repeat(1_000)),
            revision: 1,
            phase: PipelinePhase::Failed,
            message: "ü".repeat(100_000),
            serving: None,
        };
        let report = StatusReport {
            seq: 1,
            applied_generation: 1,
            pipelines: (0..2_000).map(pipeline).collect(),
            refused: Some("x".repeat(1 << 20)),
            warnings: vec!["w".repeat(10_000); 100],
        };
        let (kept, was_cut) = status(report);
        assert!(was_cut);
        let bytes = postcard::to_stdvec(&kept).expect("encodes").len();
        assert!(bytes < 256 * 1024, "{bytes} bytes kept");
        assert_eq!(kept.pipelines.len(), MAX_REPORT_PIPELINES);
        let fine = StatusReport {
            pipelines: vec![PipelineStatus {
                name: "scores".into(),
                revision: 2,
                phase: PipelinePhase::Ready,
                message: String::new(),
                serving: Some(2),
            }],
            ..kept.clone()
        };
        let (_, again) = status(StatusReport {
            refused: None,
            warnings: vec![],
            ..fine
        });
        assert!(!again, "an ordinary report is kept whole");
    }
}
