//! The rules in force: the rulebook aggregate's versions and the working
//! calendar they imply, read through one small cache so that every command and
//! the process manager see the same thing. Reads go to the stream leader's head
//! ([`Repository::load_current`]): a version another replica published is in
//! force here from its next command on.

use std::sync::{Arc, Mutex};

use gridwork_eventstore::{CommandMeta, CommitOutcome, Repository, StoreError};

use crate::domain::calendar::WorkingCalendar;
use crate::domain::case::SlaPlan;
use crate::domain::routing::Terms;
use crate::domain::rulebook::{Rulebook, RulebookCommand, RulebookRejection, Rules, calendar_with};
use crate::events::RulebookEvent;

/// The one rulebook's aggregate id.
pub const CITY: &str = "city";

/// The rulebook, cached by the sequence of its last commit.
#[derive(Clone)]
pub struct Policy {
    book: Repository<Rulebook>,
    base: Arc<WorkingCalendar>,
    builtin: Arc<Rules>,
    cache: Arc<Mutex<Option<InForce>>>,
}

/// What is in force at one sequence of the rulebook.
#[derive(Clone)]
pub struct InForce {
    /// The rulebook's last commit (0: none yet).
    pub sequence: u64,
    /// Every published version and year.
    pub book: Arc<Rulebook>,
    /// The working calendar: the shipped one (with the service's additions)
    /// under the published years.
    pub calendar: Arc<WorkingCalendar>,
    builtin: Arc<Rules>,
}

impl InForce {
    /// The version in force: the latest published, else the built-in one.
    pub fn rules(&self) -> &Arc<Rules> {
        self.book.latest().unwrap_or(&self.builtin)
    }

    /// Version `v` (0: the built-in one), if this build can read it.
    pub fn version(&self, v: u32) -> Option<&Arc<Rules>> {
        if v == 0 { Some(&self.builtin) } else { self.book.versions.get(&v) }
    }

    /// The SLA plan of a case routed under `version`: that version's, so a
    /// later publication never moves an open case's clocks (the version in
    /// force if `version` cannot be read).
    pub fn plan(&self, version: u32, category: &str, priority: i32, emergency: bool) -> SlaPlan {
        let rules = self.version(version).unwrap_or_else(|| {
            tracing::warn!(version, "a case names a rulebook version this build cannot read; using the one in force");
            self.rules()
        });
        rules.sla.plan_for(category, priority, emergency)
    }
}

impl Policy {
    /// Rules from `book`, the built-in ones shaped by `terms`, and `base` as
    /// the calendar years nobody published.
    pub fn new(book: Repository<Rulebook>, base: Arc<WorkingCalendar>, terms: &Terms) -> Self {
        Self { book, base, builtin: Arc::new(Rules::builtin(terms)), cache: Arc::new(Mutex::new(None)) }
    }

    /// The shipped calendar with the service's additions (no published year).
    pub fn base_calendar(&self) -> &WorkingCalendar {
        &self.base
    }

    /// What is in force now.
    pub async fn in_force(&self) -> Result<InForce, StoreError> {
        let loaded = self.book.load_current(CITY).await?;
        if let Some(cached) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && cached.sequence == loaded.sequence
        {
            return Ok(cached.clone());
        }
        let in_force = InForce {
            sequence: loaded.sequence,
            calendar: Arc::new(calendar_with(&self.base, &loaded.state.years)),
            book: Arc::new(loaded.state),
            builtin: self.builtin.clone(),
        };
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(in_force.clone());
        Ok(in_force)
    }

    /// Run a command on the rulebook.
    pub async fn execute(
        &self,
        command: &RulebookCommand,
        meta: &CommandMeta,
    ) -> Result<CommitOutcome<RulebookEvent>, gridwork_eventstore::ExecuteError<RulebookRejection>> {
        self.book.execute(CITY, command, meta).await
    }
}
