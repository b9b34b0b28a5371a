//! Where the migration stands once the proxy has moved clients ([`Phase`]), and which move
//! the operator may ask for from there ([`Phase::after`]).
//!
//! ```text
//!            switch                 rollback
//!  (none) ─────────► switched ◄──────────────► rolled_back
//!                        │         switch           │
//!                        └──── finish ──► finished ◄┘ finish
//! ```
//!
//! Before the first switch the phase is the sync's ([`crate::sync::phase::SyncPhase`]); the
//! status `phase` and the `cutover_phase` gauge continue its names and numbers (4 switched,
//! 5 rolled back, 6 finished). These are an interface: tests, the Grafana dashboard and the
//! Prometheus rules in `config/` read them.

/// The migration's phase after the first switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The target is the primary.
    Switched,
    /// The source is the primary again (the target is kept in step; `switch` may follow).
    RolledBack,
    /// `finish`: the old side is detached; nothing moves any more.
    Finished,
}

/// What the operator asks the controller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Switch,
    Rollback,
    Finish,
}

impl Phase {
    /// Every phase, in the order of their numbers.
    pub const ALL: [Phase; 3] = [Phase::Switched, Phase::RolledBack, Phase::Finished];

    /// Its name in `cutover status` (`phase`, and `cutover.phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Switched => "switched",
            Phase::RolledBack => "rolled_back",
            Phase::Finished => "finished",
        }
    }

    /// The value of the `cutover_phase` gauge (after the sync's 0–3).
    pub fn gauge(self) -> f64 {
        match self {
            Phase::Switched => 4.0,
            Phase::RolledBack => 5.0,
            Phase::Finished => 6.0,
        }
    }

    /// The phase `m` leads to from `from` (`None`: not switched yet), or why it is refused
    /// (the operator reads this).
    pub fn after(from: Option<Phase>, m: Move) -> Result<Phase, &'static str> {
        use Phase::*;
        match (m, from) {
            (Move::Switch, None | Some(RolledBack)) => Ok(Switched),
            (Move::Switch, Some(Switched)) => Err("already switched: the target is the primary"),
            (Move::Switch, Some(Finished)) => Err("the migration is finished; nothing to switch"),
            (Move::Rollback, Some(Switched)) => Ok(RolledBack),
            (Move::Rollback, Some(RolledBack)) => {
                Err("already rolled back: the source is the primary")
            }
            (Move::Rollback, Some(Finished)) => Err(
                "the migration is finished; the source is detached and cannot be rolled back to",
            ),
            (Move::Rollback, None) => Err("not switched yet: the source is the primary"),
            (Move::Finish, Some(Switched | RolledBack)) => Ok(Finished),
            (Move::Finish, Some(Finished)) => Err("already finished"),
            (Move::Finish, None) => Err("not switched yet: run `cutover switch` first"),
        }
    }

    /// Whether some move leads from `from` to `to`.
    pub fn allows(from: Option<Phase>, to: Phase) -> bool {
        [Move::Switch, Move::Rollback, Move::Finish]
            .into_iter()
            .any(|m| Phase::after(from, m) == Ok(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_stay() {
        // Status JSON, tests and config/grafana + config/prometheus read these.
        let names: Vec<_> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["switched", "rolled_back", "finished"]);
        let gauges: Vec<_> = Phase::ALL.iter().map(|p| p.gauge()).collect();
        assert_eq!(gauges, [4.0, 5.0, 6.0]);
    }

    #[test]
    fn moves() {
        use Phase::*;
        assert_eq!(Phase::after(None, Move::Switch), Ok(Switched));
        assert_eq!(Phase::after(Some(Switched), Move::Rollback), Ok(RolledBack));
        assert_eq!(Phase::after(Some(RolledBack), Move::Switch), Ok(Switched));
        assert_eq!(Phase::after(Some(RolledBack), Move::Finish), Ok(Finished));
        assert_eq!(Phase::after(Some(Switched), Move::Finish), Ok(Finished));
        for m in [Move::Switch, Move::Rollback, Move::Finish] {
            assert!(Phase::after(Some(Finished), m).is_err());
        }
        assert!(Phase::after(None, Move::Rollback).is_err());
        assert!(Phase::after(None, Move::Finish).is_err());
        assert!(Phase::after(Some(Switched), Move::Switch).is_err());
        assert!(Phase::allows(None, Switched));
        assert!(!Phase::allows(None, RolledBack));
        assert!(!Phase::allows(Some(Finished), Switched));
    }
}
