//! The aggregation over replayed items, started from the first snapshot (and restarted from
//! the next one after a gap): what `replay --stats` reports and `replay --anomalies` detects on.

use tracer_common::Filter;

use super::{records::Item, replay::filtered, state, walk::WalkReport};
use crate::{
    aggregate::Aggregator,
    event::Event,
    loss::{LossCause, LossTotals},
};

pub struct Timeline {
    agg: Option<Aggregator>,
    pub losses: LossTotals,
    filter: Filter,
    /// A gap was found: the next snapshot replaces the state.
    resync: bool,
    pub netns: Option<u32>,
}

impl Timeline {
    pub fn new(filter: Filter) -> Self {
        Self {
            agg: None,
            losses: LossTotals::default(),
            filter,
            resync: false,
            netns: None,
        }
    }

    pub fn agg(&mut self) -> &mut Aggregator {
        let netns = self.netns;
        self.agg
            .get_or_insert_with(|| Aggregator::new(1 << 20, netns))
    }

    /// Something was skipped: state built so far may be missing records.
    pub fn gap(&mut self) {
        self.resync = true;
    }

    /// Applies one item; returns the kernel record it decoded, if it passed the filter.
    pub fn apply(&mut self, item: &Item, report: &mut WalkReport) -> Option<Event> {
        match item {
            Item::Snapshot(s) => {
                if self.agg.is_none() || self.resync {
                    let mut losses = LossTotals::default();
                    self.agg = Some(state::restore(
                        s,
                        self.netns,
                        Some(&self.filter),
                        &mut losses,
                    ));
                    self.losses = losses;
                    self.resync = false;
                }
            }
            Item::Refresh(r) => {
                let agg = self
                    .agg
                    .get_or_insert_with(|| Aggregator::new(1 << 20, None));
                state::apply_refresh(agg, &mut self.losses, r);
            }
            Item::Kernel(r) => match filtered(&self.filter, r) {
                Some(Ok(ev)) => {
                    self.agg().apply(&ev);
                    return Some(ev);
                }
                Some(Err(())) => report.unknown += 1,
                None => {}
            },
            Item::Lost { cause, count, .. } => match LossCause::from_name(cause) {
                Some(c) => self.losses.add(c, *count),
                None => report.unknown += 1,
            },
            Item::Printed { .. } | Item::Tick(_) => {}
            Item::Unknown { .. } => report.unknown += 1,
        }
        None
    }
}
