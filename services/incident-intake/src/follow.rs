//! Intake follows each accepted incident's case in dispatch: a reactor on
//! `DISPATCH` that records the case's resolution, closure and reopening on the
//! incident itself (`CaseOutcomeRecorded`). So the incident shows its outcome,
//! its Open311 status closes when the case does, and a closed incident stops
//! drawing "me too" reports — a second fire next week is a new incident. A
//! case a dispatcher merged into another makes its incident a "me too" of the
//! other's, for the linker to carry there.
//!
//! It reads dispatch's published event messages (`gridwork.dispatch.v1`), not
//! dispatch's code. The case id is the incident id.

use gridwork_eventstore::projection::{ApplyError, UnknownEvents};
use gridwork_eventstore::{CommandMeta, ExecuteError, Reactor, RecordedCommit, Repository};
use gridwork_proto::gridwork::dispatch::v1 as dispatch_pb;
use prost::Message as _;
use sqlx::AnyConnection;
use tracing::{instrument, warn};

use crate::domain::incident::{CaseStage, Incident, IncidentCommand};

/// The reactor. See the module documentation.
pub struct CaseFollower {
    /// Incidents.
    pub incidents: Repository<Incident>,
}

/// What one dispatch commit means for its incident, as the command that
/// follows it: the last stage it reached, and the case it was merged into.
fn outcome(commit: &RecordedCommit) -> Result<Option<IncidentCommand>, ApplyError> {
    let mut outcome = None;
    let mut merged_into = String::new();
    // Only the types it follows must be a version this build reads: a newer
    // version of any other dispatch event is none of intake's business and
    // must not stall it.
    for e in &commit.body.events {
        let decode = |err: prost::DecodeError| gridwork_eventstore::DecodeError::new(e.event_type.clone(), err);
        let followed = matches!(
            e.event_type.as_str(),
            "dispatch.case.resolved" | "dispatch.case.closed" | "dispatch.case.reopened" | "dispatch.case.merged"
        );
        if followed && e.schema_version != 1 {
            return Err(gridwork_eventstore::DecodeError::unknown(
                e.event_type.clone(),
                format!("schema version {} is not one this build follows", e.schema_version),
            )
            .into());
        }
        match e.event_type.as_str() {
            "dispatch.case.resolved" => {
                let r = dispatch_pb::CaseResolved::decode(e.payload.as_slice()).map_err(decode)?;
                outcome = Some((CaseStage::Resolved, r.at_unix_ms, r.notes));
            }
            "dispatch.case.closed" => {
                let c = dispatch_pb::CaseClosed::decode(e.payload.as_slice()).map_err(decode)?;
                let note = match dispatch_pb::CloseOutcome::try_from(c.outcome) {
                    Ok(dispatch_pb::CloseOutcome::NotRated) => "not rated: the rating window passed".to_string(),
                    Ok(dispatch_pb::CloseOutcome::Merged) => format!("merged into the case of {merged_into}"),
                    _ => String::new(),
                };
                outcome = Some((CaseStage::Closed, c.at_unix_ms, note));
            }
            // Comes before its CaseClosed in the same commit.
            "dispatch.case.merged" => {
                merged_into = dispatch_pb::CaseMerged::decode(e.payload.as_slice()).map_err(decode)?.into_case_id;
            }
            "dispatch.case.reopened" => {
                let r = dispatch_pb::CaseReopened::decode(e.payload.as_slice()).map_err(decode)?;
                outcome = Some((CaseStage::Reopened, commit.body.decided_at_unix_ms, r.reason));
            }
            // Assignments, deadlines and summonses are dispatch's business.
            _ => {}
        }
    }
    Ok(outcome.map(|(stage, at_unix_ms, note)| IncidentCommand::FollowCase {
        stage,
        at_unix_ms,
        note,
        dispatch_sequence: commit.sequence,
        merged_into,
    }))
}

impl Reactor for CaseFollower {
    fn name(&self) -> &str {
        "intake_case_follower"
    }

    /// Another context's stream: an event type added there is not an outcome
    /// this build knows how to follow.
    fn unknown_events(&self) -> UnknownEvents {
        UnknownEvents::Skip
    }

    #[instrument(skip_all, fields(case = commit.aggregate_id(), sequence = commit.sequence))]
    async fn react(&self, _tx: &mut AnyConnection, commit: &RecordedCommit) -> Result<(), ApplyError> {
        if !commit.subject.starts_with("dispatch.case.") {
            return Ok(());
        }
        let Some(command) = outcome(commit)? else { return Ok(()) };
        let incident = commit.aggregate_id();
        let meta = CommandMeta {
            // One outcome per dispatch commit: a redelivery is answered by the first.
            command_id: format!("case-outcome-{}", commit.sequence),
            principal: "service:intake-case-follower".into(),
            decided_at_unix_ms: commit.body.decided_at_unix_ms,
            request_digest: 0,
        };
        match self.incidents.execute(incident, &command, &meta).await {
            Ok(_) => Ok(()),
            // A case without an accepted incident here (opened by another
            // tool, or intake's stream was reset): nothing to follow.
            Err(ExecuteError::Rejected(r)) => {
                warn!(incident, rejection = %r, "a case outcome for an incident intake cannot follow");
                Ok(())
            }
            Err(ExecuteError::Store(e)) => Err(ApplyError::from_store(e)),
        }
    }
}
